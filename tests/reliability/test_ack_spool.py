"""Acknowledged delivery with a spool file: a SIGKILLed worker's unacknowledged frames reach the handlers.

The listener is held stopped (SIGSTOP) while a worker hands frames to its transport, so no
acknowledgement can arrive; then the worker is SIGKILLed. Without a spool those frames die
with it (the ones still in its ZeroMQ queue, and all of them when the listener is killed
too). With one, the next worker started on the same ``spool_dir`` adopts the file, resends
them under the dead worker's identity and closes that sender with a goodbye.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import multiprocessing
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import file_config, fill, log_numbered, mount_tmpfs, payload, read_lines, umount, wait_for
from ledger import build_ledger

import mplog
from mplog import WorkerOptions
from mplog.delivery.ack_sender import AckingSender
from mplog.delivery.spool import Spooler
from mplog.delivery.spool_files import AdoptedSpool, OwnSpool, prepare_dir
from mplog.delivery.spool_format import HEADER_SIZE, goodbye_frame, parse_spool
from mplog.exceptions import ConfigError
from mplog.transports import TransportOptions
from mplog.wire import Sender, build_frame, encode_record, encode_sender, read_envelope

SPAWN = multiprocessing.get_context("spawn")
SIZE = 300  # payload bytes: 2,000 records are about 1 MB, more than the kernel buffers between the two


def _log_range(producer: int, start: int, stop: int, size: int = SIZE) -> None:
    log = logging.getLogger("test")
    for seq in range(start, stop):
        log.info("%s", payload(producer, seq, size))


def _hand_everything(handler: Any) -> dict[str, int]:
    """Flush until every record is numbered and handed to the transport (the listener may be stopped)."""
    deadline = time.monotonic() + 20
    while not handler.flush_within(1.0) and time.monotonic() < deadline:
        pass
    return dict(handler.counters)


def _doomed_worker(spool_dir: str | None, conn: Any, warmup: int, count: int) -> None:
    """Connect and get ``warmup`` records acknowledged; then, once the listener is stopped, hand the rest."""
    # sndhwm: every frame fits ZeroMQ's queue, so all of them are handed to the transport
    # before the kill (the exact count), and most of them are still in this process then.
    handler = mplog.setup_worker(ack=True, spool_dir=spool_dir, batch_records=100, sndhwm=1000)
    _log_range(0, 0, warmup)
    _hand_everything(handler)
    wait_for(lambda: handler._transport.unacked == 0, timeout=20)
    conn.send(handler._transport.spool_path)
    conn.recv()  # the listener is stopped now
    _log_range(0, warmup, count)
    conn.send(_hand_everything(handler))
    time.sleep(60)  # SIGKILLed here


def _adopting_worker(spool_dir: str | None, conn: Any, count: int) -> None:
    handler = mplog.setup_worker(ack=True, spool_dir=spool_dir, batch_records=100)
    conn.send(handler._transport.unacked)  # frames adopted from the dead worker's spool
    log_numbered(1, count, SIZE)
    conn.send("logged")  # then exit: close() waits for every acknowledgement


def _spool_files(spool_dir: Path) -> list[Path]:
    return sorted(spool_dir.glob("*.spool")) if spool_dir.exists() else []


def _resume(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


def _reap(*procs: Any) -> None:
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join(10)


@pytest.mark.integration
@pytest.mark.serial
@pytest.mark.timeout(120)
@pytest.mark.parametrize("listener_fate", ["resumed", "killed_and_restarted"])
def test_a_sigkilled_workers_unacknowledged_records_are_adopted_from_its_spool_and_written_exactly_once(
    tmp_path: Path, listener_fate: str
) -> None:
    out, spool_dir = tmp_path / "out.log", tmp_path / "spool"
    warmup, count, second = 100, 2_000, 300
    with mplog.start_listener(file_config(out), ack=True, route_parent=False) as listener:
        conn1, child1 = SPAWN.Pipe()
        conn2, child2 = SPAWN.Pipe()
        doomed = SPAWN.Process(target=_doomed_worker, args=(str(spool_dir), child1, warmup, count))
        adopter = SPAWN.Process(target=_adopting_worker, args=(str(spool_dir), child2, second))
        stopped = listener.pid
        try:
            doomed.start()
            assert conn1.poll(30)
            own_spool = conn1.recv()
            assert own_spool is not None and Path(own_spool).parent == spool_dir
            os.kill(stopped, signal.SIGSTOP)
            conn1.send("go")
            assert conn1.poll(30)
            counters = conn1.recv()
            # Every record was numbered and handed to the transport: none is in the worker's
            # own batch or outbox, which a SIGKILL would legitimately lose.
            assert (counters["sent"], counters["buffered"], counters["dropped"]) == (count, 0, 0)
            os.kill(doomed.pid, signal.SIGKILL)
            doomed.join(10)
            assert [f.name for f in _spool_files(spool_dir)] == [Path(own_spool).name]
            assert len(parse_spool(Path(own_spool).read_bytes()).frames) > 0

            adopter.start()
            assert conn2.poll(30)
            assert conn2.recv() > 0  # the dead worker's frames, adopted while the listener is still away
            assert conn2.poll(30) and conn2.recv() == "logged"
            if listener_fate == "resumed":
                os.kill(stopped, signal.SIGCONT)
            else:  # its queues die with it; the supervisor starts a new one on the same endpoint
                os.kill(stopped, signal.SIGKILL)
            adopter.join(60)
            assert adopter.exitcode == 0
        finally:
            _resume(stopped)
            _reap(doomed, adopter)
        stats = listener.stats()
    pids = {0: doomed.pid, 1: adopter.pid}
    ledger = build_ledger(read_lines(out), {0: count, 1: second}, stats, pids)
    ledger.assert_balanced()  # every record written once; no drop, gap or rejection
    assert ledger.written == count + second and len(read_lines(out)) == count + second
    dead = [s for s in stats["senders"].values() if s["pid"] == doomed.pid]
    assert len(dead) == 1 and dead[0]["closed"] and dead[0]["next_seq"] == count and dead[0]["gaps"] == 0
    assert stats["gaps"] == stats["dropped"] == stats["malformed_total"] == 0
    assert all(s["closed"] for s in stats["senders"].values())
    assert _spool_files(spool_dir) == []
    assert stats["restarts"] == (1 if listener_fate == "killed_and_restarted" else 0)


# ---------------------------------------------------------------- a spool written by hand


def _dead_frames(sender: Sender, frames: int, per: int) -> list[bytes]:
    packed = encode_sender(sender)
    built = []
    for i in range(frames):
        records = [
            encode_record(logging.LogRecord("test", logging.INFO, "p.py", 1, payload(0, seq), None, None))
            for seq in range(i * per, (i + 1) * per)
        ]
        built.append(build_frame(packed, i * per, 0, 0, records))
    return built


def _write_spool(spool_dir: Path, frames: list[bytes]) -> Path:
    prepare_dir(str(spool_dir))
    spool = OwnSpool(str(spool_dir), 1 << 20)
    for frame in frames:
        head = read_envelope(frame if frame[:2] == frames[0][:2] else frames[0])  # a bad entry: any head will do
        assert spool.append(frame, head)
    spool.release()  # as if its writer had died: the file stays, nobody holds it
    return Path(spool.path)


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_torn_last_entry_is_ignored_and_the_whole_entries_before_it_are_adopted(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    out, spool_dir = tmp_path / "out.log", tmp_path / "spool"
    dead = Sender(socket.gethostname(), 4_000_001, 1.5, 0xD00D)
    path = _write_spool(spool_dir, _dead_frames(dead, 5, 10))
    with path.open("r+b") as f:  # the last write, torn by a SIGKILL
        f.truncate(path.stat().st_size - 7)
    assert len(parse_spool(path.read_bytes()).frames) == 4
    with mplog.start_listener(file_config(out), ack=True, route_parent=False) as listener:
        sender = AckingSender(listener.endpoint, TransportOptions(), spool_dir=str(spool_dir), close_timeout=20)
        try:
            assert sender.unacked == 4
            wait_for(lambda: not path.exists(), timeout=20)  # acknowledged, goodbye acknowledged, deleted
        finally:
            sender.close()
        stats = listener.stats()
    record = stats["senders"][dead.key]
    assert (record["records"], record["next_seq"], record["closed"], record["gaps"]) == (40, 40, True, 0)
    lines = read_lines(out)
    assert sorted(lines) == sorted(payload(0, seq) for seq in range(40))
    assert "torn last entry" in capfd.readouterr().err
    assert _spool_files(spool_dir) == []


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_worker_that_cannot_create_its_own_spool_on_a_full_disk_still_adopts_a_dead_workers_spool(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # An outsider's runs: on a full spool_dir the new worker said "goes on without a spool" and
    # left the dead worker's intact spool (12-14 frames) unadopted, 3 runs of 3.
    out, mnt = tmp_path / "out.log", tmp_path / "full"
    mount_tmpfs(mnt, "1m")
    try:
        spool_dir = mnt / "spool"
        dead = Sender(socket.gethostname(), 4_000_003, 1.5, 0xF011)
        path = _write_spool(spool_dir, _dead_frames(dead, 12, 10))
        fill(mnt)
        with mplog.start_listener(file_config(out), ack=True, route_parent=False) as listener:
            sender = AckingSender(listener.endpoint, TransportOptions(), spool_dir=str(spool_dir), close_timeout=20)
            try:
                assert sender.spool_errors == 1 and sender.spool_path is None  # its own file: no room
                assert sender.unacked == 12
                wait_for(lambda: not path.exists(), timeout=20)  # acknowledged, goodbye acknowledged, deleted
            finally:
                sender.close()
            stats = listener.stats()
        record = stats["senders"][dead.key]
        assert (record["records"], record["next_seq"], record["closed"], record["gaps"]) == (120, 120, True, 0)
        assert sorted(read_lines(out)) == sorted(payload(0, seq) for seq in range(120))
        assert capfd.readouterr().err.count("goes on without a spool") == 1
        assert _spool_files(spool_dir) == []
    finally:
        umount(mnt)


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_an_adopted_spool_with_an_entry_that_is_not_a_frame_is_left_alone_and_reported_once(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    spool_dir = tmp_path / "spool"
    dead = Sender(socket.gethostname(), 4_000_002, 1.5, 0xBAD)
    frames = _dead_frames(dead, 2, 5)
    path = _write_spool(spool_dir, [frames[0], b"\x93not a frame", frames[1]])
    with mplog.start_listener(None, ack=True, route_parent=False) as listener:
        sender = AckingSender(listener.endpoint, TransportOptions(), spool_dir=str(spool_dir), close_timeout=5)
        try:
            assert sender.unacked == 0
        finally:
            sender.close()
        assert dead.key not in listener.stats()["senders"]
    assert path.exists()
    assert capfd.readouterr().err.count(path.name) == 1


# ---------------------------------------------------------------- the bound


def _bounded_worker(spool_dir: str, conn: Any, count: int, bound: int) -> None:
    handler = mplog.setup_worker(
        ack=True, spool_dir=spool_dir, max_buffer_bytes=bound, policy="drop_newest", batch_records=20
    )
    _log_range(2, 0, 20)
    _hand_everything(handler)
    wait_for(lambda: handler._transport.unacked == 0, timeout=20)
    spool = handler._transport.spool_path
    conn.send(spool)
    conn.recv()  # the listener is stopped now
    largest = 0
    log = logging.getLogger("test")
    for seq in range(20, count):
        log.info("%s", payload(2, seq, SIZE))
        largest = max(largest, os.path.getsize(spool))
    conn.send((largest, handler.counters["spool_errors"], handler.counters["dropped"]))
    conn.recv()  # the listener runs again: exit, delivering what is kept


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_the_spool_file_never_outgrows_the_resend_buffer_bound_and_drops_past_it_are_counted_exactly(
    tmp_path: Path,
) -> None:
    out, spool_dir = tmp_path / "out.log", tmp_path / "spool"
    count, bound = 3_000, 64 * 1024
    with mplog.start_listener(file_config(out), ack=True, route_parent=False) as listener:
        conn, child = SPAWN.Pipe()
        worker = SPAWN.Process(target=_bounded_worker, args=(str(spool_dir), child, count, bound))
        stopped = listener.pid
        try:
            worker.start()
            assert conn.poll(30) and conn.recv() is not None
            os.kill(stopped, signal.SIGSTOP)
            conn.send("go")
            assert conn.poll(60)
            largest, spool_errors, dropped = conn.recv()
            os.kill(stopped, signal.SIGCONT)
            conn.send("exit")
            worker.join(60)
            assert worker.exitcode == 0
        finally:
            _resume(stopped)
            _reap(worker)
        stats = listener.stats()
    assert HEADER_SIZE < largest <= bound
    assert spool_errors == 0
    assert dropped > 0  # the bound was reached: the policy dropped, and counted
    ledger = build_ledger(read_lines(out), {2: count}, stats, {2: worker.pid})
    ledger.assert_balanced()  # written + dropped == logged, exactly
    entry = ledger.entries[2]
    assert entry.dropped == dropped and entry.written == count - dropped and entry.gaps == 0
    assert _spool_files(spool_dir) == []


# ---------------------------------------------------------------- ownership


def _live_worker(spool_dir: str, conn: Any, producer: int, count: int) -> None:
    handler = mplog.setup_worker(ack=True, spool_dir=spool_dir, batch_records=50, sndhwm=1000)
    adopted = handler._transport.unacked
    _log_range(producer, 0, 1)  # connected and acknowledged before the listener is stopped
    _hand_everything(handler)
    wait_for(lambda: handler._transport.unacked == 0, timeout=20)
    conn.send((handler._transport.spool_path, adopted))
    conn.recv()
    _log_range(producer, 1, count)
    conn.send(_hand_everything(handler))
    conn.recv()  # exit


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_two_live_workers_on_one_spool_dir_never_adopt_each_others_file(tmp_path: Path) -> None:
    out, spool_dir = tmp_path / "out.log", tmp_path / "spool"
    count = 500
    with mplog.start_listener(file_config(out), ack=True, route_parent=False) as listener:
        pipes = [SPAWN.Pipe() for _ in range(2)]
        workers = [
            SPAWN.Process(target=_live_worker, args=(str(spool_dir), child, i, count))
            for i, (_, child) in enumerate(pipes)
        ]
        stopped = listener.pid
        try:
            paths = []
            for worker, (conn, _) in zip(workers, pipes, strict=True):
                worker.start()  # the second starts while the first lives: it must not adopt its file
                assert conn.poll(30)
                path, adopted = conn.recv()
                assert adopted == 0
                paths.append(Path(path).name)
            os.kill(stopped, signal.SIGSTOP)
            for conn, _ in pipes:  # the listener is stopped: their frames wait, unacknowledged, in their spools
                conn.send("log")
                assert conn.poll(30) and conn.recv()["sent"] == count
            for name in paths:
                assert len(parse_spool((spool_dir / name).read_bytes()).frames) > 0
            # A third sender starts while both live: it adopts neither.
            third = AckingSender(
                "ipc://" + str(tmp_path / "nowhere"), TransportOptions(), spool_dir=str(spool_dir), close_timeout=0.1
            )
            try:
                assert third.unacked == 0
            finally:
                third.close()
            assert sorted(p.name for p in _spool_files(spool_dir)) == sorted(paths)
            os.kill(stopped, signal.SIGCONT)
            for conn, _ in pipes:
                conn.send("exit")
            for w in workers:
                w.join(60)
            assert [w.exitcode for w in workers] == [0, 0]
        finally:
            _resume(stopped)
            _reap(*workers)
        stats = listener.stats()
    ledger = build_ledger(read_lines(out), {0: count, 1: count}, stats, {i: w.pid for i, w in enumerate(workers)})
    ledger.assert_balanced()
    assert len(read_lines(out)) == 2 * count
    assert {s["pid"] for s in stats["senders"].values()} == {w.pid for w in workers}  # no goodbye for another
    assert all(s["closed"] for s in stats["senders"].values())
    assert _spool_files(spool_dir) == []


# ---------------------------------------------------------------- fork and failures


def _forking_worker(spool_dir: str, conn: Any, count: int) -> None:
    handler = mplog.setup_worker(ack=True, spool_dir=spool_dir, batch_records=50, sndhwm=1000)
    _log_range(3, 0, 1)
    _hand_everything(handler)
    wait_for(lambda: handler._transport.unacked == 0, timeout=20)
    conn.send(handler._transport.spool_path)
    conn.recv()  # the listener is stopped now
    _log_range(3, 1, count)
    conn.send(_hand_everything(handler))
    pid = os.fork()
    if pid == 0:  # the child: a spool file of its own, and none of its parent's descriptors
        try:
            transport = logging.getLogger().handlers[0]._transport  # type: ignore[attr-defined]
            conn.send((os.getpid(), transport.spool_path))
            time.sleep(30)  # outlives its parent; SIGKILLed by the test
        finally:
            os._exit(0)
    time.sleep(60)  # SIGKILLed here


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_a_forked_child_that_outlives_its_parent_does_not_keep_the_parents_spool_from_being_adopted(
    tmp_path: Path,
) -> None:
    out, spool_dir = tmp_path / "out.log", tmp_path / "spool"
    count = 500
    child_pid = 0
    with mplog.start_listener(file_config(out), ack=True, route_parent=False) as listener:
        conn, end = SPAWN.Pipe()
        conn2, end2 = SPAWN.Pipe()
        parent = SPAWN.Process(target=_forking_worker, args=(str(spool_dir), end, count))
        adopter = SPAWN.Process(target=_adopting_worker, args=(str(spool_dir), end2, 0))
        stopped = listener.pid
        try:
            parent.start()
            assert conn.poll(30)
            parent_spool = conn.recv()
            os.kill(stopped, signal.SIGSTOP)
            conn.send("go")
            assert conn.poll(30) and conn.recv()["sent"] == count
            assert conn.poll(30)
            child_pid, child_spool = conn.recv()
            assert child_spool is not None and child_spool != parent_spool
            os.kill(parent.pid, signal.SIGKILL)
            # Not join(): the forked child holds the sentinel pipe that join() waits for.
            wait_for(lambda: not parent.is_alive(), timeout=10)
            adopter.start()
            assert conn2.poll(30)
            assert conn2.recv() > 0  # adopted, although the forked child is alive
            assert conn2.poll(30) and conn2.recv() == "logged"
            os.kill(stopped, signal.SIGCONT)
            adopter.join(60)
            assert adopter.exitcode == 0
        finally:
            _resume(stopped)
            if child_pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child_pid, signal.SIGKILL)
            _reap(parent, adopter)
        stats = listener.stats()
    ledger = build_ledger(read_lines(out), {3: count}, stats, {3: parent.pid})
    ledger.assert_balanced()
    assert len(read_lines(out)) == count
    assert not Path(parent_spool).exists()
    assert [s["closed"] for s in stats["senders"].values() if s["pid"] == parent.pid] == [True]


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_spool_write_failure_is_counted_and_reported_once_and_delivery_goes_on_from_memory(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, spool_dir = tmp_path / "out.log", tmp_path / "spool"
    with mplog.start_listener(file_config(out), ack=True, route_parent=False) as listener:
        handler = mplog.setup_worker(listener.endpoint, ack=True, spool_dir=str(spool_dir), batch_records=50)
        transport = handler._transport
        path = transport.spool_path  # type: ignore[attr-defined]
        assert path is not None

        def disk_full(fd: int, data: bytes, offset: int) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "pwrite", disk_full)
        log_numbered(0, 1_000)  # never raises
        handler.close()
        monkeypatch.undo()
        stats = listener.stats()
    assert transport.spool_errors == 1  # type: ignore[attr-defined]
    assert handler.counters["spool_errors"] == 1 and handler.counters["unacked"] == 0
    assert capfd.readouterr().err.count("goes on without a spool") == 1
    build_ledger(read_lines(out), {0: 1_000}, stats, {0: os.getpid()}).assert_balanced()
    assert not Path(path).exists()  # removed at a clean end, as when it was written
    assert handler.counters["errors"] == 0


def _worker_on_a_filling_disk(spool_dir: str, conn: Any, warmup: int, count: int) -> None:
    """Get ``warmup`` records acknowledged; once the disk is nearly full and the listener stopped, log the rest."""
    handler = mplog.setup_worker(ack=True, spool_dir=spool_dir, batch_records=10)
    _log_range(0, 0, warmup, 100)
    _hand_everything(handler)
    wait_for(lambda: handler._transport.unacked == 0, timeout=20)
    conn.send(handler._transport.spool_path)
    conn.recv()  # the disk has room for a few frames only, and the listener is stopped
    _log_range(0, warmup, count, 100)
    conn.send(_hand_everything(handler))
    time.sleep(60)  # SIGKILLed here


@pytest.mark.integration
@pytest.mark.serial
@pytest.mark.timeout(120)
def test_a_short_write_to_a_spool_keeps_the_whole_frames_before_it_for_the_worker_that_adopts_the_file(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # An outsider's runs: after "short write to a spool file (3786 of 8546 bytes)" the worker
    # emptied its spool, whole frames included; SIGKILLed later, those records were lost
    # without a count (11 frames, 1,100 records).
    out, mnt = tmp_path / "out.log", tmp_path / "small"
    warmup, count = 20, 400
    mount_tmpfs(mnt, "1m")
    conn, child = SPAWN.Pipe()
    worker = SPAWN.Process(target=_worker_on_a_filling_disk, args=(str(mnt / "spool"), child, warmup, count))
    try:
        with mplog.start_listener(file_config(out), ack=True, route_parent=False) as listener:
            stopped = listener.pid
            try:
                worker.start()
                assert conn.poll(30)
                path = Path(conn.recv())
                fill(mnt)
                filler = mnt / "filler"
                os.truncate(filler, filler.stat().st_size - 3 * 4096)  # room for about 9 frames of ~1.3 kB
                os.kill(stopped, signal.SIGSTOP)
                conn.send("go")
                assert conn.poll(60)
                counters = conn.recv()
                worker.kill()
                worker.join(10)
                # The frames already in the listener's socket die with it (as in a crash of both);
                # the supervisor starts a new one on the same endpoint.
                os.kill(stopped, signal.SIGKILL)
                wait_for(lambda: listener.stats()["restarts"] == 1, timeout=30)
            finally:
                _resume(stopped)
            kept = parse_spool(path.read_bytes())
            assert counters["spool_errors"] == 1 and counters["unacked"] > len(kept.frames) > 0
            assert kept.torn == 0 and kept.stopped  # the torn entry cut off; no goodbye after these
            frames = len(kept.frames)
            filler.unlink()
            sender = AckingSender(listener.endpoint, TransportOptions(), spool_dir=str(mnt / "spool"), close_timeout=20)
            try:
                assert sender.unacked == frames
                wait_for(lambda: not path.exists(), timeout=20)  # acknowledged, then deleted
            finally:
                sender.close()
            stats = listener.stats()
        (record,) = [s for s in stats["senders"].values() if s["pid"] == worker.pid]
        written = warmup + 10 * frames  # every record of the frames the file kept, once
        assert (record["records"], record["next_seq"], record["gaps"], record["duplicates"]) == (written, written, 0, 0)
        assert not record["closed"]  # the rest of its stream died with it in memory: no goodbye hides that
        assert sorted(read_lines(out)) == sorted(payload(0, seq, 100) for seq in range(written))
        err = capfd.readouterr().err
        assert f"the {frames} unacknowledged frames already in {path} stay there" in err, err
    finally:
        _reap(worker)
        umount(mnt)


@pytest.mark.timeout(30)
def test_a_spool_stopped_by_a_short_write_still_records_acknowledgements_so_an_adopter_resends_only_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = Sender("host-a", 4243, 1.5, 0xC0FFEF)
    frames = _dead_frames(dead, 6, 10)
    spooler = Spooler(str(tmp_path), 1 << 20)
    assert spooler.own is not None
    path = Path(spooler.own.path)
    for frame in frames[:4]:
        assert spooler.call("append", frame, read_envelope(frame))
    real = os.pwrite
    # The disk fills: a new entry's write is cut short (what goes into the header's page still fits).
    monkeypatch.setattr(
        os,
        "pwrite",
        lambda fd, data, offset: real(fd, data[: len(data) // 2] if offset >= HEADER_SIZE else data, offset),
    )
    assert spooler.call("append", frames[4], read_envelope(frames[4])) is None  # a short write: spooling stops
    monkeypatch.undo()
    assert spooler.errors == 1 and spooler.call("append", frames[5], read_envelope(frames[5])) is None
    contents = parse_spool(path.read_bytes())
    assert (contents.frames, contents.torn, contents.stopped) == (frames[:4], 0, True)  # the torn entry cut off
    spooler.call("acknowledged", 0xC0FFEF, 20)  # frames 0 and 1
    adopted = AdoptedSpool(str(path), -1, parse_spool(path.read_bytes())).streams()
    assert [end for end, _ in adopted[0xC0FFEF].frames] == [30, 40] and adopted[0xC0FFEF].final  # no goodbye to add
    spooler.call("acknowledged", 0xC0FFEF, 60)  # everything, frames sent from memory included
    assert (
        path.stat().st_size == HEADER_SIZE
        and AdoptedSpool(str(path), -1, parse_spool(path.read_bytes())).streams() == {}
    )
    spooler.close(keep=False)
    assert not path.exists()


@pytest.mark.timeout(30)
def test_a_spool_at_its_bound_is_rewritten_with_only_its_unacknowledged_frames(tmp_path: Path) -> None:
    dead = Sender("host-a", 4242, 1.5, 0xC0FFEE)
    frames = _dead_frames(dead, 40, 10)  # about 1 KB each
    bound = HEADER_SIZE + 10 * (len(frames[0]) + 8)
    spool = OwnSpool(str(tmp_path), bound)
    path = Path(spool.path)
    kept = 0
    for i, frame in enumerate(frames):
        if not spool.append(frame, read_envelope(frame)):
            # Full: acknowledge the oldest three frames still kept, and the next append rewrites the file.
            spool.acknowledged(0xC0FFEE, (kept + 3) * 10)
            kept += 3
            assert spool.append(frame, read_envelope(frame))
        assert path.stat().st_size <= bound
        contents = parse_spool(path.read_bytes())
        live = [f for f in contents.frames if read_envelope(f).end_seq > kept * 10]
        assert live == frames[kept : i + 1]
        assert contents.mark == ((0xC0FFEE, kept * 10) if kept else (0, 0))
    assert kept > 0
    spool.acknowledged(0xC0FFEE, 400)  # everything: truncated to its header
    assert path.stat().st_size == HEADER_SIZE
    spool.remove()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(30)
def test_an_adopted_spool_the_listener_never_acknowledges_is_left_for_the_next_worker(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    spool_dir = tmp_path / "spool"
    dead = Sender("host-a", 4_000_003, 1.5, 0xFEED)
    path = _write_spool(spool_dir, _dead_frames(dead, 3, 10))
    nowhere = "ipc://" + str(tmp_path / "no-listener")
    for attempt in range(2):  # the second worker finds the file the first one left
        sender = AckingSender(nowhere, TransportOptions(), spool_dir=str(spool_dir), close_timeout=0.3)
        assert sender.unacked == 3
        sender.close()
        assert path.exists()
        assert capfd.readouterr().err.count(f"{path} of a dead worker: 3 frames were not acknowledged") == 1, attempt
    assert _spool_files(spool_dir) == [path]  # and each worker's own (empty) file is gone


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_worker_that_exits_while_the_listener_is_away_keeps_its_spool_and_the_next_worker_delivers_it(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    out, spool_dir = tmp_path / "out.log", tmp_path / "spool"
    me = Sender(socket.gethostname(), 4_000_004, 1.5, 0xE417)
    frames = _dead_frames(me, 6, 10)
    with mplog.start_listener(file_config(out), ack=True, route_parent=False) as listener:
        stopped = listener.pid
        first = AckingSender(listener.endpoint, TransportOptions(), spool_dir=str(spool_dir), close_timeout=0.5)
        second = None
        try:
            wait_for(lambda: first.send(frames[0]), timeout=10)  # connected
            wait_for(lambda: first.unacked == 0, timeout=10)
            os.kill(stopped, signal.SIGSTOP)
            for frame in frames[1:]:
                assert first.send(frame)
            assert first.send(goodbye_frame(encode_sender(me), 60, 0))
            path = first.spool_path
            first.close()  # gives up after close_timeout: the file stays
            assert path is not None and Path(path).exists()
            assert "kept in" in capfd.readouterr().err
            second = AckingSender(listener.endpoint, TransportOptions(), spool_dir=str(spool_dir), close_timeout=20)
            assert second.unacked == 6  # five frames and the goodbye
            os.kill(stopped, signal.SIGCONT)
            wait_for(lambda: not Path(path).exists(), timeout=20)
        finally:
            _resume(stopped)
            first.close()
            if second is not None:
                second.close()
        stats = listener.stats()
    record = stats["senders"][me.key]
    assert (record["records"], record["next_seq"], record["closed"], record["gaps"]) == (60, 60, True, 0)
    assert sorted(read_lines(out)) == sorted(payload(0, seq) for seq in range(60))
    assert _spool_files(spool_dir) == []


def test_spool_dir_is_a_path_and_needs_acknowledged_delivery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"spool_dir must be a directory path \(str\), got 5"):
        WorkerOptions.from_kwargs(spool_dir=5)
    with pytest.raises(ConfigError, match="spool_dir keeps unacknowledged frames: it needs ack=True"):
        WorkerOptions.from_kwargs(spool_dir=str(tmp_path), ack=False)
    monkeypatch.delenv("MPLOG_ACK", raising=False)  # a plain listener's workers: ack resolves to off
    with pytest.raises(ConfigError, match=r"setup_worker\(spool_dir=...\) needs acknowledged delivery"):
        mplog.setup_worker("ipc:///nonexistent/x.sock", spool_dir=str(tmp_path))
