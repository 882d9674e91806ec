"""The fast path's one guard (mplog.listener.fast_guard) refuses each condition it names, and the bytes stay the same.

For every condition: the guard names it as the refusal, and the dispatcher with its fast
path writes the bytes the generic path (``fast=False``: ``logger.handle`` per record) writes
for the same frame, whole-frame path included (the frame's columns are given).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mplog.listener import fast_guard
from mplog.listener.dispatch import BatchDispatcher, _Sink
from mplog.listener.line_format import LineFormat
from mplog.wire import Sender, build_frame, decode_frame, encode_record, encode_sender

NAME = "guarded.app"
FMT = "%(asctime)s %(levelname)s %(name)s %(message)s"
CREATED = 1_700_000_000.25


def _frame(exc: bool = False) -> tuple[list[list[Any]], list[list[Any]] | None]:
    made = []
    for i in range(12):
        level = (logging.INFO, logging.WARNING)[i % 2]
        record = logging.LogRecord(NAME, level, "/srv/app.py", 10 + i, "event %d", (i,), None, "work")
        record.created, record.msecs = CREATED + i / 100, 250.0 + i * 10
        if exc and i == 5:
            record.exc_text = "Traceback (most recent call last):\nValueError: five"
        made.append(record)
    frame = build_frame(encode_sender(Sender("host-a", 4242, 1.0, 7)), 0, 0, 0, [encode_record(r) for r in made])
    decoded = decode_frame(frame)
    return decoded.records, decoded.columns


class _OwnFormat(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return "own " + super().format(record)


class _OwnMessage(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record).upper()


class _OwnTime(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return f"T{int(record.created) % 100}"


class _OwnEmit(logging.StreamHandler):  # type: ignore[type-arg]
    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)


class _OwnLogger(logging.Logger):
    def handle(self, record: logging.LogRecord) -> None:
        record.msg = "via own handle: " + str(record.msg)
        super().handle(record)


def _no_odd(record: logging.LogRecord) -> bool:
    return record.lineno % 2 == 0


def _tagged(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = logging.LogRecord(*args, **kwargs)
    record.msg = "[tagged] " + str(record.msg)
    return record


# name -> (what to do to the logger and its handler, the refusal, which guard names it)
# The handler's type as a str: logging.StreamHandler is subscriptable at run time from 3.11 on.
Setup = Callable[[logging.Logger, "logging.StreamHandler[Any]"], None]


def _instance_emit(logger: logging.Logger, handler: logging.StreamHandler[Any]) -> None:
    def emit(record: logging.LogRecord) -> None:
        handler.stream.write("instance " + handler.format(record) + "\n")

    handler.emit = emit  # type: ignore[method-assign]


CASES: dict[str, tuple[Setup, str]] = {
    "logger disabled": (lambda lg, h: setattr(lg, "disabled", True), fast_guard.REFUSED_LOGGER_DISABLED),
    "logger filter": (lambda lg, h: lg.addFilter(_no_odd), fast_guard.REFUSED_LOGGER_FILTER),
    "handler filter": (lambda lg, h: h.addFilter(_no_odd), fast_guard.REFUSED_HANDLER_FILTER),
    "instance emit": (_instance_emit, fast_guard.REFUSED_HANDLER_METHOD),
    "format overridden": (lambda lg, h: h.setFormatter(_OwnFormat(FMT)), fast_guard.REFUSED_FORMAT_OVERRIDDEN),
    "message overridden": (lambda lg, h: h.setFormatter(_OwnMessage(FMT)), fast_guard.REFUSED_MESSAGE_FORMAT),
    "brace style": (
        lambda lg, h: h.setFormatter(logging.Formatter("{asctime} {message}", style="{")),
        fast_guard.REFUSED_MESSAGE_FORMAT,
    ),
    "time overridden": (lambda lg, h: h.setFormatter(_OwnTime(FMT)), fast_guard.REFUSED_TIME_FORMAT),
    "record factory": (lambda lg, h: logging.setLogRecordFactory(_tagged), fast_guard.REFUSED_RECORD_FACTORY),
    "logging.disable": (lambda lg, h: logging.disable(logging.INFO), fast_guard.REFUSED_LEVEL),
    "logger level": (lambda lg, h: lg.setLevel(logging.WARNING), fast_guard.REFUSED_LEVEL),
    "handler level": (lambda lg, h: h.setLevel(logging.WARNING), fast_guard.REFUSED_HANDLER_LEVEL),
}


def _refusal(logger: logging.Logger, handler: logging.StreamHandler[Any], records: list[list[Any]]) -> str | None:
    """The first refusal the guards give for this logger, handler and frame, asked in the dispatcher's order."""
    refusal = fast_guard.logger_refusal(logger) or fast_guard.handler_refusal(handler)
    if refusal is not None:
        return refusal
    formatter = handler.formatter or fast_guard.default_formatter()
    refusal = fast_guard.formatter_refusal(formatter)
    if refusal is not None:
        return refusal
    sink = _Sink(handler, LineFormat(formatter), lambda fields: None)  # type: ignore[arg-type,return-value]
    levels = {fields[1] for fields in records}
    return fast_guard.batch_refusal(logger, levels, False, [sink])


@pytest.fixture
def restore() -> Iterator[None]:
    factory = logging.getLogRecordFactory()
    yield
    logging.setLogRecordFactory(factory)
    logging.disable(logging.NOTSET)
    logger = logging.getLogger(NAME)
    logger.handlers[:], logger.filters[:] = [], []
    logger.disabled, logger.propagate = False, True
    logger.setLevel(logging.NOTSET)


def _written(setup: Setup, fast: bool, exc: bool = False) -> tuple[str, str | None]:
    """The bytes the dispatcher writes for the frame under ``setup``, and the guard's refusal."""
    stream = io.StringIO()
    logger = logging.getLogger(NAME)
    logger.handlers[:], logger.filters[:] = [], []
    logger.disabled, logger.propagate = False, False
    logger.setLevel(logging.DEBUG)
    logging.setLogRecordFactory(logging.LogRecord)
    logging.disable(logging.NOTSET)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(FMT))
    logger.addHandler(handler)
    setup(logger, handler)
    records, columns = _frame(exc)
    refusal = _refusal(logger, handler, records)
    BatchDispatcher(fast=fast).dispatch(records, "host-a", columns=columns)
    return stream.getvalue(), refusal


@pytest.mark.usefixtures("restore")
@pytest.mark.parametrize("case", list(CASES))
def test_the_guard_refuses_each_condition_it_names_and_the_bytes_stay_the_generic_paths(case: str) -> None:
    setup, expected = CASES[case]
    fast, refusal = _written(setup, fast=True)
    generic, _ = _written(setup, fast=False)
    assert refusal == expected
    assert fast == generic
    assert fast or case in ("logger disabled", "logging.disable")  # something was written to compare


@pytest.mark.usefixtures("restore")
def test_a_plain_route_is_accepted_and_writes_the_generic_paths_bytes() -> None:
    fast, refusal = _written(lambda lg, h: None, fast=True)
    generic, _ = _written(lambda lg, h: None, fast=False)
    assert refusal is None
    assert fast == generic
    assert len(fast.splitlines()) == 12


@pytest.mark.usefixtures("restore")
def test_a_logger_subclass_is_refused_and_a_frame_with_exception_text_goes_record_by_record() -> None:
    assert fast_guard.logger_refusal(_OwnLogger("own")) == fast_guard.REFUSED_LOGGER_HANDLE
    assert fast_guard.handler_refusal(_OwnEmit()) == fast_guard.REFUSED_HANDLER_METHOD
    assert fast_guard.handler_refusal(logging.NullHandler()) == fast_guard.REFUSED_NOT_STREAM
    logger = logging.getLogger(NAME)
    logger.setLevel(logging.DEBUG)
    assert fast_guard.batch_refusal(logger, {logging.INFO}, True, []) == fast_guard.REFUSED_EXC_OR_STACK
    assert fast_guard.batch_refusal(logger, {logging.INFO}, False, None) == fast_guard.REFUSED_ROUTE
    assert fast_guard.frame_refusal(["a", "b"], 2) == fast_guard.REFUSED_MIXED_LOGGERS
    fast, _ = _written(lambda lg, h: None, fast=True, exc=True)
    generic, _ = _written(lambda lg, h: None, fast=False, exc=True)
    assert fast == generic
    assert "ValueError: five" in fast


def test_every_refusal_is_named_once() -> None:
    names = [getattr(fast_guard, n) for n in dir(fast_guard) if n.startswith("REFUSED_")]
    assert sorted(names) == sorted(fast_guard.REFUSALS)
    assert len(set(fast_guard.REFUSALS)) == len(fast_guard.REFUSALS)
