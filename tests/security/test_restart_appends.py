"""A restart never truncates what was written: file handlers configured with mode 'w' append after a restart.

The first start may truncate (that is what mode 'w' asks for); a supervised restart and
``mplog listen`` started again on its ``mplog.state_dir`` continue the earlier listener's
stats, so they must also continue its files (mplog.listener.continuation).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import random
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
from helpers import PAYLOAD_RE, check_lines, file_config, payload, read_lines, wait_for
from ledger import build_ledger
from lifecycle_helpers import (
    HERE,
    PHASED_WORKER,
    TESTS,
    cli_env,
    listen_argv,
    log_range,
    release,
    running,
    short_dir,
    wait_listening,
    write_config,
)

import mplog
from mplog.listener.supervisor import Backoff, load_checkpoint, stats_path
from mplog.wire import FLAG_FINAL, Sender, build_frame, encode_record, encode_sender

pytestmark = [pytest.mark.integration, pytest.mark.serial]

SPAWN = multiprocessing.get_context("spawn")
WORKERS, PER, FIRST = 2, 20_000, 10_000
LINE = len(payload(0, 0)) + 1  # bytes per output line
RELIABILITY = str(Path(__file__).resolve().parents[1] / "reliability")  # fault_handlers


def _phased(producer: int, first: int, total: int, go: Any) -> None:
    """Log records [0, first), wait for ``go``, then log [first, total)."""
    mplog.setup_worker()
    log_range(producer, 0, first)
    go.wait(60)
    log_range(producer, first, total)


def _produce(producer: int, count: int) -> None:
    mplog.setup_worker()
    log_range(producer, 0, count)


def _checkpointed(state: Path, received: int) -> bool:
    """The listener's stats checkpoint has caught up with ``received`` records."""
    return (load_checkpoint(stats_path(str(state))) or {}).get("received") == received


def _payload_lines(path: Path) -> list[str]:
    return [line for line in read_lines(path) if PAYLOAD_RE.search(line)]


def _config(out: Path, state: Path, **handler: Any) -> dict[str, Any]:
    config = file_config(out, mode="w", **handler)
    config["mplog"] = {"state_dir": str(state)}
    state.mkdir(exist_ok=True)
    return config


def _kill_and_wait_for_restart(listener: mplog.Listener) -> None:
    old, before = listener.pid, listener.restarts
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: listener.restarts > before and listener.pid != old, timeout=20, interval=0.005)


@pytest.mark.timeout(120)
def test_a_supervised_restart_appends_to_a_mode_w_file_so_it_holds_every_record_received(tmp_path):
    out, state = tmp_path / "out.log", tmp_path / "state"
    go = SPAWN.Event()
    with mplog.start_listener(_config(out, state), route_parent=False) as listener:
        procs = [SPAWN.Process(target=_phased, args=(i, FIRST, PER, go)) for i in range(WORKERS)]
        for p in procs:
            p.start()
        # Killed while quiet, once the checkpoint holds everything written: nothing in flight.
        wait_for(lambda: len(_payload_lines(out)) == WORKERS * FIRST and _checkpointed(state, WORKERS * FIRST), 60)
        _kill_and_wait_for_restart(listener)
        go.set()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0] * WORKERS
        stats = wait_for(lambda: (s := listener.stats()) and all(x["closed"] for x in s["senders"].values()) and s)
    lines = _payload_lines(out)
    check_lines(lines, dict.fromkeys(range(WORKERS), PER)).assert_exact()
    assert len(lines) == stats["received"] == WORKERS * PER  # before the fix: only the 20,000 after the restart
    assert (stats["restarts"], stats["gaps"], stats["dropped"]) == (1, 0, 0)


@pytest.mark.timeout(120)
def test_a_listener_killed_mid_stream_holds_exactly_the_records_it_counts_as_received(tmp_path):
    out, state = tmp_path / "out.log", tmp_path / "state"
    go = SPAWN.Event()
    with mplog.start_listener(_config(out, state), route_parent=False) as listener:
        procs = [SPAWN.Process(target=_phased, args=(i, FIRST, PER, go)) for i in range(WORKERS)]
        for p in procs:
            p.start()
        # Killed while it writes the first half, backlogged: what sits in its queues is lost.
        wait_for(lambda: out.exists() and out.stat().st_size > WORKERS * PER * LINE // 4, timeout=60, interval=0.001)
        _kill_and_wait_for_restart(listener)
        go.set()  # the second half, after the restart, shows the lost records as gaps
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0] * WORKERS
        stats = wait_for(lambda: (s := listener.stats()) and all(x["closed"] for x in s["senders"].values()) and s)
    lines = _payload_lines(out)
    ledger = build_ledger(lines, dict.fromkeys(range(WORKERS), PER), stats, {i: p.pid for i, p in enumerate(procs)})
    # Every line the killed listener wrote is still there, and its progress file says how
    # far each sender had got when it died (mplog.listener.supervisor.ProgressFile): what it wrote
    # is received, what it lost is a gap, and nothing is both. Before the progress file,
    # the records written after the last stats checkpoint were also counted as gaps.
    ledger.assert_balanced()
    assert len(lines) == stats["received"] == ledger.written
    assert stats["restarts"] == 1 and stats["duplicates"] == 0


def _large_until(producer: int, stop: Any, counts: Any) -> None:
    """Log records of 40 KB in frames of up to 3 MiB until ``stop``, then 100 more; the count in ``counts``."""
    mplog.setup_worker(batch_bytes=3 << 20)
    log = logging.getLogger("test")
    seq = 0
    while not stop.is_set():
        log.info(payload(producer, seq, 40_000))
        seq += 1
    for n in range(seq, seq + 100):  # after the last restart: what the last kill lost shows as gaps
        log.info(payload(producer, n, 40_000))
    counts[producer] = seq + 100


@pytest.mark.timeout(150)
def test_a_listener_killed_while_it_writes_a_frame_counts_the_cut_frame_exactly_and_ends_its_cut_line(
    tmp_path, capfd, monkeypatch
):
    monkeypatch.setattr(Backoff, "delay", lambda self, lived: 0.0)  # killed many times in a row: restarted at once
    out, state = tmp_path / "out.log", tmp_path / "state"
    stop, counts = SPAWN.Event(), SPAWN.Array("q", WORKERS)
    cuts = kills = 0
    with mplog.start_listener(_config(out, state), route_parent=False) as listener:
        procs = [SPAWN.Process(target=_large_until, args=(i, stop, counts)) for i in range(WORKERS)]
        for p in procs:
            p.start()
        wait_for(out.exists, timeout=60)
        # Large frames spend much of the listener's time in write(), and a SIGKILL there cuts
        # the write at a page boundary (about 4 kills in 10 here): kill until one did, each
        # time once the listener writes at full pace (a few frames), not while it starts.
        while not cuts and kills < 60:
            size = out.stat().st_size
            wait_for(lambda: out.stat().st_size > size + (8 << 20), timeout=30, interval=0.001)  # noqa: B023
            time.sleep(random.uniform(0, 0.02))
            _kill_and_wait_for_restart(listener)
            kills += 1
            cuts += capfd.readouterr().err.count("its cut last line is ended")
        stop.set()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0] * WORKERS
        stats = wait_for(lambda: (s := listener.stats()) and all(x["closed"] for x in s["senders"].values()) and s)
    assert cuts, f"no write was cut in {kills} kills"
    lines = _payload_lines(out)
    logged = {i: counts[i] for i in range(WORKERS)}
    ledger = build_ledger(lines, logged, stats, {i: p.pid for i, p in enumerate(procs)})
    # The cut frame's whole lines count as received, the rest as gaps: before, the frame counted
    # as received whole, its records past the cut lost without a count.
    assert {i: e.unexplained for i, e in ledger.entries.items()} == dict.fromkeys(range(WORKERS), 0), ledger
    assert ledger.written == stats["received"] and stats["duplicates"] == 0
    # The cut line was ended: the record after it starts a line of its own (before, the two shared one).
    assert 0 < ledger.truncated <= cuts and all(len(PAYLOAD_RE.findall(line)) == 1 for line in lines)


@pytest.mark.timeout(150)
def test_in_ack_mode_a_listener_killed_while_it_writes_frames_writes_each_record_exactly_once(tmp_path, monkeypatch):
    monkeypatch.setattr(Backoff, "delay", lambda self, lived: 0.0)
    out = tmp_path / "out.log"
    stop, counts = SPAWN.Event(), SPAWN.Array("q", WORKERS)
    with mplog.start_listener(file_config(out, mode="w"), ack=True, route_parent=False) as listener:
        procs = [SPAWN.Process(target=_large_until, args=(i, stop, counts)) for i in range(WORKERS)]
        for p in procs:
            p.start()
        wait_for(lambda: out.exists() and out.stat().st_size > 0, timeout=60)
        for _ in range(6):  # about 4 kills in 10 cut a write here (the test above): cut back, not counted as written
            time.sleep(random.uniform(0.05, 0.3))
            _kill_and_wait_for_restart(listener)
        stop.set()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0] * WORKERS
        stats = listener.stop()
    lines = _payload_lines(out)
    ledger = build_ledger(lines, {i: counts[i] for i in range(WORKERS)}, stats, {i: p.pid for i, p in enumerate(procs)})
    # Exactly once, or dropped by a worker whose logging call waited past its bound while the
    # listener restarted (counted; seen under load): never lost without a count, never written twice.
    ledger.assert_balanced()
    assert stats["gaps"] == 0 and len(lines) == stats["received"] and stats["restarts"] == 6


def _frame(seq: int, count: int, flags: int = 0) -> bytes:
    """Records ``seq`` .. ``seq + count - 1`` of producer 0 in one frame, as one sender."""
    items = [
        encode_record(logging.LogRecord("test", logging.INFO, __file__, 1, "%s", (payload(0, n),), None))
        for n in range(seq, seq + count)
    ]
    return build_frame(encode_sender(Sender("restart-test", 4242, 0.0, 1)), seq, 0, flags, items)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("kill", "written", "counted"),
    [
        # Right before the fourth frame's first record: none of it written, the frame a gap.
        ("before 300", [*range(300), *range(400, 600)], (500, 100)),
        # Right after the third frame's last record, before the listener marked it written
        # (its likeliest place to be preempted, on the way back from write()): the record is
        # in the file and counted as a gap, the one record a kill may count on the safe side.
        ("after 300", list(range(600)), (599, 1)),
        # Halfway through the third frame, whose handler writes a record at a time (rotating,
        # timed and watched files do): before, the frame counted as written whole, and its 50
        # records past the kill were lost without a count (an operator outsider: 40-136 a kill).
        ("after 250", [*range(250), *range(300, 600)], (549, 51)),
        # Stuck for 0.5 s before a frame's first record (a hung emit), then killed: the stats
        # checkpoint, written meanwhile, counted the frame as received. Its sender's first
        # frame: before, the restart kept the checkpoint's 100 records received, none written
        # and no gap (an observability outsider: 245 records so, also through `mplog listen`'s
        # give-up exit).
        ("before 0 stuck", list(range(100, 600)), (500, 100)),
        ("before 300 stuck", [*range(300), *range(400, 600)], (500, 100)),
    ],
)
def test_a_listener_killed_between_writing_a_frame_and_its_next_step_counts_what_it_wrote(
    tmp_path, monkeypatch, kill, written, counted
):
    # A handler that writes a record at a time kills its own listener right before or after one.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([RELIABILITY, TESTS, os.environ.get("PYTHONPATH", "")]))
    out, state, marker = tmp_path / "out.log", tmp_path / "state", tmp_path / "killed"
    config = _config(out, state)
    when, at, *stuck = kill.split()
    before = when == "before"
    config["handlers"]["file"] = {
        "()": "fault_handlers.KillsItsListenerMidFrame",
        "filename": str(out),
        "marker": str(marker),
        "after": int(at) + 1 if before else int(at),  # killed before record `at`, or after record `at` - 1
        "before": before,
        "pause": 0.5 if stuck else 0.0,
        "formatter": "f",
    }
    sent_before_kill = int(at) // 100 + 1 if before else -(-int(at) // 100)  # up to the frame it dies in
    with mplog.start_listener(config, route_parent=False, export_env=False) as listener:
        ctx = zmq.Context()
        try:
            push = ctx.socket(zmq.PUSH)
            push.linger = 5000
            push.connect(listener.endpoint)
            for i in range(sent_before_kill):
                push.send(_frame(100 * i, 100))
            wait_for(lambda: listener.restarts == 1, timeout=20)
            for i in range(sent_before_kill, 6):
                push.send(_frame(100 * i, 100))
            push.send(_frame(600, 0, FLAG_FINAL))
            stats = wait_for(
                lambda: (
                    (s := listener.stats()) and s["senders"] and all(x["closed"] for x in s["senders"].values()) and s
                )
            )
            push.close()
        finally:
            ctx.term()
    lines = _payload_lines(out)
    assert sorted(int(PAYLOAD_RE.search(line)["seq"]) for line in lines) == written  # type: ignore[index]
    # Before the progress file: what the last checkpoint had seen (a frame or more behind).
    assert (stats["received"], stats["gaps"], stats["duplicates"]) == (*counted, 0)


@pytest.mark.timeout(120)
def test_in_ack_mode_a_listener_killed_mid_stream_writes_each_record_exactly_once_to_a_mode_w_file(tmp_path):
    out = tmp_path / "out.log"
    with mplog.start_listener(file_config(out, mode="w"), ack=True, route_parent=False) as listener:
        procs = [SPAWN.Process(target=_produce, args=(i, PER)) for i in range(WORKERS)]
        for p in procs:
            p.start()
        wait_for(lambda: out.exists() and out.stat().st_size > WORKERS * PER * LINE // 4, timeout=60, interval=0.001)
        _kill_and_wait_for_restart(listener)
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0] * WORKERS
        stats = listener.stats()
    lines = read_lines(out)
    check_lines(lines, dict.fromkeys(range(WORKERS), PER)).assert_exact()
    assert len(lines) == stats["received"] == WORKERS * PER  # before the fix: 24,790 of 40,000 measured
    assert stats["restarts"] == 1 and stats["rollback_skipped"] == 0


# Every file-writing handler of logging, logging.handlers and mplog.handlers, plus a
# subclass and a factory whose mode is 'w' without the config saying so.
HANDLERS = {
    "FileHandler": {"class": "logging.FileHandler", "mode": "w"},
    "FileHandler-delay": {"class": "logging.FileHandler", "mode": "w", "delay": True},
    "WatchedFileHandler": {"class": "logging.handlers.WatchedFileHandler", "mode": "w"},
    "RotatingFileHandler": {"class": "logging.handlers.RotatingFileHandler", "mode": "w"},
    "TimedRotatingFileHandler": {"class": "logging.handlers.TimedRotatingFileHandler", "when": "D"},
    "mplog-RotatingFileHandler": {"class": "mplog.handlers.RotatingFileHandler", "mode": "w", "compress": "gzip"},
    "mplog-TimedRotatingFileHandler": {"class": "mplog.handlers.TimedRotatingFileHandler", "when": "D"},
    "subclass-default-w": {"()": "truncating_handlers.TruncatingFileHandler"},
    "factory-w": {"()": "truncating_handlers.truncating_file_handler"},
    "FactoryStreamHandler-open-w": {
        "class": "mplog.handlers.FactoryStreamHandler",
        "factory": "ext://builtins.open",
        "kwargs": {"mode": "w", "encoding": "utf-8"},
    },
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", list(HANDLERS))
def test_every_file_handler_truncates_at_the_first_start_only(tmp_path, kind, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([HERE, TESTS, os.environ.get("PYTHONPATH", "")]))
    out, state = tmp_path / "out.log", tmp_path / "state"
    out.write_text("a line from an earlier run\n")
    config = _config(out, state)
    spec = {"formatter": "f", **HANDLERS[kind]}
    if "kwargs" in spec:  # FactoryStreamHandler: the file is its factory's argument
        spec["kwargs"] = {**spec["kwargs"], "file": str(out)}
    else:
        spec["filename"] = str(out)
    config["handlers"]["file"] = spec
    log = logging.getLogger("test")
    with mplog.start_listener(config) as listener:
        for seq in range(100):
            log.info("%s", payload(0, seq))
        wait_for(lambda: _checkpointed(state, 100))
        _kill_and_wait_for_restart(listener)
        for seq in range(100, 200):
            log.info("%s", payload(0, seq))
        wait_for(lambda: listener.stats()["received"] >= 201)  # + the supervisor's line about the restart
    lines = read_lines(out)
    check_lines(_payload_lines(out), {0: 200}).assert_exact()
    first_start_truncated = "a line from an earlier run" not in lines
    assert first_start_truncated == (kind not in ("TimedRotatingFileHandler", "mplog-TimedRotatingFileHandler"))


@contextlib.contextmanager
def _workers(tmp_path: Path, endpoint: str, total: int, first: int, **env: str) -> Any:
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(
                running(
                    [sys.executable, "-c", PHASED_WORKER, str(i), str(first), str(total)],
                    tmp_path / f"worker{i}.err",
                    stdin=subprocess.PIPE,
                    MPLOG_ENDPOINT=endpoint,
                    **env,
                )
            )
            for i in range(WORKERS)
        ]


def _received(stop_line: str) -> int:
    match = re.match(r"mplog: stopped; received (\d+) records", stop_line)
    assert match, stop_line
    return int(match[1])


@pytest.mark.timeout(120)
def test_mplog_listen_started_again_on_its_state_dir_appends_to_a_mode_w_file(tmp_path):
    out, state = tmp_path / "out.log", tmp_path / "state"
    config = write_config(tmp_path / "collector.json", _config(out, state))
    with short_dir() as sockets:
        endpoint = f"ipc://{sockets}/collector.sock"
        first_err, second_err = tmp_path / "first.err", tmp_path / "second.err"
        with running(listen_argv(config, endpoint), first_err) as first:
            wait_listening(first_err)
            with _workers(tmp_path, endpoint, PER, FIRST) as procs:
                wait_for(
                    lambda: _checkpointed(state, WORKERS * FIRST) and len(_payload_lines(out)) == WORKERS * FIRST, 60
                )
                first.kill()
                first.wait(10)
                with running(listen_argv(config, endpoint), second_err) as second:  # as a service manager would
                    wait_listening(second_err)
                    for p in procs:
                        release(p)
                    assert [p.wait(60) for p in procs] == [0] * WORKERS
                    wait_for(lambda: _checkpointed(state, WORKERS * PER))
                    second.send_signal(signal.SIGTERM)
                    assert second.wait(20) == 0
    lines = _payload_lines(out)
    check_lines(lines, dict.fromkeys(range(WORKERS), PER)).assert_exact()
    assert len(lines) == _received(second_err.read_text().splitlines()[-1]) == WORKERS * PER


@pytest.mark.timeout(60)
@pytest.mark.parametrize("state", [False, True], ids=["no-state-dir", "state-dir"])
def test_mplog_listen_without_a_state_dir_says_that_a_restart_truncates_its_mode_w_files(tmp_path, state):
    out = tmp_path / "out.log"
    config = _config(out, tmp_path / "state") if state else file_config(out, mode="w")
    path = write_config(tmp_path / "collector.json", config)
    with short_dir() as sockets:
        err = tmp_path / "listen.err"
        with running(listen_argv(path, f"ipc://{sockets}/collector.sock"), err) as proc:
            wait_listening(err)
            proc.send_signal(signal.SIGTERM)  # the warning comes right after the "listening on" line
            assert proc.wait(20) == 0
    warned = [line for line in err.read_text().splitlines() if "no mplog.state_dir" in line]
    # An outside user restarted `mplog listen` (tcp, no state_dir) after a kill -9: its mode 'w'
    # file lost everything written before, without a word. Now it is said as it starts.
    if state:
        assert warned == []
    else:
        assert len(warned) == 1 and f"truncates {out} again" in warned[0]


@pytest.mark.timeout(120)
def test_mplog_listen_killed_mid_stream_and_started_again_holds_exactly_the_records_it_counts(tmp_path):
    out, state = tmp_path / "out.log", tmp_path / "state"
    config = write_config(tmp_path / "collector.json", _config(out, state))
    with short_dir() as sockets:
        endpoint = f"ipc://{sockets}/collector.sock"
        first_err, second_err = tmp_path / "first.err", tmp_path / "second.err"
        with running(listen_argv(config, endpoint), first_err) as first:
            wait_listening(first_err)
            with _workers(tmp_path, endpoint, PER, FIRST) as procs:
                wait_for(lambda: out.exists() and out.stat().st_size > WORKERS * PER * LINE // 4, 60, 0.001)
                first.kill()
                first.wait(10)
                with running(listen_argv(config, endpoint), second_err) as second:
                    wait_listening(second_err)
                    for p in procs:
                        release(p)
                    assert [p.wait(60) for p in procs] == [0] * WORKERS
                    second.send_signal(signal.SIGTERM)
                    assert second.wait(20) == 0
                pids = {i: p.pid for i, p in enumerate(procs)}
    lines = _payload_lines(out)
    stats = load_checkpoint(stats_path(str(state)))  # the final checkpoint, written as it stopped
    assert stats is not None
    ledger = build_ledger(lines, dict.fromkeys(range(WORKERS), PER), stats, pids)
    ledger.assert_balanced()  # before the progress file: records written after the last checkpoint were gaps too
    assert len(lines) == _received(second_err.read_text().splitlines()[-1]) == stats["received"] == ledger.written
    assert stats["duplicates"] == 0


@pytest.mark.timeout(120)
def test_mplog_listen_in_ack_mode_killed_mid_stream_and_started_again_writes_each_record_once_to_a_mode_w_file(
    tmp_path,
):
    out, state = tmp_path / "out.log", tmp_path / "state"
    config = _config(out, state)
    config["mplog"]["ack"] = True
    path = write_config(tmp_path / "collector.json", config)
    with short_dir() as sockets:
        endpoint = f"ipc://{sockets}/collector.sock"
        first_err, second_err = tmp_path / "first.err", tmp_path / "second.err"
        with running(listen_argv(path, endpoint), first_err) as first:
            wait_listening(first_err)
            with _workers(tmp_path, endpoint, PER, 0, MPLOG_ACK="1") as procs:
                for p in procs:
                    release(p)
                wait_for(lambda: out.exists() and out.stat().st_size > WORKERS * PER * LINE // 4, 60, 0.001)
                first.kill()
                first.wait(10)
                with running(listen_argv(path, endpoint), second_err) as second:
                    assert [p.wait(60) for p in procs] == [0] * WORKERS
                    second.send_signal(signal.SIGTERM)
                    assert second.wait(20) == 0
    lines = read_lines(out)
    check_lines(lines, dict.fromkeys(range(WORKERS), PER)).assert_exact()
    assert len(lines) == _received(second_err.read_text().splitlines()[-1]) == WORKERS * PER


@pytest.mark.timeout(60)
def test_start_listener_creates_a_missing_state_dir_private_and_keeps_its_state_there(tmp_path):
    out, state = tmp_path / "out.log", tmp_path / "missing" / "state"
    config = file_config(out)
    config["mplog"] = {"state_dir": str(state)}
    with mplog.start_listener(config, route_parent=False, export_env=False) as listener:
        wait_for(lambda: _checkpointed(state, 0))
        assert listener.running
    # Before: the directory was never created, and every checkpoint failed without a word.
    assert state.is_dir() and stat.S_IMODE(state.stat().st_mode) == 0o700
    assert {p.name for p in state.iterdir()} >= {"stats.json", "progress.slots"}


@pytest.mark.timeout(60)
def test_a_state_dir_that_cannot_be_used_is_a_config_error_naming_the_key(tmp_path):
    taken = tmp_path / "a-file"
    taken.write_text("not a directory\n")
    config = file_config(tmp_path / "out.log")
    config["mplog"] = {"state_dir": str(taken / "state")}
    with pytest.raises(mplog.ConfigError, match=r"mplog\.state_dir .*a-file/state.* cannot be created"):
        mplog.start_listener(config, route_parent=False, export_env=False)
    path = write_config(tmp_path / "collector.json", config)
    with short_dir() as sockets:
        done = subprocess.run(
            listen_argv(path, f"ipc://{sockets}/c.sock"),
            capture_output=True, text=True, env=cli_env(), timeout=30, check=False,
        )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr  # before: a traceback, exit 1
    assert re.search(r"mplog\.state_dir .*a-file/state.* cannot be created", done.stderr), done.stderr
