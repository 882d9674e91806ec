"""Records rebuilt in the listener honour ``logging.setLogRecordFactory``.

The factory is called as ``Logger.makeRecord`` calls it (what it does with the name, level,
message... stays, and so do the attributes it adds); every other attribute is the worker's,
from the wire. With the stock factory the record is the one ``LogRecord`` would build, and
the dispatcher's fast path writes lines straight from the wire fields; with another factory
every line is formatted from the factory's record.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from mplog.listener.dispatch import BatchDispatcher
from mplog.wire import Sender, build_frame, decode_frame, encode_record, encode_sender, make_log_record

CREATED = 1_700_000_000.5


@pytest.fixture
def factory() -> Iterator[None]:
    """Installs a factory that adds ``site`` and masks a password in the message; restores the old one."""
    base = logging.getLogRecordFactory()

    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = base(*args, **kwargs)
        record.site = "eu-1"
        record.msg = str(record.msg).replace("hunter2", "***")
        record.process = -1  # the listener's own view: the worker's value must win
        return record

    logging.setLogRecordFactory(make)
    try:
        yield
    finally:
        logging.setLogRecordFactory(base)


def _wire(*messages: str) -> list[list[Any]]:
    made = []
    for i, message in enumerate(messages):
        record = logging.LogRecord("app.db", logging.WARNING, "/srv/app/db.py", 40 + i, message, None, None, "query")
        record.created, record.msecs, record.process, record.user = CREATED, 500.0, 4242, "alice"
        made.append(record)
    frame = build_frame(encode_sender(Sender("host-a", 4242, 1.0, 7)), 0, 0, 0, [encode_record(r) for r in made])
    return decode_frame(frame).records


def test_the_stock_factory_gives_the_record_logrecord_would_build():
    fields = _wire("plain text")[0]
    record = make_log_record(fields, "host-a")
    stock = logging.LogRecord("app.db", logging.WARNING, "/srv/app/db.py", 40, "plain text", None, None, "query")
    assert type(record) is logging.LogRecord
    assert set(stock.__dict__) <= set(record.__dict__)
    for key in ("name", "levelno", "levelname", "pathname", "filename", "module", "lineno", "funcName", "msg"):
        assert getattr(record, key) == getattr(stock, key), key
    assert (record.created, record.process, record.hostname, record.user) == (CREATED, 4242, "host-a", "alice")
    assert record.getMessage() == "plain text"


def test_a_pass_through_factory_gives_the_same_record_as_the_stock_one():
    fields = _wire("plain text")[0]
    stock = make_log_record(fields, "host-a").__dict__
    base = logging.getLogRecordFactory()

    def through_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:  # not LogRecord itself: the factory path
        return logging.LogRecord(*args, **kwargs)

    logging.setLogRecordFactory(through_factory)
    try:
        through = make_log_record(fields, "host-a").__dict__
    finally:
        logging.setLogRecordFactory(base)
    assert through == stock


def test_a_custom_factory_makes_the_record_and_the_worker_keeps_its_time_process_and_extras(factory):
    record = make_log_record(_wire("login with hunter2")[0], "host-a")
    assert record.site == "eu-1"  # type: ignore[attr-defined]
    assert record.getMessage() == "login with ***"
    assert (record.created, record.msecs, record.process) == (CREATED, 500.0, 4242)
    assert (record.hostname, record.user) == ("host-a", "alice")  # type: ignore[attr-defined]


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "generic"])
def test_lines_written_by_the_dispatcher_come_from_the_factorys_records(factory, fast):
    # "%(levelname)s %(message)s" names wire fields only: without a factory the fast path builds
    # its lines from the wire fields, without any record; "%(site)s" needs the record.
    streams = {name: io.StringIO() for name in ("wire", "site")}
    logger = logging.getLogger("app.db")
    for name, fmt in (("wire", "%(levelname)s %(message)s"), ("site", "%(site)s %(process)d %(message)s")):
        handler = logging.StreamHandler(streams[name])
        handler.setFormatter(logging.Formatter(fmt))
        logger.addHandler(handler)
    logger.propagate = False
    try:
        BatchDispatcher(fast=fast).dispatch(_wire("a hunter2", "b", "c hunter2"), "host-a")
    finally:
        logger.handlers[:] = []
        logger.propagate = True
    assert streams["wire"].getvalue().splitlines() == ["WARNING a ***", "WARNING b", "WARNING c ***"]
    assert streams["site"].getvalue().splitlines() == ["eu-1 4242 a ***", "eu-1 4242 b", "eu-1 4242 c ***"]


def test_a_factory_that_raises_is_counted_as_a_dispatch_error_per_record():
    errors: list[int] = []
    stream = io.StringIO()
    logger = logging.getLogger("app.db")
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.propagate = False
    base = logging.getLogRecordFactory()

    def broken(*args: Any, **kwargs: Any) -> logging.LogRecord:
        raise RuntimeError("broken factory")

    logging.setLogRecordFactory(broken)
    try:
        BatchDispatcher().dispatch(_wire("a", "b"), "host-a", on_error=lambda: errors.append(1))
    finally:
        logging.setLogRecordFactory(base)
        logger.handlers[:] = []
        logger.propagate = True
    assert errors == [1, 1]
    assert stream.getvalue() == ""
