"""Unit tests start no processes: every way to start one raises inside them.

A test that needs a real process (a worker, a listener, a ``python -c`` child, the
``spinner``/``sleeper`` fixtures) belongs in tests/integration. Threads and in-process
sockets are fine here. The guard is autouse for every test under tests/unit; an attempt
that the code under test swallows (a logging call never raises) still fails the test at
teardown, so no process start goes unnoticed.
"""

from __future__ import annotations

import _posixsubprocess  # what subprocess and multiprocessing's forkserver call to fork
import multiprocessing.process
import os
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

MESSAGE = "unit tests start no processes; move this test to tests/integration"

# (owner, attribute): every door to a new process on POSIX. os.spawn*/os.system and
# multiprocessing's fork start method go through os.fork; subprocess (and asyncio's
# subprocesses) through Popen._execute_child and _posixsubprocess.fork_exec; every
# multiprocessing context, Pool and Manager through BaseProcess.start.
_DOORS: list[tuple[Any, str]] = [
    (multiprocessing.process.BaseProcess, "start"),
    (subprocess.Popen, "_execute_child"),
    (_posixsubprocess, "fork_exec"),
    (os, "fork"),
    (os, "forkpty"),
    (os, "posix_spawn"),
    (os, "posix_spawnp"),
    (os, "system"),
]


class ProcessStartRefused(RuntimeError):
    """Raised by the guard where a unit test tries to start a process."""


def _refuse(name: str, attempts: list[str]) -> Callable[..., Any]:
    def refused(*args: Any, **kwargs: Any) -> Any:
        attempts.append(name)
        raise ProcessStartRefused(f"{MESSAGE} (it called {name})")

    return refused


@pytest.fixture(autouse=True)
def _no_process_started(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every process start raises ProcessStartRefused; any attempt fails the test at teardown."""
    attempts: list[str] = []
    for owner, attribute in _DOORS:
        if hasattr(owner, attribute):
            name = f"{getattr(owner, '__name__', owner)}.{attribute}"
            monkeypatch.setattr(owner, attribute, _refuse(name, attempts))
    yield attempts
    monkeypatch.undo()  # before the teardown of fixtures that came earlier (they may need the real ones)
    if attempts:
        pytest.fail(f"{MESSAGE}: it tried {', '.join(attempts)}", pytrace=False)
