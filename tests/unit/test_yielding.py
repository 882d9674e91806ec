"""The pieces of the listener's holding (mplog.listener.holding): the urgent flag, the envelope, the watch, the setting.

The watch's logic is tested here on made-up looks; against real processes (one that keeps
a CPU busy, one that sleeps, one that is gone) in tests/integration/test_yielding_watch.py.
Whole listeners holding frames for real workers are in tests/integration/test_yield_to_workers.py.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import pytest
from helpers import CaptureTransport

from mplog.config import load_config
from mplog.exceptions import ConfigError
from mplog.listener import holding as yielding
from mplog.listener.holding import CHECK_INTERVAL, WorkerWatch
from mplog.listener.settings import yield_seconds
from mplog.wire import FLAG_FINAL, FLAG_URGENT, Sender, build_frame, decode_frame, encode_sender, read_envelope
from mplog.worker import MplogHandler, WorkerOptions

HOST = socket.gethostname()


def _handler(**options: Any) -> tuple[MplogHandler, CaptureTransport]:
    handler = MplogHandler("ipc:///nonexistent/mplog-yield.sock", WorkerOptions(**options))
    capture = CaptureTransport()
    handler._transport = capture  # type: ignore[assignment]  # no listener: the frames themselves are the subject
    return handler, capture


def _log(handler: MplogHandler, level: int, message: str) -> None:
    handler.handle(logging.LogRecord("yield", level, __file__, 1, message, None, None))


def _flags(capture: CaptureTransport) -> list[tuple[int, list[str]]]:
    frames = [decode_frame(f) for f in capture.frames]
    return [(f.flags, [r[3] for r in f.records]) for f in frames]


def test_a_batch_ending_with_a_record_at_the_flush_level_is_flagged_urgent_and_no_other_is():
    handler, capture = _handler(batch_records=3, flush_interval=60.0)
    try:
        for i in range(3):  # full batch: sent, not urgent
            _log(handler, logging.INFO, f"i{i}")
        _log(handler, logging.INFO, "before")
        _log(handler, logging.ERROR, "boom")  # flushes at once, with what came before it
        _log(handler, logging.INFO, "after")
        assert handler.flush_within(5.0)  # a flush asked for by the program: not urgent
        assert _flags(capture) == [
            (0, ["i0", "i1", "i2"]),
            (FLAG_URGENT, ["before", "boom"]),
            (0, ["after"]),
        ]
    finally:
        handler.close()
    assert decode_frame(capture.frames[-1]).flags == FLAG_FINAL  # the goodbye: not urgent either


def test_the_flush_level_decides_what_is_urgent():
    handler, capture = _handler(flush_level=logging.WARNING, flush_interval=60.0)
    try:
        _log(handler, logging.WARNING, "w")
        _log(handler, logging.INFO, "i")
        assert handler.flush_within(5.0)
        assert _flags(capture) == [(FLAG_URGENT, ["w"]), (0, ["i"])]
    finally:
        handler.close()


def test_the_envelope_names_the_sender_host_and_pid_without_unpacking_records():
    frame = build_frame(encode_sender(Sender("host-a", 4242, 1.5, 7)), 10, 0, FLAG_URGENT, [b"\xc0"] * 3)
    env = read_envelope(frame)
    assert (env.host, env.pid, env.flags, env.seq, env.records) == ("host-a", 4242, FLAG_URGENT, 10, 3)
    assert env.key == "host-a/4242/00000007"


# ---------------------------------------------------------------- the watch


def test_idle_needs_two_looks_in_a_row_and_busy_one(monkeypatch):
    watch = WorkerWatch(cpus=1)
    answers = iter([True, False, False, True, False, True])
    monkeypatch.setattr(watch, "_look", lambda: next(answers))
    seen = []
    for look in range(6):
        seen.append(watch.busy(look * 1.0))
        seen.append(watch.busy(look * 1.0 + CHECK_INTERVAL / 2))  # within the interval: no new look
    assert seen == [True, True, True, True, False, False, True, True, True, True, True, True]


def test_the_watch_keeps_the_most_recent_senders_within_its_bound(monkeypatch):
    monkeypatch.setattr(yielding, "MAX_WATCHED", 3)
    watch = WorkerWatch(cpus=1)
    for pid in (10, 11, 12, 10, 13):
        watch.saw(HOST, pid, 0)
    assert watch.pids == [12, 10, 13]


def test_the_cpus_are_those_the_listener_may_run_on():
    assert WorkerWatch().cpus == len(os.sched_getaffinity(0))


# ---------------------------------------------------------------- the setting


def _runtime(**mplog: Any) -> dict[str, Any]:
    return load_config({"version": 1, "mplog": mplog})[1].as_dict()


def test_the_setting_defaults_to_never_and_is_never_under_acknowledged_delivery():
    assert yield_seconds(_runtime()) == 0.0
    assert yield_seconds(_runtime(yield_to_workers=0)) == 0.0
    assert yield_seconds(_runtime(yield_to_workers=2.5)) == 2.5
    assert yield_seconds(_runtime(ack=True)) == 0.0


@pytest.mark.parametrize("value", [-1, 61, "1", True, float("nan"), None.__class__])
def test_a_bad_yield_setting_names_the_key_and_the_fix(value):
    with pytest.raises(ConfigError, match=r"mplog\.yield_to_workers must be a number of seconds from 0"):
        load_config({"version": 1, "mplog": {"yield_to_workers": value}})


def test_yielding_under_acknowledged_delivery_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match=r"mplog\.yield_to_workers does not apply with mplog\.ack.*set it to 0"):
        load_config({"version": 1, "mplog": {"ack": True, "yield_to_workers": 1}})
    assert yield_seconds(_runtime(ack=True, yield_to_workers=0)) == 0.0
