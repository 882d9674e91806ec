"""A logging call from a coroutine never stalls the event loop, whatever the listener is doing.

A ticker coroutine measures how late each 5 ms sleep wakes up while another coroutine logs
flat out into an mplog handler whose listener is absent or stopped (SIGSTOP). With
``drop_newest`` a full buffer costs nothing; with ``block`` each call waits at most
``block_timeout``. Afterwards the listener (started, or continued) receives the rest:
received + dropped == logged, exactly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path

import pytest
from helpers import check_lines, file_config, payload, read_lines

import mplog
from mplog.worker import MplogHandler, WorkerOptions

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

COUNT = 5_000
TICK = 0.005


async def _ticker(lags: list[float], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        started = loop.time()
        await asyncio.sleep(TICK)
        lags.append(loop.time() - started - TICK)


async def _log_flat_out(log: logging.Logger) -> None:
    for seq in range(COUNT):
        log.info("%s", payload(1, seq))
        if seq % 50 == 49:
            await asyncio.sleep(0)  # a coroutine that logs in a loop still yields now and then


async def _measure(log: logging.Logger) -> tuple[float, float]:
    """Return (worst loop lag, seconds spent logging)."""
    lags: list[float] = []
    stop = asyncio.Event()
    ticker = asyncio.create_task(_ticker(lags, stop))
    await asyncio.sleep(TICK * 2)
    started = time.perf_counter()
    await _log_flat_out(log)
    elapsed = time.perf_counter() - started
    stop.set()
    await ticker
    return max(lags), elapsed


def _handler(endpoint: str, policy: str) -> MplogHandler:
    options = WorkerOptions.from_kwargs(
        policy=policy,
        batch_records=64,
        max_buffer_bytes=32 * 1024,
        block_timeout=0.01,
        close_timeout=10.0,  # the drain at the end may wait for ZeroMQ's reconnect back-off
    )
    return MplogHandler(endpoint, options)


def _logger(handler: MplogHandler) -> logging.Logger:
    log = logging.getLogger(f"asyncio.test.{id(handler)}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    return log


def _check_ledger(out: Path, received: int, dropped: int) -> None:
    assert received + dropped == COUNT
    result = check_lines(read_lines(out), {1: COUNT})
    assert result.duplicates == result.truncated == result.garbage == 0
    assert sum(len(missing) for missing in result.missing.values()) == dropped
    assert len(result.seen) == received


@pytest.mark.parametrize(("policy", "bound"), [("drop_newest", 0.25), ("block", 0.01 + 0.25)])
def test_logging_from_a_coroutine_with_the_listener_absent_never_stalls_the_loop(tmp_path, policy, bound):
    endpoint = f"ipc://{tmp_path}/later.sock"
    handler = _handler(endpoint, policy)
    log = _logger(handler)
    try:
        worst, elapsed = asyncio.run(_measure(log))
        dropped = handler.counters["dropped"]
        assert dropped > 0  # the bounded buffer overflowed: the policy really ran
        with mplog.start_listener(file_config(tmp_path / "out.log"), endpoint=endpoint, route_parent=False) as lst:
            handler.close()  # delivers what the bounded buffer kept
        stats = lst.stats()
    finally:
        log.removeHandler(handler)
        handler.close()
    print(f"{policy}, listener absent: worst loop lag {worst * 1000:.1f} ms, {COUNT} records in {elapsed:.2f} s")
    assert worst < bound, f"the event loop stalled for {worst:.3f} s"
    assert stats["dropped"] == dropped
    _check_ledger(tmp_path / "out.log", stats["received"], dropped)


def test_logging_from_a_coroutine_into_a_stopped_listener_never_stalls_the_loop(tmp_path):
    out = tmp_path / "out.log"
    with mplog.start_listener(file_config(out), route_parent=False) as listener:
        handler = _handler(listener.endpoint, "drop_newest")
        log = _logger(handler)
        os.kill(listener.pid, signal.SIGSTOP)
        try:
            worst, elapsed = asyncio.run(_measure(log))
        finally:
            os.kill(listener.pid, signal.SIGCONT)
        dropped = handler.counters["dropped"]
        log.removeHandler(handler)
        handler.close()
    stats = listener.stats()
    print(f"drop_newest, listener stopped: worst loop lag {worst * 1000:.1f} ms, {COUNT} records in {elapsed:.2f} s")
    assert worst < 0.25, f"the event loop stalled for {worst:.3f} s"
    assert stats["dropped"] == dropped
    _check_ledger(out, stats["received"], dropped)
