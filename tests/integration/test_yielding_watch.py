"""The listener's watch of its workers (mplog.listener.holding.WorkerWatch) against real processes.

The ``spinner`` and ``sleeper`` fixtures of conftest: one that keeps a CPU busy, one that
sleeps, one that is gone; each fixture yields once its process's start-up is over. Moved
from tests/unit/test_yielding.py (unit tests start no processes); the watch's logic on
made-up looks stays there.
"""

from __future__ import annotations

import socket
import time

import pytest
from helpers import wait_for

from mplog.listener import holding as yielding
from mplog.listener.holding import CHECK_INTERVAL, WorkerWatch
from mplog.wire import FLAG_FINAL

HOST = socket.gethostname()


def _busy(watch: WorkerWatch) -> bool:
    return watch.busy(time.monotonic())


def _looks(watch: WorkerWatch, count: int) -> list[bool]:
    answers = []
    for _ in range(count):
        answers.append(_busy(watch))
        time.sleep(CHECK_INTERVAL * 1.2)  # not synchronisation: the watch looks again only after CHECK_INTERVAL
    return answers


@pytest.mark.timeout(60)
def test_a_sender_on_this_host_keeping_the_only_cpu_busy_makes_the_watch_busy_until_it_is_gone(spinner):
    watch = WorkerWatch(cpus=1)
    assert not _busy(watch)  # no sender known
    watch.saw(HOST, spinner.pid, 0)
    wait_for(lambda: _busy(watch), timeout=20)
    spinner.kill()
    spinner.wait(10)
    wait_for(lambda: not _busy(watch), timeout=20)


@pytest.mark.timeout(60)
def test_a_sleeping_sender_never_makes_the_watch_busy(sleeper):
    watch = WorkerWatch(cpus=1)
    watch.saw(HOST, sleeper.pid, 0)
    assert _looks(watch, 10) == [False] * 10
    assert watch.pids == [sleeper.pid]


@pytest.mark.timeout(60)
def test_busy_workers_on_another_host_or_fewer_than_the_cpus_never_make_the_watch_busy(spinner):
    other = WorkerWatch(cpus=1)
    other.saw(HOST + "-elsewhere", spinner.pid, 0)  # a remote sender's pid means nothing here
    too_few = WorkerWatch(cpus=2)
    too_few.saw(HOST, spinner.pid, 0)  # one busy sender leaves the listener a CPU
    assert _looks(other, 5) == [False] * 5
    assert _looks(too_few, 5) == [False] * 5
    assert other.pids == []


@pytest.mark.timeout(60)
def test_a_goodbye_frame_removes_its_sender(spinner):
    watch = WorkerWatch(cpus=1)
    watch.saw(HOST, spinner.pid, 0)
    wait_for(lambda: _busy(watch), timeout=20)
    watch.saw(HOST, spinner.pid, FLAG_FINAL)
    assert watch.pids == []
    wait_for(lambda: not _busy(watch), timeout=5)


def test_without_proc_the_watch_never_holds(monkeypatch, spinner):
    watch = WorkerWatch(cpus=1)
    watch.enabled = False
    watch.saw(HOST, spinner.pid, 0)
    assert _looks(watch, 3) == [False] * 3


@pytest.mark.timeout(60)
def test_a_look_reads_only_the_senders_heard_from_most_recently(monkeypatch, spinner, sleeper):
    monkeypatch.setattr(yielding, "MAX_LOOKED_AT", 1)
    watch = WorkerWatch(cpus=1)
    watch.saw(HOST, spinner.pid, 0)
    watch.saw(HOST, sleeper.pid, 0)  # the newest, and asleep: the busy one is not read
    assert _looks(watch, 5) == [False] * 5
    watch.saw(HOST, spinner.pid, 0)  # heard from again: now the newest
    wait_for(lambda: _busy(watch), timeout=20)
