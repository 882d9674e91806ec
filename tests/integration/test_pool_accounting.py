"""Nothing lost on an orderly end: pools, executors, plain processes and forked children under
every start method and transport; and the listener's config decides what is written, as in one process.

Each run logs 4 x 5,000 = 20,000 uniquely numbered records; the output must hold exactly that set.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
from helpers import check_lines, file_config, payload, read_lines

import mplog

pytestmark = pytest.mark.integration

WORKERS = 4
PER_WORKER = 5_000


def _log_block(producer: int) -> int:
    log = logging.getLogger("pool")
    for seq in range(PER_WORKER):
        log.info("%s", payload(producer, seq))
    return producer


def test_stop_delivers_every_record_logged_before_pool_exit(tmp_path, mp_context, transport):
    out = tmp_path / "out.log"
    with mplog.start_listener(file_config(out), transport=transport) as listener:  # noqa: SIM117  # the README's shape
        with mp_context.Pool(WORKERS, initializer=mplog.setup_worker) as pool:
            assert sorted(pool.map(_log_block, range(WORKERS), chunksize=1)) == list(range(WORKERS))
    stats = listener.stats()
    check_lines(read_lines(out), dict.fromkeys(range(WORKERS), PER_WORKER)).assert_exact()
    assert stats["received"] == WORKERS * PER_WORKER
    assert stats["malformed_total"] == stats["gaps"] == stats["dropped"] == stats["duplicates"] == 0


# ---------------------------------------------------------------- other ways to start workers


def _log_numbered_task(producer: int) -> int:
    _log_block(producer)
    return producer


def test_process_pool_executor_delivers_every_record_under_each_start_method(tmp_path, mp_context, transport):
    from concurrent.futures import ProcessPoolExecutor

    out = tmp_path / "out.log"
    with (
        mplog.start_listener(file_config(out), transport=transport) as listener,
        ProcessPoolExecutor(WORKERS, mp_context=mp_context, initializer=mplog.setup_worker) as executor,
    ):
        assert sorted(executor.map(_log_numbered_task, range(WORKERS))) == list(range(WORKERS))
    stats = listener.stats()
    check_lines(read_lines(out), dict.fromkeys(range(WORKERS), PER_WORKER)).assert_exact()
    assert stats["received"] == WORKERS * PER_WORKER
    assert stats["malformed_total"] == stats["gaps"] == stats["dropped"] == stats["duplicates"] == 0


def _setup_then_log(producer: int) -> None:
    mplog.setup_worker()
    _log_block(producer)


def test_plain_process_that_calls_setup_worker_first_delivers_every_record(tmp_path, mp_context, transport):
    out = tmp_path / "out.log"
    with mplog.start_listener(file_config(out), transport=transport) as listener:
        procs = [mp_context.Process(target=_setup_then_log, args=(i,)) for i in range(WORKERS)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(60)
        assert [proc.exitcode for proc in procs] == [0] * WORKERS
    stats = listener.stats()
    check_lines(read_lines(out), dict.fromkeys(range(WORKERS), PER_WORKER)).assert_exact()
    assert stats["received"] == WORKERS * PER_WORKER
    assert stats["malformed_total"] == stats["gaps"] == stats["dropped"] == stats["duplicates"] == 0


def _senders_by_pid(stats: dict[str, Any]) -> dict[int, int]:
    """Records received per sending pid (one process may have several streams)."""
    by_pid: dict[int, int] = {}
    for sender in stats["senders"].values():
        by_pid[sender["pid"]] = by_pid.get(sender["pid"], 0) + sender["records"]
    return by_pid


def _log_block_and_report_pid(producer: int) -> int:
    _log_block(producer)
    return os.getpid()


def test_fork_pool_without_initializer_delivers_from_each_child_over_its_own_socket(tmp_path, transport):
    # The parent is configured by start_listener (route_parent=True); the forked
    # workers never call setup_worker: the at-fork reset gives each its own socket.
    out = tmp_path / "out.log"
    context = multiprocessing.get_context("fork")
    with mplog.start_listener(file_config(out), transport=transport) as listener, context.Pool(WORKERS) as pool:
        pids = set(pool.map(_log_block_and_report_pid, range(WORKERS), chunksize=1))
    stats = listener.stats()
    check_lines(read_lines(out), dict.fromkeys(range(WORKERS), PER_WORKER)).assert_exact()
    by_pid = _senders_by_pid(stats)
    assert by_pid.pop(os.getpid(), 0) == 0  # nothing went out under the parent's identity
    assert set(by_pid) == pids
    assert sum(by_pid.values()) == WORKERS * PER_WORKER
    assert stats["malformed_total"] == stats["gaps"] == stats["dropped"] == stats["duplicates"] == 0


def test_os_fork_child_of_a_configured_process_delivers_over_its_own_socket(tmp_path, transport):
    out = tmp_path / "out.log"
    with mplog.start_listener(file_config(out), transport=transport) as listener:
        logging.getLogger("parent").info("%s", payload(9, 0))  # the parent's socket is open before the fork
        pids = []
        for producer in range(WORKERS):
            with warnings.catch_warnings():
                # Python 3.12+ warns that this process has threads (the listener handle's);
                # the at-fork reset is exactly what this test checks.
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                code = 1
                try:
                    _log_block(producer)
                    logging.shutdown()  # what a bare os.fork() child must do before os._exit()
                    code = 0
                finally:
                    os._exit(code)
            pids.append(pid)
        codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
        assert codes == [0] * WORKERS
    stats = listener.stats()
    expected = dict.fromkeys(range(WORKERS), PER_WORKER)
    expected[9] = 1
    check_lines(read_lines(out), expected).assert_exact()
    by_pid = _senders_by_pid(stats)
    assert by_pid == {**dict.fromkeys(pids, PER_WORKER), os.getpid(): 1}
    assert stats["malformed_total"] == stats["gaps"] == stats["dropped"] == stats["duplicates"] == 0


def _setup_twice() -> None:
    first = mplog.setup_worker()
    second = mplog.setup_worker()
    assert first is second
    assert logging.getLogger().handlers == [first]


def _log_block_calling_setup_again(producer: int) -> int:
    log = logging.getLogger("pool")
    for seq in range(PER_WORKER):
        if seq == PER_WORKER // 2:
            mplog.setup_worker()  # again, mid-stream, with records still buffered
        log.info("%s", payload(producer, seq))
    return producer


def test_setup_worker_called_twice_never_duplicates_records(tmp_path, mp_context):
    out = tmp_path / "out.log"
    with mplog.start_listener(file_config(out)) as listener, mp_context.Pool(WORKERS, initializer=_setup_twice) as pool:
        pool.map(_log_block_calling_setup_again, range(WORKERS), chunksize=1)
    stats = listener.stats()
    check_lines(read_lines(out), dict.fromkeys(range(WORKERS), PER_WORKER)).assert_exact()
    assert stats["received"] == WORKERS * PER_WORKER
    assert stats["duplicates"] == stats["gaps"] == 0
    # one stream per worker process: a second handler would have shown up as another stream
    workers = [s for s in stats["senders"].values() if s["pid"] != os.getpid()]
    assert len({s["pid"] for s in workers}) == len(workers)
    assert sum(s["records"] for s in workers) == WORKERS * PER_WORKER


# ---------------------------------------------------------------- the listener's config decides, as in one process

_LEVEL_LOGGERS = ["other", "app", "app.quiet", "app.private", "app.kept", "app.kept.child", "app.filtered"]


def _levels_config(directory: Path) -> dict[str, Any]:
    def to_file(name: str, **extra: Any) -> dict[str, Any]:
        spec = {"class": "logging.FileHandler", "filename": str(directory / f"{name}.log"), "formatter": "f"}
        return spec | extra

    return {
        "version": 1,
        "formatters": {"f": {"format": "%(name)s %(levelname)s %(message)s"}},
        "filters": {"only_kept": {"name": "app.kept"}},
        "handlers": {
            "all": to_file("all"),
            "errors": to_file("errors", level="ERROR"),
            "kept": to_file("kept", filters=["only_kept"]),
            "private": to_file("private"),
        },
        "loggers": {
            "app": {"level": "INFO", "handlers": ["errors", "kept"]},
            "app.quiet": {"level": "WARNING"},
            "app.private": {"handlers": ["private"], "propagate": False},
            "app.filtered": {"filters": ["only_kept"]},
        },
        "root": {"level": "DEBUG", "handlers": ["all"]},
    }


def _level_calls() -> None:
    for number, name in enumerate(_LEVEL_LOGGERS):
        log = logging.getLogger(name)
        for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL):
            log.log(level, "%s", payload(number, level))


def _level_worker() -> None:
    mplog.setup_worker()
    _level_calls()


_ONE_PROCESS = """
import json, logging.config, sys
from mplog.config import load_config
from test_pool_accounting import _level_calls
config, _ = load_config(json.loads(sys.argv[1]))
logging.config.dictConfig(config)
_level_calls()
logging.shutdown()
"""


def test_levels_propagation_and_filters_in_the_listener_config_behave_as_in_one_process(tmp_path):
    reference, through = tmp_path / "one-process", tmp_path / "mplog"
    reference.mkdir()
    through.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPLOG_")}
    here = Path(__file__).resolve().parent
    env["PYTHONPATH"] = os.pathsep.join([str(here), str(here.parent)])
    subprocess.run(
        [sys.executable, "-c", _ONE_PROCESS, json.dumps(_levels_config(reference))], env=env, check=True, timeout=30
    )
    with mplog.start_listener(_levels_config(through), route_parent=False) as listener:
        proc = multiprocessing.get_context("fork").Process(target=_level_worker)
        proc.start()
        proc.join(30)
        assert proc.exitcode == 0
    assert listener.stats()["received"] == len(_LEVEL_LOGGERS) * 5  # the worker sends all; the listener decides
    for name in ("all", "errors", "kept", "private"):
        assert read_lines(through / f"{name}.log") == read_lines(reference / f"{name}.log"), name
    every = read_lines(through / "all.log")
    assert not any(line.startswith("app.quiet INFO") for line in every)  # below app.quiet's level
    assert not any(line.startswith("app DEBUG") for line in every)  # below app's level
    assert not any(line.startswith("app.private ") for line in every)  # propagate = false
    assert not any(line.startswith("app.filtered ") for line in every)  # the logger's filter
    assert len(read_lines(through / "private.log")) == 4  # app.private inherits INFO from app
    assert {line.split()[1] for line in read_lines(through / "errors.log")} == {"ERROR", "CRITICAL"}
    assert {line.split()[0] for line in read_lines(through / "kept.log")} == {"app.kept", "app.kept.child"}
