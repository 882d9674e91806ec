"""The guard of tests/unit/conftest.py: every way to start a process raises inside a unit test.

Each case tries to start a real process; with the guard it raises before anything starts
(the conftest of tests/ fails any test that leaves a process behind, and none is left).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

REFUSED = r"unit tests start no processes; move this test to tests/integration \(it called "


def _noop() -> None:
    pass


def _fork() -> None:
    pid = os.fork()  # looked up when called: the guard replaces os.fork
    if pid == 0:  # without the guard: the child leaves at once, never running the rest of pytest
        os._exit(0)
    os.waitpid(pid, 0)


def _asyncio_subprocess() -> None:
    async def start() -> None:
        await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")

    asyncio.run(start())


def _pool() -> None:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        pool.map(abs, [1])


STARTS: dict[str, Callable[[], Any]] = {
    "subprocess.run": lambda: subprocess.run([sys.executable, "-c", "pass"], check=True, timeout=30),
    "subprocess.Popen": lambda: subprocess.Popen([sys.executable, "-c", "pass"]).wait(30),
    "asyncio.create_subprocess_exec": _asyncio_subprocess,
    "os.fork": _fork,
    "os.system": lambda: os.system("true"),
    "os.spawnv": lambda: os.spawnv(os.P_WAIT, sys.executable, [sys.executable, "-c", "pass"]),
    "os.posix_spawn": lambda: os.waitpid(os.posix_spawn(sys.executable, [sys.executable, "-c", "pass"], {}), 0),
    "multiprocessing fork": lambda: multiprocessing.get_context("fork").Process(target=_noop).start(),
    "multiprocessing spawn": lambda: multiprocessing.get_context("spawn").Process(target=_noop).start(),
    "multiprocessing forkserver": lambda: multiprocessing.get_context("forkserver").Process(target=_noop).start(),
    "multiprocessing Pool": _pool,
}


@pytest.mark.parametrize("start", list(STARTS.values()), ids=list(STARTS))
def test_every_way_to_start_a_process_is_refused_with_where_the_test_belongs(
    start: Callable[[], Any], _no_process_started: list[str]
) -> None:
    with pytest.raises(RuntimeError, match=REFUSED):
        start()
    assert _no_process_started  # the attempt is recorded: it fails the test at teardown
    _no_process_started.clear()  # this test made it on purpose


def test_an_attempt_the_code_under_test_swallows_is_still_recorded(_no_process_started: list[str]) -> None:
    try:
        subprocess.run(["true"], check=False)
    except Exception:  # as a logging call that never raises would
        pass
    assert _no_process_started == ["Popen._execute_child"]
    _no_process_started.clear()


def test_threads_are_fine() -> None:
    done: list[int] = []
    thread = threading.Thread(target=done.append, args=(1,))
    thread.start()
    thread.join(10)
    assert done == [1]
