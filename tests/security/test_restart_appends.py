"""A restart never truncates what was written: file handlers configured with mode 'w' append after a restart.

The first start may truncate (that is what mode 'w' asks for); a supervised restart and
``mplog listen`` started again on its ``mplog.state_dir`` continue the earlier listener's
stats, so they must also continue its files (mplog.continuation).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import PAYLOAD_RE, check_lines, file_config, payload, read_lines, wait_for
from ledger import build_ledger
from lifecycle_helpers import (
    HERE,
    PHASED_WORKER,
    TESTS,
    listen_argv,
    log_range,
    release,
    running,
    short_dir,
    wait_listening,
    write_config,
)

import mplog
from mplog.supervisor import CHECKPOINT_INTERVAL, load_checkpoint, stats_path

pytestmark = [pytest.mark.integration, pytest.mark.serial]

SPAWN = multiprocessing.get_context("spawn")
WORKERS, PER, FIRST = 2, 20_000, 10_000
LINE = len(payload(0, 0)) + 1  # bytes per output line


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
def test_a_listener_killed_mid_stream_keeps_every_line_it_wrote_and_counts_what_it_lost(tmp_path):
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
    # Every line the killed listener wrote is still there: nothing written is uncounted.
    # Records it wrote after its last stats checkpoint are in the file *and* counted as a
    # gap (docs/reliability.md): that overlap, bounded by one checkpoint interval of writes,
    # is the only way the file may hold more than the listener counts as received.
    overlap_bound = int(4 * CHECKPOINT_INTERVAL * 200_000)
    ledger.assert_balanced(min_unexplained=-overlap_bound, max_unexplained=0)
    assert stats["received"] <= len(lines) <= stats["received"] + overlap_bound
    assert stats["restarts"] == 1


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
