"""MplogHandler keeps logging's handler contract, through a real listener.

Filters on the handler decide and may change what is sent; ``handle()`` returns what
``logging.Handler.handle`` returns; a subclass that overrides ``emit()`` sees every record,
under ``Handler.lock`` as logging documents; ``flush()`` has the stdlib signature and
``flush_within(timeout)`` says whether everything went.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import file_config, read_lines, wait_for

import mplog
from mplog.worker import MplogHandler

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Any]:
    with mplog.start_listener(file_config(tmp_path / "out.log"), route_parent=False, export_env=False) as handle:
        yield handle


def _record(i: int) -> logging.LogRecord:
    return logging.LogRecord("contract", logging.INFO, __file__, 1, "n=%d", (i,), None)


def _lines(tmp_path: Path, count: int) -> list[str]:
    out = tmp_path / "out.log"
    return wait_for(lambda: (lines := read_lines(out)) and len(lines) >= count and lines, what=f"{count} lines")


class _Reference(logging.Handler):
    """logging.Handler.handle, the contract, with an emit() that keeps nothing."""

    def emit(self, record: logging.LogRecord) -> None:
        pass


class _EvenOnly(logging.Filter):
    """Passes even-numbered records, with their message marked."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args and record.args[0] % 2:  # type: ignore[index, operator]
            return False
        record.msg = "kept " + str(record.msg)
        return True


def _as_given(results: list[Any], records: list[logging.LogRecord]) -> list[Any]:
    """handle()'s results, a result that is the very record handled written "the record".

    From Python 3.12 on ``Handler.handle`` returns the record a filter passed (True before):
    two handlers' results are alike when each returned its own record.
    """
    return ["the record" if result is record else result for result, record in zip(results, records, strict=True)]


def test_a_filter_on_the_handler_decides_what_is_sent_and_handle_returns_what_the_stdlib_returns(listener, tmp_path):
    handler = MplogHandler(listener.endpoint)
    handler.addFilter(_EvenOnly())
    reference = _Reference()
    reference.addFilter(_EvenOnly())
    try:
        records, references = [_record(i) for i in range(10)], [_record(i) for i in range(10)]
        results = [handler.handle(record) for record in records]
        expected = [reference.handle(record) for record in references]
        assert _as_given(results, records) == _as_given(expected, references)
        handler.flush()
    finally:
        handler.close()
    assert _lines(tmp_path, 5) == [f"kept n={i}" for i in range(0, 10, 2)]


def test_handle_without_filters_returns_what_the_stdlib_returns(listener):
    handler = MplogHandler(listener.endpoint)
    try:
        record = _record(0)
        assert handler.handle(record) == _Reference().handle(record)
    finally:
        handler.close()


class _CountingHandler(MplogHandler):
    """Overrides emit(): counts, notes whether Handler.lock was held, then sends."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(endpoint)
        self.emitted: list[int] = []
        self.lock_held: list[bool] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.emitted.append(record.args[0])  # type: ignore[index]
        self.lock_held.append(_held_elsewhere(self))
        record.msg = "sub " + str(record.msg)
        super().emit(record)


def _held_elsewhere(handler: logging.Handler) -> bool:
    """True when another thread cannot take ``handler.lock`` now (this thread holds it)."""
    taken: list[bool] = []

    def attempt() -> None:
        lock = handler.lock
        assert lock is not None
        got = lock.acquire(blocking=False)
        if got:
            lock.release()
        taken.append(got)

    thread = threading.Thread(target=attempt)
    thread.start()
    thread.join(5.0)
    return taken == [False]


def test_a_subclass_that_overrides_emit_sees_every_record_under_the_handler_lock(listener, tmp_path):
    handler = _CountingHandler(listener.endpoint)
    logger = logging.getLogger("contract.sub")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        for i in range(20):
            logger.info("n=%d", i)
        handler.flush()
    finally:
        logger.handlers[:] = []
        handler.close()
    assert handler.emitted == list(range(20))
    assert handler.lock_held == [True] * 20  # logging.Handler.handle's contract for emit()
    assert _lines(tmp_path, 20) == [f"sub n={i}" for i in range(20)]


def test_the_shipped_handler_does_not_wait_for_the_handler_lock_held_by_another_thread(listener, tmp_path):
    # Documented on MplogHandler.handle: its buffer has a bounded lock of its own; the
    # unbounded Handler.lock is not taken on the logging call.
    handler = MplogHandler(listener.endpoint)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with handler.lock:  # type: ignore[union-attr]
            held.set()
            release.wait(30.0)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10.0)
        done = threading.Event()

        def log() -> None:
            handler.handle(_record(7))
            done.set()

        threading.Thread(target=log, daemon=True).start()
        assert done.wait(10.0)
    finally:
        release.set()
        holder.join(10.0)
        handler.close()
    assert _lines(tmp_path, 1) == ["n=7"]


def test_flush_has_the_stdlib_signature_and_flush_within_says_whether_all_went(listener, tmp_path):
    handler = MplogHandler(listener.endpoint)
    try:
        handler.handle(_record(1))
        assert handler.flush() is None
        handler.handle(_record(2))
        assert handler.flush_within(10.0) is True
        assert handler.counters["buffered"] == 0
    finally:
        handler.close()
    assert _lines(tmp_path, 2) == ["n=1", "n=2"]
