"""Shared fixtures: logging state restored, processes reaped, start methods, numbered payloads."""

from __future__ import annotations

import fcntl
import logging
import multiprocessing
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from mplog.worker.env import export_setting, inherited_setting

sys.path.insert(0, str(Path(__file__).parent))
from helpers import wait_for  # tests/ is on sys.path from the line above

START_METHODS = ["fork", "spawn", "forkserver"]
TRANSPORTS = ["zmq", "multiprocessing"]
_ENV_KEYS = ("MPLOG_ENDPOINT", "MPLOG_LEVEL", "MPLOG_ACK")
_ROUTE_KEY = "mplog:route_children"
# Long-lived helpers that multiprocessing starts once per test process on purpose.
_KEEP = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


# ---------------------------------------------------------------- tests marked serial


def _serial_lock_folder(config: pytest.Config) -> Path | None:
    """Where this run's pytest-xdist workers keep their two lock files; None without several workers."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None or int(workerinput.get("workercount", 1)) < 2:
        return None
    # Each worker's base temp folder is in the run's own (pytest-of-USER/pytest-N), which
    # pytest removes with the runs it no longer keeps.
    return Path(config._tmp_path_factory.getbasetemp().parent)  # type: ignore[attr-defined]


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """A test marked ``serial`` runs while no other test of the run does; the others wait for it.

    Every test holds the main lock file shared, a serial test holds it alone. A serial test
    holds the turnstile while it waits, so that no new test starts meanwhile (a stream of
    shared holders would otherwise keep it waiting). The wait comes before pytest-timeout
    starts a test's clock (this wrapper is outside its own), and lasts at most as long as the
    tests running, each bounded by its timeout. A killed worker's locks go with its process.
    """
    folder = _serial_lock_folder(item.config)
    if folder is None:
        yield
        return
    alone = item.get_closest_marker("serial") is not None
    with open(folder / "turnstile", "a") as turnstile, open(folder / "main", "a") as main:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(main, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(main, fcntl.LOCK_UN)


_LoggerState = tuple[list[logging.Handler], int, bool, bool, list[Any]]
_DEFAULT_STATE: _LoggerState = ([], logging.NOTSET, True, False, [])


def _logger_states() -> dict[str, _LoggerState]:
    return {
        name: (list(lg.handlers), lg.level, lg.propagate, lg.disabled, list(lg.filters))
        for name, lg in list(logging.Logger.manager.loggerDict.items())
        if isinstance(lg, logging.Logger)
    }


def _restore(logger: logging.Logger, state: _LoggerState) -> None:
    handlers, level, propagate, disabled, filters = state
    for handler in list(logger.handlers):
        if handler not in handlers:
            logger.removeHandler(handler)
            try:
                handler.close()
            except Exception:
                pass
    logger.handlers[:] = handlers
    logger.level, logger.propagate, logger.disabled = level, propagate, disabled
    logger.filters[:] = filters


@pytest.fixture(autouse=True)
def _restore_logging_state() -> Iterator[None]:
    """Every logger as it was before the test: handlers, level, propagate, disabled, filters.

    A test's dictConfig leaves its loggers configured (a reset config closes their
    handlers but keeps them attached); a worker forked by a later test in the same
    process inherits them, and records sent to a logger left with propagate=False never
    reach the worker's handler on the root.
    """
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, root.propagate, root.disabled, list(root.filters))
    loggers = _logger_states()
    env = {key: inherited_setting(key) for key in _ENV_KEYS}
    config = multiprocessing.current_process()._config  # type: ignore[attr-defined]
    route = config.get(_ROUTE_KEY)  # mplog.worker.children: how children started from here are routed
    yield
    _restore(root, saved)
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger):
            _restore(logger, loggers.get(name, _DEFAULT_STATE))
    logging.Logger.manager._clear_cache()  # levels were set directly: forget cached isEnabledFor answers
    for key, value in env.items():
        export_setting(key, value)
    if route is None:
        config.pop(_ROUTE_KEY, None)
    else:
        config[_ROUTE_KEY] = route


@pytest.fixture(autouse=True)
def _no_process_left_behind() -> Iterator[None]:
    yield
    me = psutil.Process()
    left = []
    for child in me.children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if any(keep in cmdline for keep in _KEEP):
            continue
        left.append(child)
    if not left:
        return
    _, alive = psutil.wait_procs(left, timeout=5)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:  # noqa: PERF203  # it may have exited meanwhile
            pass
    psutil.wait_procs(alive, timeout=5)
    if alive:
        pytest.fail(f"test left processes running: {[p.pid for p in alive]}")


def _child(code: str, state: str) -> Iterator[subprocess.Popen[bytes]]:
    """``python -c code``, yielded once its start-up is over: it printed ``ready`` and is in ``state``."""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        readable, _, _ = select.select([proc.stdout], [], [], 30)
        assert readable and proc.stdout.readline() == b"ready\n", "the child did not start within 30 s"
        status = psutil.Process(proc.pid).status
        wait_for(lambda: status() == state, what=f"the child {proc.pid} {state}")
        yield proc
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
def spinner() -> Iterator[subprocess.Popen[bytes]]:
    """A process whose main thread keeps a CPU busy (at most 60 s): a busy worker to the listener's eye."""
    code = "import time\nend = time.time() + 60\nprint('ready', flush=True)\nwhile time.time() < end: pass"
    yield from _child(code, psutil.STATUS_RUNNING)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process that only sleeps (at most 60 s)."""
    # Parked until the test kills it: its sleep is what it is for, not synchronisation.
    yield from _child("import time; print('ready', flush=True); time.sleep(60)", psutil.STATUS_SLEEPING)


@pytest.fixture(params=START_METHODS)
def start_method(request: pytest.FixtureRequest) -> str:
    """Each test using this runs under fork, spawn and forkserver."""
    return str(request.param)


@pytest.fixture
def mp_context(start_method: str) -> multiprocessing.context.BaseContext:
    return multiprocessing.get_context(start_method)


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """Each test using this runs over ZeroMQ and over the multiprocessing transport."""
    return str(request.param)
