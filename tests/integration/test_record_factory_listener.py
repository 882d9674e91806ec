"""A record factory installed in the listener process by a module its config names (docs/handlers.md)."""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import read_lines, wait_for

import mplog
from mplog.worker import MplogHandler

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

MODULE = textwrap.dedent(
    '''
    """Imported by the listener's config: installs a record factory there."""
    import logging

    _base = logging.getLogRecordFactory()


    def _factory(*args, **kwargs):
        record = _base(*args, **kwargs)
        record.site = "eu-1"
        record.msg = str(record.msg).replace("hunter2", "***")
        return record


    logging.setLogRecordFactory(_factory)


    class Formatter(logging.Formatter):
        """The stock formatter; naming it in the config imports this module."""
    '''
)


@pytest.fixture
def records_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    (tmp_path / "site_records.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))  # the config may be checked here too
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the listener process
    base = logging.getLogRecordFactory()
    try:
        yield "site_records.Formatter"
    finally:
        logging.setLogRecordFactory(base)


def test_a_record_factory_installed_by_a_config_imported_module_makes_the_listeners_records(records_module, tmp_path):
    site, plain = tmp_path / "site.log", tmp_path / "plain.log"
    config = {
        "version": 1,
        "formatters": {
            "site": {"()": records_module, "fmt": "%(site)s %(levelname)s %(message)s"},
            "plain": {"format": "%(levelname)s %(message)s"},  # wire fields only: the fast path's own lines
        },
        "handlers": {
            "site": {"class": "logging.FileHandler", "filename": str(site), "formatter": "site"},
            "plain": {"class": "logging.FileHandler", "filename": str(plain), "formatter": "plain"},
        },
        "root": {"level": "INFO", "handlers": ["site", "plain"]},
    }
    with mplog.start_listener(config, route_parent=False, export_env=False) as listener:
        handler = MplogHandler(listener.endpoint)
        try:
            for i in range(100):
                handler.handle(logging.LogRecord("app", logging.INFO, __file__, 1, "n=%d pw=hunter2", (i,), None))
            assert handler.flush_within(10.0)
        finally:
            handler.close()
        wait_for(lambda: len(read_lines(plain)) >= 100 and len(read_lines(site)) >= 100, what="100 lines in each")
    assert read_lines(site) == [f"eu-1 INFO n={i} pw=***" for i in range(100)]
    assert read_lines(plain) == [f"INFO n={i} pw=***" for i in range(100)]
