"""The listener holds frames while this host's workers keep every CPU busy, and delivers them all.

Two layers, both with real processes keeping real CPUs busy:

- a Server in this process, fed hand-built frames over a real socket whose sender pid is
  a spinning process: each reason a hold ends (idle, urgent, time, bytes, a bad frame,
  stop) is made to happen and the order of delivery checked;
- whole listeners (``mplog.start_listener``) with worker processes under fork, spawn and
  forkserver that log numbered records and then keep their CPU busy: nothing is written
  while they are busy, everything exactly once afterwards; an ERROR goes through at once
  with everything held before it; the hold is bounded; ``yield_to_workers = 0`` never holds.

CPUs are taken from the machine by spinning processes; the tests restrict themselves (and
so the listener they start) to at most two CPUs, so that two spinners are enough.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import check_lines, file_config, payload, read_lines, wait_for

import mplog
from mplog.listener.holding import WorkerWatch
from mplog.listener.loop import Server
from mplog.listener.status_channel import format_status
from mplog.transports import open_receiver, open_sender
from mplog.wire import FLAG_URGENT, Sender, build_frame, encode_record, encode_sender

HOST = socket.gethostname()


@pytest.fixture
def two_cpus() -> Iterator[int]:
    """This process (and the listeners it starts) on at most two CPUs; how many."""
    saved = os.sched_getaffinity(0)
    cpus = sorted(saved)[:2]
    os.sched_setaffinity(0, cpus)
    try:
        yield len(cpus)
    finally:
        os.sched_setaffinity(0, saved)


# ---------------------------------------------------------------- a Server in this process


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class _Rig:
    """A Server reading a real socket; frames claim to come from a spinning process."""

    def __init__(self, tmp_path: Path, spinner_pid: int, yield_seconds: float, cpus: int = 1) -> None:
        self.lines = _Lines()
        logger = logging.getLogger("held")
        logger.handlers[:] = [self.lines]
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        self.server = Server(open_receiver(f"ipc://{tmp_path}/listener.sock"))
        self.server.yield_seconds = yield_seconds
        self.server.watch = WorkerWatch(cpus=cpus)
        self.sender = open_sender(self.server.receiver.endpoint)
        self.identity = encode_sender(Sender(HOST, spinner_pid, time.time(), 1))
        self.seq = 0
        self.frame_bytes = 0
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def wait_busy(self, pid: int) -> None:
        """The watch knows the spinner and has seen it busy (the look the next frame gets)."""
        watch = self.server.watch
        assert watch is not None
        watch.saw(HOST, pid, 0)
        wait_for(watch._look, timeout=20)

    def send(self, *messages: str, flags: int = 0, level: int = logging.INFO) -> None:
        records = [
            encode_record(logging.LogRecord("held", level, __file__, 1, message, None, None)) for message in messages
        ]
        frame = build_frame(self.identity, self.seq, 0, flags, records)
        self.frame_bytes = len(frame)
        assert self.sender.send(frame, 5.0)
        self.seq += len(records)

    def send_raw(self, data: bytes) -> None:
        assert self.sender.send(data, 5.0)

    def close(self) -> None:
        self.server.stop_event.set()
        self.thread.join(20)
        self.sender.close()
        self.server.receiver.close()


@pytest.fixture
def make_rig(tmp_path: Path, spinner: subprocess.Popen[bytes]) -> Iterator[Any]:
    made: list[_Rig] = []

    def make(yield_seconds: float = 30.0) -> _Rig:
        one = _Rig(tmp_path, spinner.pid, yield_seconds)
        made.append(one)
        one.wait_busy(spinner.pid)
        return one

    try:
        yield make
    finally:
        for one in made:
            one.close()


@pytest.fixture
def rig(make_rig: Any) -> _Rig:
    made: _Rig = make_rig()
    return made


def _held(rig: _Rig, frames: int) -> None:
    """``frames`` frames are held and nothing has been handled."""
    wait_for(lambda: rig.server.held_frames == frames, timeout=10)
    assert rig.lines.messages == []


@pytest.mark.timeout(60)
def test_frames_are_held_while_the_sender_is_busy_and_an_urgent_one_releases_them_in_order(rig, spinner):
    rig.send("a0", "a1")
    rig.send("b0")
    rig.send("c0", "c1", "c2")
    _held(rig, 3)
    time.sleep(0.3)  # not synchronisation: the window in which a wrong release would show
    assert rig.lines.messages == [] and rig.server.held_frames == 3  # still held: the sender is still busy
    rig.send("boom", flags=FLAG_URGENT, level=logging.ERROR)
    wait_for(lambda: len(rig.lines.messages) == 7, timeout=10)
    assert rig.lines.messages == ["a0", "a1", "b0", "c0", "c1", "c2", "boom"]
    assert spinner.poll() is None  # released by the urgent frame, not by the sender going quiet
    assert rig.server.hold_ends == {"urgent": 1}
    assert rig.server.stats.snapshot()["received"] == 7


@pytest.mark.timeout(60)
def test_the_held_frames_go_out_when_the_sender_stops_being_busy(rig, spinner):
    rig.send("x0")
    rig.send("x1")
    _held(rig, 2)
    spinner.kill()
    spinner.wait(10)
    wait_for(lambda: rig.lines.messages == ["x0", "x1"], timeout=10)
    assert rig.server.hold_ends == {"idle": 1}


@pytest.mark.timeout(60)
def test_a_hold_lasts_at_most_yield_to_workers_seconds(make_rig, spinner):
    rig = make_rig(0.4)
    started = time.monotonic()
    rig.send("t0")
    wait_for(lambda: rig.lines.messages == ["t0"], timeout=10)
    assert time.monotonic() - started >= 0.35
    assert spinner.poll() is None
    assert rig.server.hold_ends == {"time": 1}


@pytest.mark.timeout(60)
def test_a_hold_ends_when_the_held_frames_reach_their_byte_bound(rig, spinner):
    rig.send("m0")
    _held(rig, 1)
    rig.server.hold_max_bytes = 3 * rig.frame_bytes
    rig.send("m1")
    rig.send("m2")
    wait_for(lambda: rig.lines.messages == ["m0", "m1", "m2"], timeout=10)
    assert spinner.poll() is None
    assert rig.server.hold_ends == {"bytes": 1}


@pytest.mark.timeout(60)
def test_a_bad_frame_ends_a_hold_is_counted_and_costs_no_held_record(rig, spinner):
    rig.send("g0")
    rig.send("g1")
    _held(rig, 2)
    rig.send_raw(b"\x93not a frame")
    wait_for(lambda: rig.lines.messages == ["g0", "g1"], timeout=10)
    assert rig.server.hold_ends == {"not_a_frame": 1}
    wait_for(lambda: rig.server.stats.snapshot()["malformed_total"] == 1, timeout=5)


@pytest.mark.timeout(60)
def test_a_stop_during_a_hold_delivers_every_held_frame(rig, spinner):
    for i in range(5):
        rig.send(f"s{i}")
    _held(rig, 5)
    rig.close()
    assert rig.lines.messages == [f"s{i}" for i in range(5)]
    assert rig.server.hold_ends == {"stop": 1}
    assert spinner.poll() is None


# ---------------------------------------------------------------- whole listeners, real workers


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def _flush() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()


def _busy_worker(producer: int, count: int, error_last: bool, go: Any, logged: Any, spin: float) -> None:
    """Say hello, wait, become busy, log ``count - 1`` more records (the last an ERROR), stay busy ``spin`` s."""
    mplog.setup_worker()
    log = logging.getLogger("test")
    log.info("%s", payload(producer, 0))
    _flush()
    if not go.wait(30):
        return
    _spin(0.3)  # busy before its records arrive
    for seq in range(1, count - 1 if error_last else count):
        log.info("%s", payload(producer, seq))
    _flush()
    if error_last:  # its INFO records are held by now; the ERROR comes a second later, alone in its frame
        _spin(1.0)
        log.error("%s", payload(producer, count - 1))
    logged.release()
    _spin(spin)


def _run_busy_workers(
    tmp_path: Path,
    ctx: multiprocessing.context.BaseContext,
    workers: int,
    *,
    count: int = 200,
    yield_seconds: float | None = None,
    error_last: bool = False,
    spin: float = 2.0,
    transport: str = "zmq",
) -> tuple[mplog.Listener, list[Any], Path]:
    out = tmp_path / "out.log"
    config: dict[str, Any] = file_config(out)
    if yield_seconds is not None:
        config["mplog"] = {"yield_to_workers": yield_seconds}
    listener = mplog.start_listener(config, transport=transport, route_parent=False)
    go, logged = ctx.Event(), ctx.Semaphore(0)
    procs = [ctx.Process(target=_busy_worker, args=(i, count, error_last, go, logged, spin)) for i in range(workers)]
    for p in procs:
        p.start()
    wait_for(lambda: len(read_lines(out)) == workers, timeout=60)  # every hello, handled at once (nobody busy)
    go.set()
    for _ in procs:
        assert logged.acquire(timeout=60)
    return listener, procs, out


def _finish(listener: mplog.Listener, procs: list[Any]) -> dict[str, Any]:
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * len(procs)
    return listener.stop()


@pytest.mark.integration
@pytest.mark.serial  # whether the workers are busy is read from the CPUs: other tests' load changes it
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("method", "transport"), [("fork", "zmq"), ("fork", "multiprocessing"), ("spawn", "zmq"), ("forkserver", "zmq")]
)
def test_records_of_busy_workers_wait_until_a_cpu_is_free_then_every_one_is_written_once(
    tmp_path, two_cpus, method, transport
):
    ctx = multiprocessing.get_context(method)
    # 1.0: holding is opt-in (the default was 1.0 until issue 15)
    listener, procs, out = _run_busy_workers(tmp_path, ctx, two_cpus, transport=transport, spin=2.5, yield_seconds=1.0)
    try:
        time.sleep(0.5)  # not synchronisation: the window in which a wrong release would show
        assert all(p.is_alive() for p in procs)
        assert len(read_lines(out)) == two_cpus  # only the hellos: the rest is held
        held = listener.stats()
        assert held["yield"]["held_frames"] >= 1
        assert (
            format_status(held)
            .splitlines()[0]
            .endswith(f", holding {held['yield']['held_frames']} frames while the workers are busy")
        )
        for p in procs:
            p.join(60)
        wait_for(lambda: len(read_lines(out)) == two_cpus * 200, timeout=20)  # written once a CPU is free
    finally:
        stats = _finish(listener, procs)
    check_lines(read_lines(out), dict.fromkeys(range(two_cpus), 200)).assert_exact()
    assert stats["received"] == two_cpus * 200 and stats["gaps"] == stats["dropped"] == 0
    assert stats["yield"]["holds"] >= 1 and stats["yield"]["held_frames"] == 0


@pytest.mark.integration
@pytest.mark.serial  # whether the workers are busy is read from the CPUs: other tests' load changes it
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("error_last", "yield_seconds", "ended"),
    [
        (True, 30, "urgent"),  # an ERROR is written at once, with everything held before it
        (False, 0.5, "time"),  # however long the workers stay busy, no longer than yield_to_workers
        (False, 0, None),  # yield_to_workers = 0: never held
    ],
    ids=["error-releases-the-hold", "hold-bounded-in-time", "yield-off"],
)
def test_records_are_written_while_the_workers_are_still_busy(tmp_path, two_cpus, error_last, yield_seconds, ended):
    ctx = multiprocessing.get_context("fork")
    listener, procs, out = _run_busy_workers(
        tmp_path, ctx, two_cpus, error_last=error_last, yield_seconds=yield_seconds, spin=6.0
    )
    try:
        wait_for(lambda: len(read_lines(out)) == two_cpus * 200, timeout=4)  # long before the workers are done
        assert all(p.is_alive() for p in procs)
        reasons = listener.stats()["yield"]["ended"]
        assert reasons.get(ended, 0) >= 1 if ended else reasons == {}
    finally:
        stats = _finish(listener, procs)
    check_lines(read_lines(out), dict.fromkeys(range(two_cpus), 200)).assert_exact()
    assert stats["received"] == two_cpus * 200
    if ended is None:
        assert stats["yield"]["holds"] == 0


def _hot_worker(producer: int, count: int) -> None:
    mplog.setup_worker()
    log = logging.getLogger("test")
    for seq in range(count):
        log.info("%s", payload(producer, seq))


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_workers_logging_flat_out_through_many_short_holds_lose_and_repeat_nothing(tmp_path, two_cpus):
    # Every hold here ends by time (0.1 s) or when the workers finish; the listener then
    # catches up, holds again: each frame must still be handled once, in its sender's order.
    out = tmp_path / "out.log"
    per = 40_000
    workers = two_cpus + 1
    listener = mplog.start_listener({**file_config(out), "mplog": {"yield_to_workers": 0.1}}, route_parent=False)
    procs = [multiprocessing.get_context("fork").Process(target=_hot_worker, args=(i, per)) for i in range(workers)]
    for p in procs:
        p.start()
    stats = _finish(listener, procs)
    lines = read_lines(out)
    check_lines(lines, dict.fromkeys(range(workers), per)).assert_exact()
    for producer in range(workers):  # each sender's records in the order it logged them
        mine = [line for line in lines if line.startswith(f"P{producer}:")]
        assert mine == [payload(producer, seq) for seq in range(per)]
    assert stats["received"] == workers * per and stats["gaps"] == stats["dropped"] == 0
    assert stats["yield"]["holds"] >= 1
