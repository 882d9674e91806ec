"""A supervised listener: restarted on the same endpoint after SIGKILL, stats whole across restarts, storms bounded."""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from helpers import file_config, payload, read_lines, wait_for
from ledger import build_ledger

import mplog
from mplog.listener.supervisor import Backoff, load_checkpoint, stats_path

pytestmark = [pytest.mark.integration, pytest.mark.serial]

SPAWN = multiprocessing.get_context("spawn")


def _produce(producer: int, count: int, pace: float) -> None:
    """Log ``count`` numbered records, sleeping ``pace`` seconds every 100 (a steady stream)."""
    mplog.setup_worker()
    log = logging.getLogger("prod")
    for seq in range(count):
        log.info("%s", payload(producer, seq))
        if pace and seq % 100 == 99:
            time.sleep(pace)  # not synchronisation: a steady stream, so the kill lands mid-stream


def _with_state_dir(config: dict[str, Any], state_dir: Path) -> dict[str, Any]:
    """``config`` with a state directory the test can read the stats checkpoint from."""
    return {**config, "mplog": {"state_dir": str(state_dir)}}


def _checkpointed(state_dir: Path, received: int) -> None:
    """Wait (bounded) until the listener's stats checkpoint counts ``received`` records."""
    wait_for(
        lambda: (load_checkpoint(stats_path(str(state_dir))) or {}).get("received") == received,
        what=f"a stats checkpoint with received == {received}",
    )


def _kill_and_wait_for_restart(listener: mplog.Listener) -> float:
    old, before = listener.pid, listener.restarts
    killed = time.monotonic()
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: listener.restarts > before and listener.pid != old, timeout=5.0, interval=0.005)
    return time.monotonic() - killed


@pytest.mark.timeout(60)
def test_a_killed_listener_is_restarted_on_the_same_endpoint_within_a_second_and_says_so(tmp_path):
    out = tmp_path / "out.log"
    log = logging.getLogger("parent")
    with mplog.start_listener(_with_state_dir(file_config(out), tmp_path / "state")) as listener:
        endpoint, first_pid = listener.endpoint, listener.pid
        for seq in range(1000):
            log.info("%s", payload(0, seq))
        wait_for(lambda: listener.stats()["received"] == 1000)
        _checkpointed(tmp_path / "state", 1000)  # the listener's stats checkpoint has caught up
        took = _kill_and_wait_for_restart(listener)
        # 0.15 s measured on an idle 2-core machine; a new interpreter starts slower when the
        # machine is oversubscribed, which says nothing about the supervisor.
        assert took < (1.0 if os.getloadavg()[0] <= 2 * (os.cpu_count() or 1) else 5.0)
        assert listener.endpoint == endpoint
        assert listener.pid != first_pid and psutil.pid_exists(listener.pid)
        assert not psutil.pid_exists(first_pid) or psutil.Process(first_pid).status() == psutil.STATUS_ZOMBIE
        for seq in range(1000, 2000):
            log.info("%s", payload(0, seq))
        # Stats stay cumulative: the 1000 records of the first incarnation are still counted,
        # and the restart did not turn them into a gap.
        wait_for(lambda: listener.stats()["received"] == 2001)  # + the supervision line
        stats = listener.stats()
        assert stats["restarts"] == 1
        assert stats["gaps"] == 0
    lines = read_lines(out)
    supervision = [line for line in lines if "mplog listener" in line]
    assert len(supervision) == 1
    assert "killed by signal 9" in supervision[0] and "restart 1, 1 in the last minute" in supervision[0]
    ledger = build_ledger(lines, {0: 2000}, listener.stats(), {0: os.getpid()})
    ledger.assert_balanced()
    assert ledger.written == 2000


@pytest.mark.timeout(90)
def test_records_in_flight_when_the_listener_dies_arrive_or_are_counted_as_gaps(tmp_path):
    out = tmp_path / "out.log"
    producers, per = 3, 20_000
    with mplog.start_listener(file_config(out), route_parent=False) as listener:
        procs = [SPAWN.Process(target=_produce, args=(i, per, 0.002)) for i in range(producers)]
        for p in procs:
            p.start()
        wait_for(lambda: out.exists() and out.stat().st_size > 200_000, timeout=30, interval=0.002)
        _kill_and_wait_for_restart(listener)
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0] * producers
        stats = wait_for(lambda: (s := listener.stats()) and all(x["closed"] for x in s["senders"].values()) and s)
    pids = {i: p.pid for i, p in enumerate(procs)}
    ledger = build_ledger(read_lines(out), dict.fromkeys(range(producers), per), listener.stats(), pids)
    # Without acknowledgements a crash loses what sat in the dead listener's queues; every such
    # record is a counted gap, and every record it wrote is counted as received (mplog.listener.progress:
    # before, those written after its last stats checkpoint were counted as gaps too).
    ledger.assert_balanced()
    assert sum(e.senders for e in ledger.entries.values()) == producers
    assert stats["restarts"] == 1 and stats["malformed_total"] == 0


@pytest.mark.timeout(90)
def test_stop_while_a_dead_listener_waits_out_its_backoff_restarts_it_to_count_and_flag_what_it_lost(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(Backoff, "delay", lambda self, lived: 60.0)  # dead, not restarted before stop()
    out, state = tmp_path / "out.log", tmp_path / "state"
    producers, per = 2, 20_000
    listener = mplog.start_listener(_with_state_dir(file_config(out), state), route_parent=False)
    try:
        procs = [SPAWN.Process(target=_produce, args=(i, per, 0.002)) for i in range(producers)]
        for p in procs:
            p.start()
        wait_for(lambda: out.exists() and out.stat().st_size > 200_000, timeout=30, interval=0.002)
        dead = listener.pid
        os.kill(dead, signal.SIGKILL)  # mid-stream: the workers' tails go nowhere until stop()
        wait_for(lambda: not psutil.pid_exists(dead) or psutil.Process(dead).status() == psutil.STATUS_ZOMBIE)
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0] * producers and listener.restarts == 0
    finally:
        final = listener.stop()
    lines = read_lines(out)
    ledger = build_ledger(lines, dict.fromkeys(range(producers), per), final, {i: p.pid for i, p in enumerate(procs)})
    # Before: stop() returned the dead listener's last checkpoint: fewer received than the file
    # held (written after that checkpoint), and the lost tails unflagged (measured by an outside
    # user: 41,413 received of 71,976 written, 25,976 lost, "0 closed", no possible-loss flag).
    assert final["received"] == len(lines) == ledger.written and final["restarts"] == 1
    for producer, entry in ledger.entries.items():  # what the kill lost: a gap, or a sender flagged
        assert entry.unexplained == 0 or entry.unclosed == entry.senders == 1, (producer, entry)


@pytest.mark.timeout(60)
def test_a_restart_storm_backs_off(tmp_path):
    out = tmp_path / "out.log"
    with mplog.start_listener(file_config(out), route_parent=False) as listener:
        times = []
        for _ in range(5):
            old, before = listener.pid, listener.restarts
            os.kill(old, signal.SIGKILL)
            wait_for(lambda: listener.restarts > before, timeout=10.0, interval=0.005)  # noqa: B023
            times.append(time.monotonic())
        stats = listener.stats()
    intervals = [b - a for a, b in itertools.pairwise(times)]
    # Quick deaths in a row: 0, then 0.1, 0.2, 0.4, 0.8 s of backoff (plus a start each time).
    assert intervals[-1] >= 0.8
    assert intervals[-1] > intervals[0]
    assert stats["restarts"] == 5


def test_backoff_restarts_at_once_after_a_healthy_run_and_doubles_while_deaths_are_quick():
    backoff = Backoff(first=0.1, cap=1.0, stable_after=10.0)
    assert [backoff.delay(0.5) for _ in range(6)] == [0.0, 0.1, 0.2, 0.4, 0.8, 1.0]
    assert backoff.delay(60.0) == 0.0
    assert backoff.delay(1.0) == 0.1


@pytest.mark.timeout(30)
def test_stop_after_an_unsupervised_death_returns_the_last_checkpoint(tmp_path):
    out = tmp_path / "out.log"
    log = logging.getLogger("parent")
    listener = mplog.start_listener(_with_state_dir(file_config(out), tmp_path / "state"), supervise=False)
    try:
        for seq in range(500):
            log.info("%s", payload(0, seq))
        wait_for(lambda: listener.stats()["received"] == 500)
        _checkpointed(tmp_path / "state", 500)
        os.kill(listener.pid, signal.SIGKILL)
        wait_for(lambda: not listener.running)
    finally:
        final = listener.stop(timeout=3)
    assert final["received"] == 500
    assert listener.restarts == 0
