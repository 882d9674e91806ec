"""``mplog.nice``: the listener process runs at a lower CPU priority and still delivers everything."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys

import psutil
import pytest
from helpers import check_lines, file_config, log_numbered, read_lines, wait_for

import mplog
from mplog.config import load_config
from mplog.exceptions import ConfigError


def _produce(producer: int, count: int) -> None:
    mplog.setup_worker()
    log_numbered(producer, count)


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_niced_listener_runs_at_the_configured_priority_and_delivers_every_record(tmp_path):
    out = tmp_path / "out.log"
    config = {**file_config(out), "mplog": {"nice": 7}}
    with mplog.start_listener(config, route_parent=False) as listener:
        assert psutil.Process(listener.pid).nice() == min(os.nice(0) + 7, 19)
        procs = [multiprocessing.get_context("fork").Process(target=_produce, args=(i, 2000)) for i in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        assert [p.exitcode for p in procs] == [0, 0]
    check_lines(read_lines(out), {0: 2000, 1: 2000}).assert_exact()


def _thread_niceness(pid: int) -> dict[int, int]:
    """The niceness of every thread of ``pid`` (on Linux each thread has its own)."""
    return {t.id: os.getpriority(os.PRIO_PROCESS, t.id) for t in psutil.Process(pid).threads()}


def _all_started(pid: int) -> dict[int, int] | None:
    threads = _thread_niceness(pid)
    return threads if len(threads) >= 3 else None


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_every_thread_of_a_niced_listener_yields_zeromqs_io_thread_included(tmp_path):
    # Niceness is per thread: set after the ZeroMQ context existed, it left the I/O thread
    # (which reads every frame) at the old priority.
    expected = min(os.nice(0) + 9, 19)
    with mplog.start_listener({**file_config(tmp_path / "out.log"), "mplog": {"nice": 9}}, route_parent=False) as lst:
        threads = _thread_niceness(lst.pid)
    assert len(threads) >= 3  # main, ZeroMQ I/O and reaper, control and lifeline watchers
    assert set(threads.values()) == {expected}, threads


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_every_thread_of_a_niced_mplog_listen_yields(tmp_path):
    config = tmp_path / "collector.json"
    config.write_text(json.dumps({**file_config(tmp_path / "out.log"), "mplog": {"nice": 9}}))
    argv = [sys.executable, "-m", "mplog", "listen", "--config", str(config), "--bind", "tcp://127.0.0.1:*"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPLOG_")}
    collector = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert collector.stderr is not None
        first = collector.stderr.readline()  # "mplog: listening on ..." once it is bound
        assert "listening on" in first, first
        threads = wait_for(lambda: _all_started(collector.pid), timeout=10)
        assert set(threads.values()) == {min(os.nice(0) + 9, 19)}, threads
        collector.send_signal(signal.SIGTERM)
        assert collector.wait(20) == 0
    finally:
        if collector.poll() is None:
            collector.kill()
        collector.wait(10)
        if collector.stderr is not None:
            collector.stderr.close()


@pytest.mark.parametrize("value", [-1, 20, 2.5, "10", True])
def test_a_nice_outside_0_to_19_names_the_key_and_the_range(value):
    with pytest.raises(ConfigError, match=r"mplog\.nice must be an int from 0 \(the default\) to 19"):
        load_config({**file_config("/dev/null"), "mplog": {"nice": value}})
