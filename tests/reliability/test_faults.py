"""Faults survived with exact counts: a killed worker, a full or read-only disk, fork under load, a stalled sink."""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from fault_handlers import slow_sink_config
from helpers import (
    PAYLOAD_RE,
    check_lines,
    file_config,
    log_numbered,
    mount_tmpfs,
    payload,
    read_lines,
    umount,
    wait_for,
)
from ledger import build_ledger

import mplog

pytestmark = [pytest.mark.integration, pytest.mark.serial]

SPAWN = multiprocessing.get_context("spawn")
HERE = str(Path(__file__).resolve().parent)
TESTS = str(Path(__file__).resolve().parent.parent)


@pytest.fixture
def handlers_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the listener process (and spawned workers) import tests/reliability/fault_handlers.py."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([HERE, TESTS, os.environ.get("PYTHONPATH", "")]))


def _produce(producer: int, count: int, pace: float) -> None:
    mplog.setup_worker()
    log = logging.getLogger("prod")
    for seq in range(count):
        log.info("%s", payload(producer, seq))
        if pace and seq % 200 == 199:
            time.sleep(pace)  # not synchronisation: a steady stream, still running when the test kills one


# ---------------------------------------------------------------- a worker killed mid-stream


@pytest.mark.timeout(90)
def test_a_worker_killed_mid_stream_leaves_a_gap_free_prefix_and_the_others_balance(tmp_path):
    out = tmp_path / "out.log"
    per = 20_000
    with mplog.start_listener(file_config(out), route_parent=False) as listener:
        procs = [SPAWN.Process(target=_produce, args=(i, per, 0.005)) for i in range(3)]
        for p in procs:
            p.start()
        # Kill producer 0 once it is well into its stream (between 10% and the end).
        wait_for(lambda: sum(1 for line in read_lines(out) if line.startswith("P0:")) > per // 10, interval=0.01)
        os.kill(procs[0].pid, signal.SIGKILL)
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [-signal.SIGKILL, 0, 0]
        stats = wait_for(lambda: (s := listener.stats()) and s["received"] >= 2 * per and s)
        assert listener.running and stats["restarts"] == 0  # the listener never noticed anything worse
    # The final stats, after the stop drained what was in flight: they and the file hold the same frames.
    stats = listener.stats()
    assert stats["restarts"] == 0
    lines = read_lines(out)
    pids = {i: p.pid for i, p in enumerate(procs)}
    ledger = build_ledger(lines, {1: per, 2: per}, stats, pids)
    ledger.assert_balanced()  # the survivors: every record, exactly once
    # The killed worker: what reached the listener is every record up to its last completed
    # flush, with no hole; what was still in its buffer died with it (nobody can count that).
    dead = sorted(int(m["seq"]) for line in lines if (m := PAYLOAD_RE.search(line)) and m["prod"] == "0")
    assert dead == list(range(len(dead)))
    assert per // 10 < len(dead) < per
    dead_senders = [s for s in stats["senders"].values() if s["pid"] == procs[0].pid]
    assert len(dead_senders) == 1
    assert dead_senders[0]["gaps"] == 0 and dead_senders[0]["records"] == len(dead)
    assert not dead_senders[0]["closed"]
    assert stats["malformed_total"] == 0


# ---------------------------------------------------------------- a full or read-only disk


def _two_files(small: Path, big: Path, **small_options: object) -> dict[str, object]:
    config = file_config(big)
    config["handlers"]["small"] = {  # type: ignore[index]
        "class": "logging.FileHandler",
        "filename": str(small),
        "formatter": "f",
        "encoding": "utf-8",
        **small_options,
    }
    config["root"]["handlers"] = ["file", "small"]  # type: ignore[index]
    return config


def _settled_errors(listener: mplog.Listener) -> dict[str, int]:
    """Handler errors once dispatch has caught up: ``received`` counts a frame before its
    records reach the handlers, so errors read right after it may still be growing."""
    seen: list[dict[str, int]] = []

    def stable() -> bool:
        seen.append(dict(listener.stats()["handler_errors"]))
        return len(seen) >= 2 and seen[-1] == seen[-2]

    wait_for(stable, timeout=10, interval=0.2)
    return seen[-1]


@pytest.mark.timeout(60)
def test_a_full_filesystem_is_counted_per_handler_the_other_handler_gets_everything_and_writing_resumes(tmp_path):
    mnt = tmp_path / "small"
    mount_tmpfs(mnt, "1m")
    try:
        small, big = mnt / "out.log", tmp_path / "all.log"
        log = logging.getLogger("disk")
        with mplog.start_listener(_two_files(small, big)) as listener:
            for seq in range(20_000):  # ~ 2 MB: twice what the tmpfs holds
                log.info("%s", payload(0, seq, 80))
            wait_for(lambda: listener.stats()["received"] == 20_000)
            errors = _settled_errors(listener)
            assert errors.get("small", 0) > 0 and "file" not in errors
            assert small.stat().st_size <= 1024 * 1024
            # Fixed: the filesystem grows. New records reach the file again.
            subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
            for seq in range(20_000, 21_000):
                log.info("%s", payload(0, seq, 80))
            wait_for(lambda: listener.stats()["received"] == 21_000)
            errors_after = _settled_errors(listener).get("small", 0)
        lines = read_lines(big)
        check_lines(lines, {0: 21_000}).assert_exact()  # the other handler: every record
        recovered = check_lines(read_lines(small), {0: 21_000})
        assert recovered.truncated <= 1  # at most the one line cut when the disk filled, and it is detectable
        # Every record logged after the fix is in the file once (the first may follow the cut line
        # on the same physical line, so look for the payloads themselves).
        text = small.read_text(encoding="utf-8")
        assert all(text.count(payload(0, seq, 80) + "\n") == 1 for seq in range(20_000, 21_000))
        assert errors_after == errors["small"]  # no new errors once there was room
    finally:
        umount(mnt)


@pytest.mark.timeout(60)
def test_a_read_only_filesystem_is_counted_and_writing_resumes_when_it_is_writable_again(tmp_path):
    mnt = tmp_path / "ro"
    mount_tmpfs(mnt, "8m")
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        small, big = mnt / "out.log", tmp_path / "all.log"
        log = logging.getLogger("disk")
        # delay=True: the file is opened at the first record, so the failure is an EROFS at run time.
        with mplog.start_listener(_two_files(small, big, delay=True)) as listener:
            for seq in range(100):
                log.info("%s", payload(0, seq))
            wait_for(lambda: listener.stats()["received"] == 100)
            assert _settled_errors(listener).get("small") == 100  # one per record, exactly
            subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=True)
            for seq in range(100, 200):
                log.info("%s", payload(0, seq))
            wait_for(lambda: listener.stats()["received"] == 200)
            stats = listener.stats()
        assert stats["handler_errors"]["small"] == 100
        check_lines(read_lines(big), {0: 200}).assert_exact()
        assert sorted(check_lines(read_lines(small), {}).seen) == [(0, s) for s in range(100, 200)]
    finally:
        umount(mnt)


def _fds_to(pid: int, path: Path) -> int:
    """How many of process ``pid``'s descriptors are open on the file ``path`` names (``' (deleted)'`` included)."""
    found = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            found += os.readlink(f"/proc/{pid}/fd/{fd}").removesuffix(" (deleted)") == str(path)
    return found


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "small_options",
    [{}, {"class": "logging.handlers.RotatingFileHandler", "maxBytes": 100_000_000}],
    ids=["FileHandler", "RotatingFileHandler"],
)
def test_a_sighup_while_the_disk_is_full_does_not_stop_later_sighups_from_reopening_files(tmp_path, small_options):
    """Found by an outsider: closing a stream whose buffer could not be flushed raised ENOSPC
    in the reopen thread, which died; every later SIGHUP was ignored and the listener kept
    writing into the file logrotate had moved away (and then deleted: 37,524 records lost
    without a count). Before the fix the last rotation below was never reopened."""
    mnt = tmp_path / "small"
    mount_tmpfs(mnt, "1m")
    try:
        small, big = mnt / "out.log", tmp_path / "all.log"
        log = logging.getLogger("disk")
        with mplog.start_listener(_two_files(small, big, **small_options)) as listener:
            for seq in range(20_000):  # ~ 2 MB: twice what the tmpfs holds
                log.info("%s", payload(0, seq, 80))
            wait_for(lambda: listener.stats()["received"] == 20_000)
            assert _settled_errors(listener).get("small", 0) > 0
            os.rename(small, mnt / "out.log.1")  # logrotate while the disk is full, then its postrotate HUP
            os.kill(listener.pid, signal.SIGHUP)
            wait_for(small.exists, timeout=10)  # reopened, though the old stream could not be flushed
            subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
            for seq in range(20_000, 21_000):
                log.info("%s", payload(0, seq, 80))
            # Written, not only received (a frame counts as received before its records are written).
            wait_for(lambda: payload(0, 20_999, 80) in small.read_text(encoding="utf-8"))
            os.rename(small, mnt / "out.log.2")  # the next rotation, with room again
            os.kill(listener.pid, signal.SIGHUP)
            wait_for(lambda: small.exists() and _fds_to(listener.pid, mnt / "out.log.2") == 0, timeout=10)
            for seq in range(21_000, 22_000):
                log.info("%s", payload(0, seq, 80))
            wait_for(lambda: listener.stats()["received"] == 22_000)
            _settled_errors(listener)
            assert _fds_to(listener.pid, small) == 1
        check_lines(read_lines(big), {0: 22_000}).assert_exact()
        assert sorted(check_lines(read_lines(small), {}).seen) == [(0, s) for s in range(21_000, 22_000)]
        assert sorted(check_lines(read_lines(mnt / "out.log.2"), {}).seen) == [(0, s) for s in range(20_000, 21_000)]
    finally:
        umount(mnt)


@pytest.mark.timeout(30)
def test_a_handler_writing_to_dev_full_is_counted_and_the_others_get_everything(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    big = tmp_path / "all.log"
    log = logging.getLogger("disk")
    with mplog.start_listener(_two_files(Path("/dev/full"), big)) as listener:
        for seq in range(1000):
            log.info("%s", payload(0, seq))
        wait_for(lambda: listener.stats()["received"] == 1000)
        stats = listener.stats()
    assert stats["handler_errors"].get("small", 0) > 0
    assert "file" not in stats["handler_errors"]
    check_lines(read_lines(big), {0: 1000}).assert_exact()


_FILL_WORKERS, _BEFORE_FREED, _AFTER_FREED = 4, 2_500, 1_000
_LINE = re.compile(r"P\d+:\d{8}:\d{5}:X*")
_STARTS = re.compile(r"P\d+:\d{8}:")  # where a record's line begins


def _fill_then_wait(producer: int, freed: Any) -> None:
    """Log enough to fill the tmpfs, wait until the test has made room, log the rest."""
    mplog.setup_worker()
    log = logging.getLogger("fill")
    for seq in range(_BEFORE_FREED):
        log.info("%s", payload(producer, seq, 40))
    freed.wait(60)
    for seq in range(_BEFORE_FREED, _BEFORE_FREED + _AFTER_FREED):
        log.info("%s", payload(producer, seq, 40))


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "kind",
    [
        {"class": "logging.FileHandler"},  # the listener's fast path: a frame's lines in one write
        {"class": "logging.handlers.RotatingFileHandler", "maxBytes": 10_000_000},  # record by record
        {"class": "logging.handlers.TimedRotatingFileHandler", "when": "H"},
        {"class": "logging.handlers.WatchedFileHandler"},
        {"class": "mplog.handlers.RotatingFileHandler", "maxBytes": 10_000_000},
    ],
    ids=["file", "rotating", "timed", "watched", "mplog-rotating"],
)
def test_a_disk_that_fills_mid_frame_counts_exactly_the_records_not_whole_in_the_file(tmp_path, kind, capfd):
    # An outsider's runs on a full tmpfs: handler_errors exceeded the records missing from the
    # file by 1 to 594 (the kernel took part of a failed write's bytes, and bytes left in the
    # stream's buffer were written when room came back), and the first record after the cut
    # was glued to the cut line, and stderr named neither the file nor a count. Now: whole lines
    # + errors == logged, no record twice, none glued; stderr says when it fails and when it writes again.
    mnt = tmp_path / "full"
    mount_tmpfs(mnt, "1m")
    try:
        (mnt / "filler").write_bytes(b"\0" * 600_000)
        out = mnt / "out.log"
        logged = _FILL_WORKERS * (_BEFORE_FREED + _AFTER_FREED)
        freed = SPAWN.Event()
        with mplog.start_listener(file_config(out, **kind), route_parent=False) as listener:
            procs = [SPAWN.Process(target=_fill_then_wait, args=(i, freed)) for i in range(_FILL_WORKERS)]
            for p in procs:
                p.start()
            try:
                wait_for(lambda: listener.stats()["received"] == _FILL_WORKERS * _BEFORE_FREED, timeout=60)
                errors_while_full = _settled_errors(listener).get("file", 0)
                (mnt / "filler").unlink()
                freed.set()
                for p in procs:
                    p.join(60)
            finally:
                for p in procs:
                    if p.is_alive():
                        p.kill()
                        p.join(5)
            assert [p.exitcode for p in procs] == [0] * _FILL_WORKERS
            wait_for(lambda: listener.stats()["received"] == logged, timeout=30)
            errors = _settled_errors(listener).get("file", 0)
        lines = out.read_text(encoding="utf-8").splitlines()
        whole = check_lines([line for line in lines if _LINE.fullmatch(line)], {})
        assert 0 < errors_while_full == errors  # the disk was full, and nothing failed once there was room
        assert whole.duplicates == 0
        assert len(whole.seen) + errors == logged  # each record written whole, or counted: never both
        assert [line for line in lines if len(_STARTS.findall(line)) > 1] == []  # no record glued to a cut line
        assert len([line for line in lines if not _LINE.fullmatch(line)]) <= 1  # at most the line the disk cut
        after = {(p, s) for p in range(_FILL_WORKERS) for s in range(_BEFORE_FREED, _BEFORE_FREED + _AFTER_FREED)}
        assert after <= set(whole.seen)  # every record logged once there was room is in the file
        err = capfd.readouterr().err
        assert err.count(f"mplog: handler 'file' failed writing {out}: OSError: [Errno 28] ") == 1, err
        assert err.count(f"mplog: handler 'file' writes {out} again after ") == 1, err
        assert f"; {errors} records not written meanwhile (counted in handler_errors)" in err, err
    finally:
        umount(mnt)


# ---------------------------------------------------------------- a file that ends inside a line

_FRAGMENT = "P9:00000002:00040:XXXXXXXXXX"  # a record a full disk (or a kill) cut short


def _log_numbered_in_a_worker(count: int) -> None:
    mplog.setup_worker()
    log_numbered(0, count, 20)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("delay", [False, True], ids=["opened-at-start", "delay"])
@pytest.mark.parametrize("state", [False, True], ids=["no-state-dir", "state-dir"])
def test_a_listener_started_on_a_file_that_ends_inside_a_line_starts_its_first_record_on_a_line_of_its_own(
    tmp_path, delay, state
):
    # An outsider's runs: a listener (re)started on a log a full disk had cut inside a line glued
    # its first record behind the fragment (neither a whole line nor counted in handler_errors).
    out = tmp_path / "out.log"
    out.write_text("P9:00000001:00010:XXXXXXXXXX\n" + _FRAGMENT, encoding="utf-8")
    config = file_config(out, delay=delay)
    if state:
        config["mplog"] = {"state_dir": str(tmp_path / "state")}
    with mplog.start_listener(config, route_parent=False) as listener:
        p = SPAWN.Process(target=_log_numbered_in_a_worker, args=(50,))
        p.start()
        p.join(30)
        assert p.exitcode == 0
        wait_for(lambda: listener.stats()["received"] == 50, timeout=30)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[:2] == ["P9:00000001:00010:XXXXXXXXXX", _FRAGMENT]  # the fragment stays a line of its own
    assert lines[2:] == [payload(0, seq, 20) for seq in range(50)]  # every record whole, in order, nothing between


def _reopened(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open at its end (a reopen for appending seeks there), as /proc says."""
    size = path.stat().st_size
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
                return f"pos:\t{size}\n" in info
    return False


@pytest.mark.timeout(60)
def test_a_sighup_reopen_of_a_file_another_writer_left_inside_a_line_starts_the_next_record_on_a_line_of_its_own(
    tmp_path,
):
    out = tmp_path / "out.log"
    with mplog.start_listener(file_config(out), route_parent=False) as listener:
        p = SPAWN.Process(target=_log_numbered_in_a_worker, args=(10,))
        p.start()
        p.join(30)
        wait_for(lambda: listener.stats()["received"] == 10, timeout=30)
        wait_for(lambda: len(read_lines(out)) == 10, timeout=10)
        with out.open("a", encoding="utf-8") as f:  # another writer, cut short
            f.write(_FRAGMENT)
        os.kill(listener.pid, signal.SIGHUP)
        wait_for(lambda: _reopened(listener.pid, out), timeout=10)
        p = SPAWN.Process(target=_log_numbered_in_a_worker, args=(10,))
        p.start()
        p.join(30)
        assert p.exitcode == 0
        wait_for(lambda: listener.stats()["received"] == 20, timeout=30)
    lines = out.read_text(encoding="utf-8").splitlines()
    expected = [payload(0, seq, 20) for seq in range(10)]
    assert lines == [*expected, _FRAGMENT, *expected]


# ---------------------------------------------------------------- fork while another thread logs (B15)

FORKER = textwrap.dedent(
    """
    import json, logging, os, signal, sys, threading, time
    import mplog
    from helpers import payload
    mplog.setup_worker()
    log = logging.getLogger("forker")
    stop = threading.Event()
    background = [0]
    def chatter():  # bursts, so that forks land inside its logging calls, paced to keep the test short
        while not stop.is_set():
            for _ in range(50):
                log.info("%s", payload(0, background[0]))
                background[0] += 1
            time.sleep(0.001)
    thread = threading.Thread(target=chatter)
    thread.start()
    hung, codes = 0, []
    for wave in range(25):  # 8 forks at a time, each while the thread is logging
        children = {}
        for i in range(wave * 8, wave * 8 + 8):
            pid = os.fork()
            if pid == 0:
                logging.getLogger("child").info("%s", payload(1, i))
                sys.exit(0)  # exit hooks deliver the child's record
            children[pid] = time.monotonic() + 7
        while children:
            for pid, deadline in list(children.items()):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    codes.append(os.waitstatus_to_exitcode(status))
                    del children[pid]
                elif time.monotonic() > deadline:
                    hung += 1
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    del children[pid]
            time.sleep(0.001)
    stop.set()
    thread.join()
    print(json.dumps({"hung": hung, "codes": codes, "background": background[0], "pid": os.getpid()}), flush=True)
    """
)


@pytest.mark.timeout(120)
def test_forking_200_times_while_another_thread_logs_never_hangs_a_child_and_every_record_arrives(tmp_path):
    out = tmp_path / "out.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]))
    with mplog.start_listener(file_config(out), route_parent=False) as listener:
        env["MPLOG_ENDPOINT"] = listener.endpoint
        run = subprocess.run(
            [sys.executable, "-W", "ignore::DeprecationWarning", "-c", FORKER],
            capture_output=True,
            env=env,
            text=True,
            timeout=100,
            check=False,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        report = json.loads(run.stdout.strip().splitlines()[-1])
        stats = wait_for(lambda: (s := listener.stats()) and all(x["closed"] for x in s["senders"].values()) and s)
    assert report["hung"] == 0
    assert report["codes"] == [0] * 200
    check = check_lines(read_lines(out), {0: report["background"], 1: 200})
    check.assert_exact()  # the parent's thread and every child: each record exactly once
    assert len(stats["senders"]) == 201  # a fresh sender identity per child
    assert stats["gaps"] == stats["dropped"] == 0


# ---------------------------------------------------------------- a stalled sink (A2, A3)

PRODUCER = textwrap.dedent(
    """
    import json, logging, os, sys, time
    import psutil
    import mplog
    from helpers import payload
    policy, count, flag_done = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    handler = mplog.setup_worker(policy=policy, max_buffer_bytes=64 * 1024, block_timeout=0.2, sndhwm=2)
    log = logging.getLogger("fast")
    rss0 = psutil.Process().memory_info().rss
    worst, latencies, peak = 0.0, [], 0
    for seq in range(count):
        t = time.perf_counter()
        log.info("%s", payload(0, seq, 100))
        latencies.append(time.perf_counter() - t)
        if seq % 500 == 0:
            peak = max(peak, psutil.Process().memory_info().rss - rss0)
    latencies.sort()
    dropped = handler.counters["dropped"]
    open(flag_done, "w").close()  # the test now unstalls the sink
    print(json.dumps({"max": latencies[-1], "p99": latencies[int(len(latencies) * 0.99)], "dropped": dropped,
                      "rss_growth": peak, "pid": os.getpid()}), flush=True)
    # Exit only once the listener has every record sent: frames still queued in ZeroMQ when a
    # worker exits are discarded after LINGER without being counted (see docs/reliability.md).
    # The test says so on stdin.
    sys.stdin.readline()
    """
)


def _drained(listener: mplog.Listener, count: int) -> dict[str, object] | None:
    stats = listener.stats()
    return stats if stats["received"] + stats["dropped"] >= count else None


@pytest.mark.timeout(120)
@pytest.mark.parametrize("policy", ["drop_newest", "block"])
def test_a_sink_taking_50_ms_per_record_bounds_memory_and_blocking_and_every_drop_is_counted(
    tmp_path, handlers_importable, policy
):
    out, flag, done = tmp_path / "out.log", tmp_path / "stalled", tmp_path / "done"
    flag.touch()
    config = {
        "version": 1,
        "formatters": {"f": {"format": "%(message)s"}},
        "handlers": {
            "slow": {"()": "fault_handlers.SlowWhileFlagged", "filename": str(out), "flag": str(flag), "formatter": "f"}
        },
        "root": {"level": "INFO", "handlers": ["slow"]},
        "mplog": {"socket": {"rcvhwm": 2}},
    }
    count = 20_000 if policy == "drop_newest" else 5_000
    with mplog.start_listener(config, route_parent=False) as listener:
        listener_proc = psutil.Process(listener.pid)
        rss0 = listener_proc.memory_info().rss
        env = dict(os.environ, MPLOG_ENDPOINT=listener.endpoint)
        producer = subprocess.Popen(
            [sys.executable, "-c", PRODUCER, policy, str(count), str(done), str(flag)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        try:
            peak = 0
            while not done.exists() and producer.poll() is None:
                peak = max(peak, listener_proc.memory_info().rss - rss0)
                time.sleep(0.05)  # not synchronisation: how often the listener's memory is sampled
            flag.unlink()  # the sink recovers; everything queued drains
            assert producer.stdout is not None
            readable, _, _ = select.select([producer.stdout], [], [], 60)
            assert readable, "the producer did not report within 60 s"
            report = json.loads(producer.stdout.readline())
            sent = count - report["dropped"]
            wait_for(lambda: listener.stats()["received"] >= sent, timeout=60, what=f"the {sent} records sent")
            producer.communicate("exit\n", timeout=60)
        finally:
            if producer.poll() is None:
                producer.kill()
                producer.wait()
        # Drained: every record is written or counted as dropped (the goodbye frame is best-effort
        # under a full pipe, so completion is read from the counts, not from it).
        stats = wait_for(lambda: _drained(listener, count), timeout=30)
    ledger = build_ledger(read_lines(out), {0: count}, stats, {0: report["pid"]})
    ledger.assert_balanced()  # written + dropped == logged, exactly
    entry = ledger.entries[0]
    assert entry.dropped == report["dropped"] > 0  # the stall made the policy drop, and the listener knows how many
    assert peak < 20 * 2**20  # the listener's memory stayed bounded while its sink stalled
    assert report["rss_growth"] < 20 * 2**20  # so did the worker's (max_buffer_bytes is 64 KiB)
    if policy == "block":
        assert report["max"] < 0.2 + 0.3  # a logging call waits at most block_timeout (+ scheduling)
    else:
        assert report["max"] < 0.25 and report["p99"] < 0.005  # the app never waits on the sink


# ---------------------------------------------------------------- a worker exits while the listener is behind


def _produce_and_exit(producer: int, count: int) -> None:
    mplog.setup_worker(batch_records=1)  # a frame per record: many frames in flight at exit
    log = logging.getLogger("prod")
    for seq in range(count):
        log.info("%s", payload(producer, seq))


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("start_method", "rcvhwm"), [("fork", 2), ("spawn", 2), ("forkserver", 2), ("fork", 16), ("spawn", 1000)]
)
def test_a_worker_that_exits_while_the_listener_is_behind_on_ipc_delivers_its_last_records_and_goodbye(
    tmp_path, handlers_importable, start_method, rcvhwm
):
    # The listener's queue for the worker is full when the worker exits, with more of its
    # frames in the connection behind it. libzmq used to drop those, and the goodbye with
    # them, as soon as the worker's socket closed: 2,796 and 2,820 of 3,000 records written
    # with rcvhwm 2 and 16, the sender shown as ended without a goodbye (docs/reliability.md,
    # "A worker's last records over ipc").
    out, flag = tmp_path / "out.log", tmp_path / "slow"
    config = slow_sink_config(out, flag, rcvhwm)
    count = 3000
    with mplog.start_listener(config, route_parent=False) as listener:
        worker = multiprocessing.get_context(start_method).Process(target=_produce_and_exit, args=(0, count))
        worker.start()
        worker.join(60)
        assert worker.exitcode == 0
        stats = wait_for(lambda: (s := listener.stats()) and s["received"] >= count and s, timeout=30)
        stats = wait_for(lambda: (s := listener.stats()) and all(x["closed"] for x in s["senders"].values()) and s)
    ledger = build_ledger(read_lines(out), {0: count}, stats, {0: worker.pid})
    ledger.assert_balanced()  # every record written once, and the goodbye arrived (no unclosed stream)
    assert stats["gaps"] == stats["dropped"] == 0


def _produce_big_frames_and_exit(ack: bool, count: int) -> None:
    # Frames of 300 KB into a listener that takes 1 s per frame: the worker's outbox drains a
    # frame a second at exit (progress within close_timeout, 2 s, so its flush outlives it),
    # and when the last frame has gone the pipe to the listener is full for about a second more.
    mplog.setup_worker(batch_records=10, sndhwm=1, close_timeout=2.0, linger=20.0, ack=ack or None)
    log_numbered(0, count, 30_000)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("ack", [False, True], ids=["plain", "ack"])
def test_a_goodbye_behind_a_slow_listener_arrives(tmp_path, handlers_importable, ack):
    # The goodbye used to get what was left of close_timeout, at least 0.2 s, and the flush
    # before it had outlived close_timeout: behind a listener that frees room once a second it
    # was refused, so every record was written and the sender still showed as ended without
    # a goodbye (8 of 8 runs, plain and ack; the ack suite's restart test saw it under load).
    out, flag = tmp_path / "out.log", tmp_path / "slow"
    config = slow_sink_config(out, flag, rcvhwm=1, delay=0.1)
    count = 80
    with mplog.start_listener(config, route_parent=False, ack=ack) as listener:
        worker = multiprocessing.get_context("spawn").Process(target=_produce_big_frames_and_exit, args=(ack, count))
        worker.start()
        worker.join(60)
        assert worker.exitcode == 0
        stats = listener.stop()
    ledger = build_ledger(read_lines(out), {0: count}, stats, {0: worker.pid})
    ledger.assert_balanced()  # every record written once, and the goodbye arrived (no unclosed stream)
    assert ledger.written == count
    assert stats["gaps"] == stats["dropped"] == 0


@pytest.mark.timeout(90)
def test_records_a_stop_had_no_time_to_write_are_counted_and_their_senders_closed(tmp_path, handlers_importable, capfd):
    # Two workers hand 10,000 records to a listener that writes one every 0.5 ms and exit at
    # once; stop(timeout=2) gives the drain 1 s. What the drain could not write used to be
    # dropped with no count, and the senders shown as ended without a goodbye (an outside
    # user's run: 9,802 of 40,000 records, both senders "process gone").
    out, flag = tmp_path / "out.log", tmp_path / "slow"
    config = slow_sink_config(out, flag, delay=0.0005)
    per = 5000
    listener = mplog.start_listener(config, route_parent=False)
    try:
        workers = [multiprocessing.get_context("spawn").Process(target=log_numbered, args=(p, per)) for p in (0, 1)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert [worker.exitcode for worker in workers] == [0, 0]
        stats = listener.stop(timeout=2.0)
    finally:
        listener.stop()
    lines = read_lines(out)
    ledger = build_ledger(lines, {0: per, 1: per}, stats, {p: w.pid for p, w in enumerate(workers)})
    ledger.assert_balanced()  # written + rejected == logged per worker, nothing twice, every sender closed
    unwritten = stats["unwritten_at_stop"]
    assert unwritten > 0 and len(lines) + unwritten == 2 * per  # the drain wrote some, the rest is counted
    assert stats["unclosed"] == 0 and all(s["closed"] for s in stats["senders"].values())
    assert stats["malformed_total"] == stats["gaps"] == 0
    assert mplog.ledger(stats, 2 * per) == 0
    assert f"unwritten at stop {unwritten}" in str(stats)
    assert f"{unwritten} records of 2 senders that had reached the listener were not written" in capfd.readouterr().err


@pytest.mark.timeout(90)
def test_workers_that_exited_while_the_listener_catches_up_are_not_flagged_as_possible_loss(
    tmp_path, handlers_importable
):
    # An outsider: 1 s after every worker had exited cleanly, `mplog status` said "2 ended without
    # goodbye (possible loss)" while the listener was still writing their queued frames (their
    # goodbyes among them), and a metrics alert on mplog_senders_unclosed would have fired.
    # A sender whose process is gone is flagged only once nothing has come from it for
    # GONE_QUIET seconds (or at stop, once the drain is over).
    out, flag = tmp_path / "out.log", tmp_path / "slow"
    config = slow_sink_config(out, flag, delay=0.0005)
    per = 4000
    with mplog.start_listener(config, route_parent=False) as listener:
        workers = [multiprocessing.get_context("fork").Process(target=log_numbered, args=(p, per)) for p in range(3)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert [worker.exitcode for worker in workers] == [0, 0, 0]
        flagged, behind = [], []
        while (stats := listener.stats())["received"] < 3 * per or not all(
            s["closed"] for s in stats["senders"].values()
        ):
            flagged.append(stats["unclosed"])
            behind.append(3 * per - len(read_lines(out)))
            time.sleep(0.2)
        assert max(behind) > 2000  # the listener was seconds behind workers that had exited
        assert max(flagged) == 0, f"flagged while catching up: {flagged}"
        stats = listener.stats()
    check_lines(read_lines(out), dict.fromkeys(range(3), per)).assert_exact()
    assert stats["unclosed"] == 0 and len(stats["senders"]) == 3


@pytest.mark.timeout(60)
def test_a_stop_that_must_kill_a_listener_held_by_a_handler_says_so_and_flags_its_open_senders(
    tmp_path, handlers_importable, capfd
):
    # A handler that never returns from emit (the stdlib HTTPHandler has no timeout; a peer that
    # accepts and never answers) holds the listener past stop(timeout). stop() kills it; it used
    # to return the counts of the listener's last checkpoint, or none, with nothing said (an
    # outsider: "received 6 records", 294 of 300 gone uncounted).
    out, flag = tmp_path / "out.log", tmp_path / "slow"
    config = slow_sink_config(out, flag, delay=3600.0)
    per = 300
    listener = mplog.start_listener(config, route_parent=False)
    try:
        worker = multiprocessing.get_context("spawn").Process(target=log_numbered, args=(0, per))
        worker.start()
        worker.join(60)
        assert worker.exitcode == 0
        wait_for(lambda: listener.stats()["received"] > 0, timeout=20)
        began = time.monotonic()
        stats = listener.stop(timeout=2.0)
        took = time.monotonic() - began
    finally:
        listener.stop()
    assert took < 6.0  # the timeout, the last counts asked for (1 s at most), the kill
    assert stats.killed_at_stop and stats["killed_at_stop"] is True
    assert stats["received"] > 0  # the counts of that moment, not of a checkpoint or nothing
    (sender,) = stats["senders"].values()
    # flagged already if its process was seen gone, else by the stop
    assert not sender["closed"] and sender["unclosed"] in ("process gone", "listener killed at stop")
    assert stats["unclosed"] == 1
    balance = mplog.ledger(stats, per)
    assert balance.possible_loss  # what it still held is lost uncounted: flagged, never a clean zero
    assert "killed at stop" in str(stats) and "1 ended without goodbye (possible loss)" in str(stats)
    err = capfd.readouterr().err
    assert "mplog: the listener did not stop within 2 s (a handler that blocks in emit or close?) and was killed" in err


@pytest.mark.timeout(60)
def test_mplog_listen_held_by_a_handler_gives_up_on_a_second_sigterm_with_the_counts_of_the_moment(
    tmp_path, handlers_importable
):
    # SIGTERM waits for the drain and the handlers' close; a handler that never returns from
    # emit held `mplog listen` forever (an outsider's was still running 60 s after SIGTERM).
    # A second signal gives up at once; on its own it gives up after the drain + 15 s.
    out, flag = tmp_path / "out.log", tmp_path / "slow"
    config_path = tmp_path / "collector.json"
    config_path.write_text(json.dumps(slow_sink_config(out, flag, delay=3600.0)))
    endpoint = f"ipc://{tmp_path}/collector.sock"
    collector = subprocess.Popen(
        [sys.executable, "-m", "mplog", "listen", "--config", str(config_path), "--bind", endpoint],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "listening on" in collector.stderr.readline()
        code = (
            f"import mplog, logging; mplog.setup_worker({endpoint!r}); logging.getLogger('x').warning('P0:00000000:')"
        )
        subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
        collector.send_signal(signal.SIGTERM)
        time.sleep(1.0)  # the scenario: the first signal's stop is under way, held by the handler
        assert collector.poll() is None
        collector.send_signal(signal.SIGTERM)
        assert collector.wait(20) == 1
        err = collector.stderr.read().splitlines()
    finally:
        if collector.poll() is None:
            collector.kill()
            collector.wait()
        collector.stderr.close()
    assert err[-1].startswith(
        "mplog: gave up stopping (a second signal came: a handler that blocks in emit or close?); exiting without "
        "closing the handlers; received 1 records from 1 senders (1 not closed: possible loss)"
    ), err
    assert err[-1].endswith("what the listener still held is lost uncounted")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["twice in 20 ms", "timeout"])
def test_mplog_listen_takes_one_stop_request_signalled_twice_at_once_as_one(tmp_path, how):
    # GNU timeout sends its signal to its child and then to the child's process group: one stop
    # request arrives twice within microseconds. Before, the second counted as an impatient
    # operator's: "gave up stopping", exit 1, the handlers never closed (1 of 4 runs under timeout).
    out = tmp_path / "out.log"
    config_path = tmp_path / "collector.json"
    config_path.write_text(json.dumps(file_config(out)))
    endpoint = f"ipc://{tmp_path}/collector.sock"
    argv = [sys.executable, "-m", "mplog", "listen", "--config", str(config_path), "--bind", endpoint]
    if how == "timeout":
        if shutil.which("timeout") is None:
            pytest.skip("GNU timeout is not installed")
        argv = ["timeout", "-s", "TERM", "4", *argv]
    collector = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        assert "listening on" in collector.stderr.readline()
        code = "import mplog, logging, sys; mplog.setup_worker(sys.argv[1]); logging.warning('P0:00000000:')"
        subprocess.run([sys.executable, "-c", code, endpoint], check=True, timeout=30)
        if how == "timeout":
            assert collector.wait(30) == 124  # timeout's own status: it sent the signal
        else:
            collector.send_signal(signal.SIGTERM)
            time.sleep(0.02)
            collector.send_signal(signal.SIGTERM)
            assert collector.wait(30) == 0
        err = collector.stderr.read()
    finally:
        if collector.poll() is None:
            collector.kill()
            collector.wait()
        collector.stderr.close()
    assert "gave up stopping" not in err, err
    assert "mplog: stopped; received 1 records from 1 senders" in err, err
    assert read_lines(out) == ["P0:00000000:"]


def _log_steadily(producer: int, seconds: float) -> None:
    """A worker that is still logging, about 1,000 records a second, when its listener stops."""
    log = logging.getLogger("steady")
    deadline, seq = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        log.info("%s", payload(producer, seq))
        seq += 1
        if seq % 50 == 0:
            time.sleep(0.05)


@pytest.mark.timeout(60)
def test_a_sender_still_running_when_its_listener_stops_is_flagged_as_possible_loss(tmp_path):
    # What it hands to its socket after the stop's drain dies with the listener's socket, and
    # no later frame will show the gap. Its process is alive, so nothing flagged it: an
    # outsider saw one frame (10 records) uncounted, unclosed 0, ledger without possible loss.
    out = tmp_path / "out.log"
    listener = mplog.start_listener(file_config(out), route_parent=False)
    worker = multiprocessing.get_context("spawn").Process(target=_log_steadily, args=(0, 30.0))
    try:
        worker.start()
        wait_for(lambda: listener.stats()["received"] > 100, timeout=30)
        stats = listener.stop(timeout=2.0)
    finally:
        listener.stop()
        worker.kill()
        worker.join(10)
    (sender,) = stats["senders"].values()
    assert not sender["closed"] and sender["unclosed"] == "open at stop"
    assert stats["unclosed"] == 1
    assert mplog.ledger(stats, stats["received"]).possible_loss
    assert "1 ended without goodbye (possible loss)" in str(stats)


def _log_then_at_exit(producer: int, count: int) -> None:
    """A spawned child that logs ``count`` records, and one more from an atexit hook of its own."""
    import atexit

    log = logging.getLogger("exit")
    atexit.register(lambda: log.info("%s", payload(producer, count)))
    for seq in range(count):
        log.info("%s", payload(producer, seq))


@pytest.mark.timeout(60)
def test_a_record_logged_from_a_spawned_childs_atexit_hook_is_delivered(tmp_path):
    # multiprocessing's finalizers closed mplog's handler before a spawned child's atexit hooks
    # ran, and a record they logged was dropped without a word (an outsider: 3 of 903 from
    # spawn Processes, 9 of 409 from a spawn Pool with maxtasksperchild, 2 of 402 from a
    # ProcessPoolExecutor). A spawned child now closes in its atexit hook, after the program's.
    out = tmp_path / "out.log"
    per = 100
    with mplog.start_listener(file_config(out), route_parent=False) as listener:
        context = multiprocessing.get_context("spawn")
        workers = [context.Process(target=_log_then_at_exit, args=(p, per)) for p in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
        assert [worker.exitcode for worker in workers] == [0, 0]
        stats = wait_for(lambda: (s := listener.stats()) and len(s["senders"]) == 2 and s["unclosed"] == 0 and s)
    check_lines(read_lines(out), {0: per + 1, 1: per + 1}).assert_exact()
    assert all(s["closed"] for s in stats["senders"].values())


def test_a_record_logged_after_the_handler_closed_at_exit_is_said_on_stderr(tmp_path):
    # An atexit hook registered before mplog is imported runs after mplog's own: its record
    # cannot reach the listener, and is now said once instead of dropped without a word.
    code = textwrap.dedent(
        f"""
        import atexit, logging
        atexit.register(lambda: logging.getLogger("late").warning("from an early hook"))
        import mplog
        mplog.setup_worker({f"ipc://{tmp_path}/nobody.sock"!r}, close_timeout=0.2)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert "mplog: a record was logged after this process's mplog handler closed (pid " in result.stderr


# ---------------------------------------------------------------- outsider: the other delivery modes under threads


def _threads_log_while_main_flushes(threads: int, per: int, ack: bool, report: Any) -> None:
    # linger: the listener is seconds behind when this worker exits; over ipc its tail waits
    # in the connection until read, for linger at most (1 s by default, then lost as documented).
    handler = mplog.setup_worker(ack=ack or None, linger=60.0)
    log = logging.getLogger("prod")
    slowest = [0.0] * threads

    def produce(t: int) -> None:
        for seq in range(per):
            started = time.monotonic()
            log.info("%s", payload(t, seq))
            slowest[t] = max(slowest[t], time.monotonic() - started)

    pool = [threading.Thread(target=produce, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    flushes = 0
    while any(thread.is_alive() for thread in pool):
        handler.flush_within(0.5)  # a program that flushes to make delivery surer
        flushes += 1
    for thread in pool:
        thread.join()
    handler.flush_within(30.0)
    report.put({"counters": handler.counters, "slowest": max(slowest), "flushes": flushes})


@pytest.mark.timeout(180)
@pytest.mark.parametrize("ack", [False, True], ids=["plain", "ack"])
def test_a_flush_within_loop_does_not_make_other_threads_drop_records(tmp_path, handlers_importable, ack):
    # An outsider: the main thread calling flush_within() in a loop held the worker's buffer for
    # its whole wait on a slow (but working) listener; 16 threads' logging calls gave up after
    # block_timeout (2 s) and dropped their record (1-21 of 48,000 per run, counted; 5 of 5
    # runs in ack mode, 2 of 2 without). flush_within() now lends the buffer between slices.
    out, flag = tmp_path / "out.log", tmp_path / "slow"
    config = slow_sink_config(out, flag, delay=0.0003)
    threads, per = 16, 2000
    with mplog.start_listener(config, route_parent=False, ack=ack) as listener:
        report = SPAWN.Queue()
        worker = SPAWN.Process(target=_threads_log_while_main_flushes, args=(threads, per, ack, report))
        worker.start()
        result = report.get(timeout=90)
        worker.join(60)
        assert worker.exitcode == 0
        # The sink is slow: what the worker handed over can take seconds more to write.
        wait_for(lambda: listener.stats()["received"] >= threads * per, timeout=90)
        stats = listener.stop(timeout=60)
    assert result["counters"]["dropped"] == 0 and result["counters"]["sent"] == threads * per, result
    assert result["slowest"] < 1.0, result  # no logging call waited out block_timeout
    assert result["flushes"] > 1, result
    check_lines(read_lines(out), dict.fromkeys(range(threads), per)).assert_exact()
    assert stats["dropped"] == stats["gaps"] == 0


def _log_and_exit_behind_a_slow_listener(count: int) -> None:
    mplog.setup_worker(ack=True)
    log_numbered(0, count)


@pytest.mark.timeout(120)
def test_a_worker_behind_a_slow_acknowledging_listener_waits_while_it_acknowledges(tmp_path, handlers_importable):
    # An outsider: at exit an ack-mode worker waited for acknowledgements until a fixed deadline
    # (max(close_timeout, 10 s, 5 x ack_timeout)) and gave up, though the listener was still
    # acknowledging; the listener's stop then left its backlog unwritten and counted nothing
    # (1,498 and 1,852 records lost; elsewhere a false "never acknowledged" line). The wait now
    # ends only after that long without an acknowledgement.
    out, flag = tmp_path / "out.log", tmp_path / "slow"
    config = slow_sink_config(out, flag, delay=0.0005)
    count = 26_000  # about 13 s of the listener's work, past the fixed 10 s
    with mplog.start_listener(config, route_parent=False, ack=True) as listener:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, TESTS, os.environ.get("PYTHONPATH", "")]))
        code = (
            f"import sys; sys.path[:0] = {[HERE, TESTS]!r}\n"
            f"import test_faults\ntest_faults._log_and_exit_behind_a_slow_listener({count})"
        )
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        _, err = proc.communicate(timeout=90)
        took = time.monotonic() - started
        stderr = err.decode(errors="replace")
        assert proc.returncode == 0, stderr[-3000:]
        stats = listener.stop()
    assert "never acknowledged" not in stderr, (took, stderr[-2000:])
    assert took > 10.0, took  # the scenario holds: the backlog outlasted the old fixed wait
    ledger = build_ledger(read_lines(out), {0: count}, stats, {0: proc.pid})
    ledger.assert_balanced()
    assert ledger.written == count
