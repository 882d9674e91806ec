"""Records of loggers the listener's config does not name create no logger, and are written byte for byte as before.

``mplog.listener.logger_lookup`` hands a record of an unknown logger name to a stand-in under
its nearest registered ancestor instead of ``logging.getLogger(name)``, which
registered a Logger for every name a sender sent (200,000 names: +216 MB, never freed).
Each test here writes the same records twice, once with the loggers created as
``getLogger`` used to (the old behaviour) and once without, and compares the bytes of
every file, on the fast path and on the generic one.
"""

from __future__ import annotations

import logging
import logging.config
import uuid
from pathlib import Path
from typing import Any

import pytest

from mplog.listener.dispatch import BatchDispatcher
from mplog.listener.logger_lookup import MAX_CACHED, LoggerLookup
from mplog.wire import record_fields

FMT = "%(name)s|%(levelname)s|%(message)s"
# Record names under the prefix P: every kind of ancestor a name can have.
NAMES = [
    "P.app",  # configured
    "P.app.sub",  # child of a configured logger
    "P.app.sub.deeper.still",  # grandchildren: the walk goes up several placeholders
    "P.quiet.x",  # under propagate=False with level WARNING
    "P.filtered.child",  # under a logger whose own filter refuses everything (not applied to children)
    "P.legacy.child",  # under a logger disable_existing_loggers disabled
    "P.legacy",  # that disabled logger itself
    "P.deep.x",  # a placeholder above a configured grandchild: handled by the root
    "P.deep.a.b.c",  # under the configured P.deep.a.b, past its placeholders
    "P.deep.a",  # a placeholder's own name
    "P..double",  # empty components
    "P.trail.",
    "P",
    "P.unknown.entirely",
]


class RefuseAll(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


def _config(prefix: str, directory: Path) -> dict[str, Any]:
    def file(name: str, **more: Any) -> dict[str, Any]:
        return {"class": "logging.FileHandler", "filename": str(directory / f"{name}.log"), "formatter": "f", **more}

    return {
        "version": 1,
        "disable_existing_loggers": True,
        "formatters": {"f": {"format": FMT}},
        "filters": {"sub_only": {"name": f"{prefix}.app.sub"}, "refuse": {"()": RefuseAll}},
        "handlers": {
            "all": file("all"),
            "app": file("app", level="INFO"),
            "sub_only": file("sub_only", filters=["sub_only"]),  # a handler filter reading record.name
            "quiet": file("quiet"),
            "deep": file("deep"),
            "filtered": file("filtered"),
        },
        "loggers": {
            f"{prefix}.app": {"handlers": ["app", "sub_only"], "level": "DEBUG"},
            f"{prefix}.quiet": {"handlers": ["quiet"], "level": "WARNING", "propagate": False},
            f"{prefix}.filtered": {"handlers": ["filtered"], "filters": ["refuse"]},
            f"{prefix}.deep.a.b": {"handlers": ["deep"]},
        },
        "root": {"level": "DEBUG", "handlers": ["all"]},
    }


def _records(prefix: str) -> list[list[Any]]:
    records = []
    for i, name in enumerate(NAMES):
        for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR):
            real = name.replace("P", prefix, 1)
            record = logging.LogRecord(real, level, "/src/x.py", i, "%s at %d", (name, level), None)
            record.created, record.msecs = 1_700_000_000.0 + i, 0.0
            records.append(record_fields(record))
    return records


def _write(directory: Path, *, registered: bool, fast: bool, disable: int = 0) -> dict[str, str]:
    """Dispatch every record; ``registered``: create each record's logger first, as getLogger() did."""
    prefix = f"P{uuid.uuid4().hex[:8]}"
    directory.mkdir()
    logging.getLogger(f"{prefix}.legacy")  # exists before the config: disabled by it
    before = set(logging.Logger.manager.loggerDict)
    logging.config.dictConfig(_config(prefix, directory))
    configured = set(logging.Logger.manager.loggerDict)
    records = _records(prefix)
    if registered:
        for fields in records:
            logging.getLogger(fields[0])
    logging.disable(disable)
    try:
        BatchDispatcher(fast=fast).dispatch(records, "host")
    finally:
        logging.disable(logging.NOTSET)
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})  # closes every file
    if not registered:
        assert set(logging.Logger.manager.loggerDict) == configured  # no logger created for a record
    assert before <= configured
    return {p.name: p.read_text().replace(prefix, "P") for p in sorted(directory.glob("*.log"))}


@pytest.mark.parametrize("fast", [True, False], ids=["fast path", "generic path"])
@pytest.mark.parametrize("disable", [0, logging.INFO], ids=["enabled", "logging.disable(INFO)"])
def test_unknown_names_are_written_as_if_their_loggers_had_been_created(tmp_path, fast, disable):
    before = _write(tmp_path / "created", registered=True, fast=fast, disable=disable)
    after = _write(tmp_path / "stand-ins", registered=False, fast=fast, disable=disable)
    assert after == before
    lines = after["all.log"].splitlines()
    assert "P.legacy.child|WARNING|P.legacy.child at 30" in lines  # a new child of a disabled logger is not disabled
    assert not any(line.startswith("P.legacy|") for line in lines)  # the disabled logger itself
    assert not any(line.startswith("P.quiet.x|") for line in lines)  # propagate=False stops it
    assert "P.filtered.child|WARNING|P.filtered.child at 30" in after["filtered.log"].splitlines()
    assert after["sub_only.log"] and all(line.startswith("P.app.sub") for line in after["sub_only.log"].splitlines())
    assert not any(line.startswith("P.deep.x|") for line in after["deep.log"].splitlines())
    assert any(line.startswith("P.deep.a.b.c|") for line in after["deep.log"].splitlines())


def test_a_logger_created_later_takes_its_names_records_from_then_on(tmp_path):
    lookup = LoggerLookup()
    prefix = f"L{uuid.uuid4().hex[:8]}"
    logging.getLogger(f"{prefix}.a.b.c")  # placeholders for prefix.a.b and prefix.a
    lookup.refresh()
    stand_in = lookup.get(f"{prefix}.a.b.x")
    assert stand_in.parent is logging.getLogger()
    assert f"{prefix}.a.b.x" not in logging.Logger.manager.loggerDict
    middle = logging.getLogger(f"{prefix}.a")  # a placeholder turned into a logger: the count does not change
    lookup.refresh()
    assert lookup.get(f"{prefix}.a.b.x").parent is middle
    newer = logging.getLogger(f"{prefix}.a.b.x")  # the name itself registered
    lookup.refresh()
    assert lookup.get(f"{prefix}.a.b.x") is newer


def test_the_lookup_holds_at_most_max_cached_names():
    lookup = LoggerLookup()
    known = len(logging.Logger.manager.loggerDict)
    for i in range(3 * MAX_CACHED):
        if i % 500 == 0:
            lookup.refresh()  # once per frame
        lookup.get(f"made.up.{i}")
        assert len(lookup) <= MAX_CACHED
    assert len(logging.Logger.manager.loggerDict) == known


def test_a_custom_logger_class_keeps_get_logger(tmp_path):
    class Custom(logging.Logger):
        pass

    manager = logging.Logger.manager
    saved = manager.loggerClass
    manager.setLoggerClass(Custom)
    try:
        name = f"C{uuid.uuid4().hex[:8]}.x"
        logger = LoggerLookup().get(name)
        assert type(logger) is Custom
        assert manager.loggerDict[name] is logger
    finally:
        manager.loggerClass = saved


def test_a_level_changed_later_is_seen_by_the_stand_ins():
    """``setLevel`` clears the cached answers of registered loggers only: a stand-in asks its parent each time."""
    prefix = f"S{uuid.uuid4().hex[:8]}"
    parent = logging.getLogger(prefix)
    parent.setLevel(logging.DEBUG)
    lookup = LoggerLookup()
    lookup.refresh()
    stand_in = lookup.get(f"{prefix}.child")
    assert stand_in.isEnabledFor(logging.INFO)
    parent.setLevel(logging.WARNING)
    assert lookup.get(f"{prefix}.child") is stand_in
    assert not stand_in.isEnabledFor(logging.INFO)
    parent.disabled = True  # as disable_existing_loggers leaves it: a new child is not disabled
    assert stand_in.isEnabledFor(logging.ERROR)
    assert not stand_in.isEnabledFor(logging.INFO)
