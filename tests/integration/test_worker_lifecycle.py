"""How workers begin and end: stale forkservers, Pool.terminate(), SIGTERM while closing,
SIGKILL mid-stream, and exit with the listener gone.

Every record is numbered (tests/helpers.py payloads) and the output is checked exactly.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import check_lines, file_config, payload, read_lines, wait_for

import mplog

pytestmark = pytest.mark.integration

TESTS_DIR = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    """The environment for a child interpreter: tests/ importable, no inherited endpoint."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPLOG_")}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _assert_clean(stats: dict[str, Any]) -> None:
    assert stats["malformed_total"] == stats["gaps"] == stats["dropped"] == stats["duplicates"] == 0


# ---------------------------------------------------------------- forkserver and the environment

_FORKSERVER_SCRIPT = """
import logging, multiprocessing, os, sys
import mplog
from helpers import file_config, payload

def note_endpoint(queue):
    queue.put(os.environ.get("MPLOG_ENDPOINT"))

def work(producer, count):
    mplog.setup_worker()  # no argument: finds the listener on its own
    log = logging.getLogger("fs")
    for seq in range(count):
        log.info("%s", payload(producer, seq))

if __name__ == "__main__":
    out, count = sys.argv[1], int(sys.argv[2])
    ctx = multiprocessing.get_context("forkserver")
    first = mplog.start_listener(file_config(out + ".first"), route_parent=False)
    queue = ctx.SimpleQueue()
    starter = ctx.Process(target=note_endpoint, args=(queue,))  # starts the forkserver now
    starter.start(); starter.join()
    assert queue.get() == first.endpoint
    first.stop()
    with mplog.start_listener(file_config(out), route_parent=False) as second:
        procs = [ctx.Process(target=work, args=(i, count)) for i in range(2)]
        for p in procs: p.start()
        for p in procs: p.join(60)
        stale = ctx.Process(target=note_endpoint, args=(queue,))
        stale.start(); stale.join()
        print("child env endpoint", queue.get(), "first", first.endpoint, "second", second.endpoint)
        print("exitcodes", [p.exitcode for p in procs])
    print("received", second.stats()["received"], "first received", first.stats()["received"])
"""


@pytest.mark.timeout(60)
def test_forkserver_started_by_an_earlier_listener_finds_the_current_one(tmp_path):
    # A fresh interpreter, so that the forkserver is certainly started during the
    # first listener's lifetime (and holds its environment) whatever ran before.
    script = tmp_path / "forkserver_script.py"
    script.write_text(textwrap.dedent(_FORKSERVER_SCRIPT))
    out = tmp_path / "out.log"
    count = 2_000
    proc = subprocess.run(
        [sys.executable, str(script), str(out), str(count)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"child env endpoint (\S+) first (\S+) second (\S+)", proc.stdout)
    assert match is not None, proc.stdout
    child_env, first, second = match.groups()
    assert child_env == first != second  # the forkserver's environment is really stale
    assert "exitcodes [0, 0]" in proc.stdout
    assert f"received {2 * count} first received 0" in proc.stdout
    check_lines(read_lines(out), {0: count, 1: count}).assert_exact()
    assert read_lines(str(out) + ".first") == []


# ---------------------------------------------------------------- Pool.terminate()

_SMALL = 1_000


def _log_small(producer: int) -> int:
    log = logging.getLogger("pool")
    for seq in range(_SMALL):
        log.info("%s", payload(producer, seq))
    return producer


def _terminate_within(pool: Any, seconds: float) -> float:
    """Call pool.terminate() with a bound; on a hang, kill the workers and fail."""
    started = time.monotonic()
    thread = threading.Thread(target=pool.terminate, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        stuck = [p.pid for p in pool._pool if p.is_alive()]
        for pid in stuck:
            os.kill(pid, signal.SIGKILL)
        thread.join(10)
        pytest.fail(f"Pool.terminate() hung for {seconds} s; workers {stuck} never acted on SIGTERM")
    return time.monotonic() - started


@pytest.mark.timeout(90)
def test_pool_terminate_under_forkserver_never_hangs(tmp_path):
    out = tmp_path / "out.log"
    ctx = multiprocessing.get_context("forkserver")
    rounds, workers = 3, 4
    durations = []
    with mplog.start_listener(file_config(out)) as listener:
        for r in range(rounds):
            pool = ctx.Pool(workers, initializer=mplog.setup_worker)
            try:
                pool.map(_log_small, [r * workers + w for w in range(workers)], chunksize=1)
            finally:
                durations.append(_terminate_within(pool, 15.0))
            pool.join()
    stats = listener.stats()
    check_lines(read_lines(out), dict.fromkeys(range(rounds * workers), _SMALL)).assert_exact()
    assert stats["received"] == rounds * workers * _SMALL
    _assert_clean(stats)
    assert max(durations) < 15.0


# ---------------------------------------------------------------- SIGTERM while a worker closes

_CLOSE_RECORDS = 2_000


def _log_then_return(producer: int, done: Any) -> None:
    mplog.setup_worker()
    log = logging.getLogger("closing")
    for seq in range(_CLOSE_RECORDS):
        log.info("%s", payload(producer, seq, 100))
    done.set()  # every record is logged: from here the process only closes and exits


@pytest.mark.timeout(90)
def test_sigterm_during_close_neither_duplicates_nor_loses(tmp_path, transport):
    out = tmp_path / "out.log"
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(20)
    trials = 16
    codes = []
    with mplog.start_listener(file_config(out), transport=transport) as listener:
        for producer in range(trials):
            done = ctx.Event()
            proc = ctx.Process(target=_log_then_return, args=(producer, done))
            proc.start()
            assert done.wait(30)
            time.sleep(rng.uniform(0.0, 0.02))  # lands in the exit-time flush and close, or just after
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            proc.join(30)
            codes.append(proc.exitcode)
        # Short-lived pools: the with block's terminate() meets workers that are still flushing.
        for r in range(4):
            with ctx.Pool(2, initializer=mplog.setup_worker) as pool:
                pool.map(_log_small, [100 + 2 * r, 101 + 2 * r], chunksize=1)
    stats = listener.stats()
    expected = dict.fromkeys(range(trials), _CLOSE_RECORDS) | dict.fromkeys(range(100, 108), _SMALL)
    result = check_lines(read_lines(out), expected)
    assert result.duplicates == 0
    result.assert_exact()
    assert set(codes) <= {0, -signal.SIGTERM}
    assert stats["received"] == trials * _CLOSE_RECORDS + 8 * _SMALL
    _assert_clean(stats)


# ---------------------------------------------------------------- SIGKILL mid-stream


def _log_forever(producer: int) -> None:
    mplog.setup_worker()
    log = logging.getLogger("victim")
    for seq in range(10**8):
        log.info("%s", payload(producer, seq, 200))


def _log_around_kill(producer: int, killed: Any, count: int) -> None:
    mplog.setup_worker()
    log = logging.getLogger("survivor")
    for seq in range(count):
        if seq == count // 2:
            assert killed.wait(30)
        log.info("%s", payload(producer, seq, 200))


@pytest.mark.timeout(90)
def test_worker_killed_with_sigkill_leaves_a_gap_free_prefix_and_the_others_carry_on(tmp_path, transport):
    out = tmp_path / "out.log"
    ctx = multiprocessing.get_context("fork")
    count = 5_000
    with mplog.start_listener(file_config(out), transport=transport) as listener:
        killed = ctx.Event()
        victim = ctx.Process(target=_log_forever, args=(0,))
        survivors = [ctx.Process(target=_log_around_kill, args=(p, killed, count)) for p in (1, 2)]
        for proc in [victim, *survivors]:
            proc.start()

        def victim_records() -> int:
            senders = listener.stats()["senders"].values()
            return sum(s["records"] for s in senders if s["pid"] == victim.pid)

        wait_for(lambda: victim_records() > 2_000, timeout=30)
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(10)
        killed.set()
        for proc in survivors:
            proc.join(60)
        assert victim.exitcode == -signal.SIGKILL
        assert [p.exitcode for p in survivors] == [0, 0]
        assert listener.running
    stats = listener.stats()
    result = check_lines(read_lines(out), {1: count, 2: count})
    result.assert_exact()
    delivered = sorted(seq for (producer, seq) in result.seen if producer == 0)
    assert delivered == list(range(len(delivered)))  # a gap-free prefix of its numbering
    assert len(delivered) > 2_000
    assert stats["received"] == 2 * count + len(delivered)
    malformed = stats["malformed"]
    if transport == "zmq":
        assert malformed == {}  # ZeroMQ delivers whole frames or nothing
    else:
        assert set(malformed) <= {"truncated"}  # at most the frame the victim was writing
        assert malformed.get("truncated", 0) <= 1
    assert stats["duplicates"] == 0


# ---------------------------------------------------------------- exit with the listener gone

_EXIT_SCRIPT = """
import logging, os, sys, time
import mplog
from helpers import payload

how = sys.argv[1]
handler = mplog.setup_worker(close_timeout=float(sys.argv[2]))
log = logging.getLogger("orphan")
for seq in range(100):
    log.info("%s", payload(0, seq))
print("exiting at", time.monotonic(), flush=True)
if how == "close":
    handler.close()
if how == "sys_exit":
    sys.exit(0)
"""


def _stopped_endpoint(transport: str) -> str:
    listener = mplog.start_listener(None, transport=transport, route_parent=False, export_env=False)
    endpoint = listener.endpoint
    listener.stop()
    return endpoint


EXIT_CASES = [
    ("never_started", "sys_exit"),
    ("never_started", "return"),
    ("never_started", "close"),
    ("stopped", "return"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("listener_state", "how"), EXIT_CASES, ids=["-".join(case) for case in EXIT_CASES])
def test_worker_exits_promptly_and_reports_once_when_the_listener_is_gone(tmp_path, transport, how, listener_state):
    if listener_state == "stopped":
        endpoint = _stopped_endpoint(transport)
    else:
        scheme = "ipc://" if transport == "zmq" else "mp://"
        endpoint = f"{scheme}{tmp_path}/absent.sock"
    close_timeout = 0.5
    script = tmp_path / "orphan.py"
    script.write_text(textwrap.dedent(_EXIT_SCRIPT))
    env = _env() | {"MPLOG_ENDPOINT": endpoint}
    proc = subprocess.Popen(
        [sys.executable, str(script), how, str(close_timeout)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    ended = time.monotonic()
    assert proc.returncode == 0, stderr
    exiting_at = float(re.search(r"exiting at (\S+)", stdout)[1])  # type: ignore[index]
    exit_seconds = ended - exiting_at
    assert exit_seconds < 1.5 + close_timeout, f"exit took {exit_seconds:.2f} s"
    reports = [line for line in stderr.splitlines() if line.startswith("mplog:")]
    assert len(reports) == 1, stderr
    assert re.match(r"mplog: 100 records could not be delivered and 0 were dropped by policy", reports[0])
    assert "Traceback" not in stderr


@pytest.mark.timeout(60)
def test_exit_with_the_listener_gone_waits_close_timeout_once(tmp_path, transport):
    # Default options; logging.shutdown() flushes every handler again after mplog's own
    # exit hook closed it: that second flush must not wait close_timeout a second time.
    close_timeout = mplog.WorkerOptions().close_timeout
    endpoint = _stopped_endpoint(transport)
    script = tmp_path / "orphan.py"
    script.write_text(textwrap.dedent(_EXIT_SCRIPT))
    env = _env() | {"MPLOG_ENDPOINT": endpoint}
    proc = subprocess.run(
        [sys.executable, str(script), "return", str(close_timeout)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    ended = time.monotonic()
    assert proc.returncode == 0, proc.stderr
    exit_seconds = ended - float(proc.stdout.split()[-1])
    assert close_timeout <= exit_seconds < 1.5 + close_timeout, f"exit took {exit_seconds:.2f} s"
    assert proc.stderr.count("records could not be delivered") == 1


# ---------------------------------------------------------------- a setup_worker() that fails half-way

_HALF_BUILT_SCRIPT = """
import logging, sys
import mplog

try:
    mplog.setup_worker("tcp://127.0.0.1:9", curve_server_key=sys.argv[1])
except mplog.ConfigError as exc:
    kept = exc  # its traceback keeps the half-built handler alive until exit, as an uncaught one would
    print("refused")
half = [ref() for ref in logging._handlerList if isinstance(ref(), mplog.MplogHandler)]
for handler in half:
    handler.flush()  # the stdlib signature: returns None, never raises here
    print(handler.flush_within(), handler.counters["sent"], handler.counters["buffered"])
    handler.close()
    handler.close()
logging.getLogger("after").warning("the root logger is as it was")
print(len(half), [type(h).__name__ for h in logging.getLogger().handlers])
"""


def test_a_handler_whose_transport_cannot_open_is_inert_at_exit(tmp_path):
    # The transport is opened while the handler is built (here: a server key file that does
    # not exist); logging.shutdown() still flushes and closes the half-built handler at exit.
    result = subprocess.run(
        [sys.executable, "-c", _HALF_BUILT_SCRIPT, str(tmp_path / "absent.key")],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["refused", "True 0 0", "1 []"]
    assert result.stderr == "the root logger is as it was\n"  # logging's last resort; no traceback at exit
