"""Attacks on the worker's pending batch: one flat list, ROW slots per record, packed by columns at flush.

A hostile outsider's view of :class:`mplog.worker.handler.MplogHandler` since the pending
batch became one flat list (``mplog.wire.columns.pack_pending``: a column sent as one value
when its packed bytes are its first value's repeated; version 1 when a record was packed at
logging time or a value needs sanitizing). Each attack uses only what a user's code can do:
filters that set standard attributes to odd values, ``extra=``, exceptions and stacks mixed
with plain records, logging from signal handlers and from inside a flush, many threads,
fork while other threads log, odd batch sizes, urgent records, an absent listener. Every
record is numbered and accounted for exactly: what the listener wrote, against
``wire_version=1`` (the record-by-record path) and against the worker's own counters
(``sent + dropped + buffered`` equals the records logged).

Each worker is a real process (``python -c``) talking to a real listener; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for

import mplog

pytestmark = [pytest.mark.integration]

REPO = str(Path(__file__).resolve().parents[2])

# Every standard field a filter can change, message first (the record's number), one line per record.
TEXT_FORMAT = (
    "%(message)s|%(name)s|%(levelno)s|%(levelname)s|%(pathname)s|%(filename)s|%(module)s|%(lineno)s|"
    "%(funcName)s|%(threadName)s|%(thread)s|%(process)s|%(processName)s|%(msecs)r|%(relativeCreated)r|"
    "%(created)r|%(taskName)s"
)

# Run first in every worker: the odd values the filters use, and done() to report back.
PRELUDE = """
import enum, json, logging, os, signal, sys, threading, time, uuid
import mplog

class S(str): pass
class I(enum.IntEnum):
    A = 7
class E(enum.Enum):
    A = "ea"
class Obj:
    def __repr__(self): return "<Obj>"

def done(**report):
    print(json.dumps(report), flush=True)
"""


def _config(tmp_path: Path) -> dict[str, Any]:
    """The listener writes every record twice: a text line of every field, and a JSON object with the extras."""
    return {
        "version": 1,
        "formatters": {
            "text": {"format": TEXT_FORMAT},
            "json": {"()": "mplog.formatters.JSONFormatter", "sort_keys": True},
        },
        "handlers": {
            "text": {
                "class": "logging.FileHandler",
                "filename": str(tmp_path / "out.log"),
                "formatter": "text",
                "encoding": "utf-8",
                "errors": "backslashreplace",
            },
            "json": {
                "class": "logging.FileHandler",
                "filename": str(tmp_path / "out.jsonl"),
                "formatter": "json",
                "encoding": "utf-8",
            },
        },
        "root": {"level": "DEBUG", "handlers": ["text", "json"]},
    }


def _worker(code: str, timeout: float = 45) -> dict[str, Any]:
    """Run ``code`` (after PRELUDE) as a worker process of the current listener; its last done() report."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        capture_output=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    lines = proc.stdout.decode().splitlines()
    assert lines, proc.stderr.decode(errors="replace")[-3000:]
    report: dict[str, Any] = json.loads(lines[-1])
    report["stderr"] = proc.stderr.decode(errors="replace")
    return report


def _json_records(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "out.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def _messages(tmp_path: Path) -> list[str]:
    return [record["message"] for record in _json_records(tmp_path)]


def _numbers(messages: list[str], stream: str) -> list[int]:
    """The numbers of ``stream``'s records (messages ``<stream>:<n>``), in the order written."""
    pattern = re.compile(rf"^{re.escape(stream)}:(\d+)$")
    return [int(m[1]) for message in messages if (m := pattern.match(message))]


def _settled(listener: mplog.Listener, records: int, timeout: float = 20) -> None:
    """Wait (bounded) until the listener has dispatched ``records`` records."""
    wait_for(lambda: listener.stats()["received"] >= records, timeout=timeout, what=f"{records} records received")


def _balanced(counters: dict[str, int], logged: int) -> None:
    assert counters["sent"] + counters["dropped"] + counters["buffered"] == logged, counters


# ---------------------------------------------------------------- attack 1: odd standard fields, folded or not

# (field, value) set by a filter on the mplog handler; each on a whole batch (the column folds
# to one value when its bytes allow), on every other record of the next (a mixed column), and
# on a whole batch holding one record packed at logging time (an exception: version 1 records).
MUTATIONS = [
    ("name", "S('subclassed')"),
    ("module", "S('m')"),
    ("lineno", "I.A"),
    ("lineno", "True"),
    ("lineno", "0"),
    ("lineno", "1"),
    ("lineno", "12.0"),
    ("lineno", "float('nan')"),
    ("lineno", "2**70"),
    ("lineno", "2**64 - 1"),
    ("lineno", "-(2**63)"),
    ("name", "None"),
    ("name", "['a', 'b']"),
    ("threadName", "('a',)"),
    ("threadName", "{'a': 1}"),
    ("threadName", "{}"),
    ("module", "b'mod'"),
    ("funcName", "Obj()"),
    ("funcName", "uuid.UUID(int=5)"),
    ("funcName", "E.A"),
    ("module", "'a\\udc80b'"),
    ("msecs", "float('inf')"),
    ("msecs", "-0.0"),
    ("taskName", "'task'"),
    ("taskName", "5"),
    ("levelname", "S('INFO')"),
    ("levelno", "20.0"),
    ("thread", "None"),
    ("process", "0"),
    ("process", "1"),
    ("process", "True"),
    ("pathname", "'p' * 3000"),
]
BATCH = 7  # records per batch: the worker's batch_records, flush_interval long enough never to cut one


def _mutating_worker(wire: int) -> str:
    return f"""
    MUTATIONS = [{", ".join(f"({field!r}, lambda: {value})" for field, value in MUTATIONS)}]
    WIRE, BATCH = {wire}, {BATCH}
    handler = mplog.setup_worker(wire_version=WIRE, batch_records=BATCH, flush_interval=30.0)

    def mutate(record):
        k = record.args[1]
        record.created, record.msecs, record.relativeCreated = 1.7e9 + k, float(k % 1000), float(k)
        record.thread, record.process, record.processName, record.threadName = 11, 22, "PN", "TN"
        field, value = MUTATIONS[k // (3 * BATCH)]
        part = k // BATCH % 3  # 0: the whole batch, 1: every other record, 2: the whole batch and one exception
        if part != 1 or k % 2:
            setattr(record, field, value())
        return True

    handler.addFilter(mutate)
    log = logging.getLogger("attack")
    try:
        raise ValueError("boom")
    except ValueError:
        error = sys.exc_info()
    for k in range(len(MUTATIONS) * 3 * BATCH):
        packed_now = k // BATCH % 3 == 2 and k % BATCH == 3
        log.info("v%d:%d", WIRE, k, exc_info=error if packed_now else None)
    handler.flush_within(10.0)
    counters = handler.counters
    handler.close()
    done(counters=counters, logged=k + 1)
    """


@pytest.mark.timeout(90)
def test_odd_standard_fields_reach_the_file_as_with_wire_version_1(tmp_path):
    """Attack 1: every odd value a filter can put in a standard field, on whole batches (folded
    columns), mixed batches and batches holding an exception: version 2 writes exactly the
    lines and JSON objects version 1 writes, every record once and in order."""
    total = len(MUTATIONS) * 3 * BATCH
    with mplog.start_listener(_config(tmp_path), route_parent=False) as listener:
        reports = {wire: _worker(_mutating_worker(wire)) for wire in (1, 2)}
        _settled(listener, 2 * total)
    for report in reports.values():
        assert report["logged"] == total
        assert report["counters"]["sent"] == total and report["counters"]["dropped"] == 0, report["counters"]
        assert report["counters"]["errors"] == 0 and "Traceback" not in report["stderr"], report["stderr"]
    messages = _messages(tmp_path)
    for wire in (1, 2):
        assert _numbers(messages, f"v{wire}") == list(range(total))
    by_wire: dict[int, list[Any]] = {1: [], 2: []}
    for record in _json_records(tmp_path):
        wire, _, k = record["message"].partition(":")
        by_wire[int(wire[1:])].append({**record, "message": k})
    assert by_wire[1] == by_wire[2]
    lines = {1: [], 2: []}  # the text lines (an exception's traceback lines included)
    for line in (tmp_path / "out.log").read_text(encoding="utf-8").splitlines():
        if line.startswith(("v1:", "v2:")):
            wire = int(line[1])
        lines[wire].append(line[3:] if line.startswith(("v1:", "v2:")) else line)
    assert lines[1] == lines[2]
    # Spot checks of what the fields became (the listener's repair names a wrong value as mplog_bad_<field>).
    first = {k: by_wire[2][k] for k in range(0, total, 3 * BATCH)}
    assert first[0]["name"] == "subclassed"
    assert first[2 * 3 * BATCH]["lineno"] == 7  # an IntEnum is its int
    assert first[8 * 3 * BATCH]["lineno"] == 0 and first[8 * 3 * BATCH]["mplog_bad_lineno"] == str(2**70)
    assert first[16 * 3 * BATCH]["module"] == "" and first[16 * 3 * BATCH]["mplog_bad_module"] == "b'mod'"


# ---------------------------------------------------------------- attack 2: signal handlers log into the buffer


SIGNALS_WORKER = """
handler = mplog.setup_worker(batch_records={batch})
log = logging.getLogger("attack")
fired = [0]

def on_alarm(signum, frame):
    n = fired[0]
    fired[0] += 1
    if n % 30 == 0:
        log.error("S:%d", n)  # urgent (a frame at once), but inside a logging call only appended
    elif n % 3 == 1:
        log.info("S:%d", n, extra={{"from_signal": n}})  # packed at logging time
    else:
        log.info("S:%d", n)

signal.signal(signal.SIGALRM, on_alarm)
signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
N = {count}
for k in range(N):
    if k % 97 == 0:
        log.warning("M:%d", k, stack_info=True)
    elif k % 251 == 0:
        log.error("M:%d", k)
    else:
        log.info("M:%d", k)
    if k % 1000 == 0:
        os.kill(os.getpid(), signal.SIGALRM)  # and one sent by the process to itself
signal.setitimer(signal.ITIMER_REAL, 0, 0)
signal.signal(signal.SIGALRM, signal.SIG_IGN)
handler.flush_within(10.0)
counters = handler.counters
handler.close()
done(counters=counters, main=N, signals=fired[0])
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("batch", "count"), [(1, 500), (7, 3000), (512, 6000)])
def test_records_logged_from_a_signal_handler_while_the_main_thread_logs_arrive_once(tmp_path, batch, count):
    """Attack 2: SIGALRM every 0.5 ms (and os.kill to itself) while the main thread logs in a tight
    loop: the handler's records enter the buffer re-entrantly (urgent ones too, extras packed at
    logging time); both streams arrive whole, the main thread's in its order, and the counters
    balance. (A signal handler's records may be written in another order than their numbers:
    a logging call interrupted by the next signal finishes after it, as with logging's own
    handlers.)"""
    with mplog.start_listener(_config(tmp_path), route_parent=False) as listener:
        report = _worker(SIGNALS_WORKER.format(batch=batch, count=count))
        logged = report["main"] + report["signals"]
        _balanced(report["counters"], logged)
        assert report["counters"]["sent"] == logged and report["counters"]["errors"] == 0, report["counters"]
        _settled(listener, logged)
    assert report["signals"] > 5, report  # the timer did interrupt the loop
    messages = _messages(tmp_path)
    assert _numbers(messages, "M") == list(range(report["main"]))
    assert sorted(_numbers(messages, "S")) == list(range(report["signals"]))
    assert len(messages) == logged
    extras = sorted(r["from_signal"] for r in _json_records(tmp_path) if "from_signal" in r)
    assert extras == [n for n in range(report["signals"]) if n % 30 and n % 3 == 1]


# ---------------------------------------------------------------- attack 2b: a re-entrant record at every instruction

# A signal handler runs between two bytecodes of whatever the main thread was doing (and a
# finalizer or a value's __repr__ may run at almost any of them). This worker makes that
# happen at each instruction of the worker's buffer path in turn: a trace function watches
# every bytecode of mplog.worker and mplog.wire.columns and, at the one it waits for, logs a
# record (tracing is off while it runs, as a signal handler runs to its end). First over the
# logging call and its flush, then over close(), one new handler per instruction.
# The trace, run first in both workers below: tracer() watches every bytecode of the worker's
# buffer path (mplog.worker, mplog.wire.columns), adds it to `seen`, and at the one in trap[0]
# calls sprung() once, with tracing off while it runs.
TRACE_PRELUDE = """
from mplog.worker import handler as H, outbox as O
from mplog.wire import columns as C

codes = set()
for module in (H, O, C):
    for value in vars(module).values():
        for f in vars(value).values() if isinstance(value, type) else [value]:
            f = getattr(f, "fget", f)
            if getattr(getattr(f, "__code__", None), "co_filename", None) == module.__file__:
                codes.add(f.__code__)
seen, trap = set(), [None]

def on_opcode(frame, event, arg):
    here = (frame.f_code, frame.f_lasti)
    seen.add(here)
    if trap[0] == here:
        trap[0] = None
        sprung()
    return on_opcode

def tracer(frame, event, arg):
    if frame.f_code in codes:
        frame.f_trace_opcodes = True
        return on_opcode
    return None

def in_order(instructions):
    return sorted(instructions, key=lambda here: (here[0].co_qualname, here[1]))
"""

INSTRUCTIONS_WORKER = """
handler = mplog.setup_worker(batch_records=3, flush_interval=30, wire_version={wire})
logged = dict.fromkeys("MSCD", 0)  # M, S: pass 1 (S logged by the trap); C, D: pass 2 (D by the trap)
fired, into = [0], [None, None]  # the stream and logger the trap's record goes to

def numbered(stream, logger, level=logging.INFO):
    n = logged[stream]
    logged[stream] += 1
    logger.log(level, "%s:%d", stream, n)

def sprung():
    fired[0] += 1
    numbered(into[0], into[1], logging.ERROR if fired[0] % 5 == 0 else logging.INFO)

# Pass 1: each instruction a logging call, its flush and flush_within() run.
log = logging.getLogger("attack")
sys.settrace(tracer)
for k in range(30):
    numbered("M", log, logging.ERROR if k % 7 == 6 else logging.INFO)
handler.flush_within(5)
sys.settrace(None)
buffer_path = in_order(seen)
for here in buffer_path:
    trap[0], into[:] = here, ["S", log]
    sys.settrace(tracer)
    for k in range(8):
        numbered("M", log, logging.ERROR if k % 7 == 6 else logging.INFO)
        if trap[0] is None:
            break
    trap[0] = None
    handler.flush_within(5)
    sys.settrace(None)
handler.flush_within(10)
counters = handler.counters

# Pass 2: each instruction close() runs, on a handler of its own each time (logger "close").
closing = logging.getLogger("close")
closing.propagate = False
def close_one(here):
    options = mplog.WorkerOptions(batch_records=3, flush_interval=30, wire_version={wire})
    h = H.MplogHandler(os.environ["MPLOG_ENDPOINT"], options)
    closing.handlers[:] = [h]
    for k in range(2):
        numbered("C", closing)
    trap[0], into[:] = here, ["D", closing]
    sys.settrace(tracer)
    h.close()
    sys.settrace(None)
    trap[0] = None
    return h.counters
seen.clear()
close_one(None)
close_path = in_order(seen)
close_dropped = 0
for here in close_path:
    c = close_one(here)
    assert c["buffered"] == 0, c
    close_dropped += c["dropped"]
handler.close()
done(counters=counters, logged=logged, fired=fired[0], buffer_path=len(buffer_path), close_path=len(close_path),
     close_dropped=close_dropped)
"""


@pytest.mark.timeout(150)
@pytest.mark.parametrize("wire", [2, 1])
def test_a_record_logged_at_any_instruction_of_the_buffer_path_is_counted_once(tmp_path, wire):
    """Attack 2b: a record logged re-entrantly at each bytecode of the logging call, its flush and
    close(), in turn. Every record arrives exactly once or, logged after close() began, is
    counted as dropped; the worker's counters balance. (Before: a record logged between the
    pending batch's count and its swap went out uncounted; the next frame's number overlapped it
    and the listener took one record of that frame for a duplicate: 11 of ~2,500 missing, the
    counters one short for each. Seen once in CI as the signal test above failing.)"""
    with mplog.start_listener(_config(tmp_path), route_parent=False) as listener:
        report = _worker(TRACE_PRELUDE + INSTRUCTIONS_WORKER.format(wire=wire), timeout=120)
        logged, counters = report["logged"], report["counters"]
        assert counters["sent"] == logged["M"] + logged["S"], (counters, logged)
        assert counters["dropped"] == counters["buffered"] == counters["errors"] == 0, counters
        arrived = sum(logged.values()) - report["close_dropped"]
        _settled(listener, arrived, timeout=40)
        assert listener.stats()["received"] == arrived
    assert report["buffer_path"] > 200 and report["close_path"] > 50, report  # the trace did reach the code
    assert report["fired"] > 300, report
    messages = _messages(tmp_path)
    assert _numbers(messages, "M") == list(range(logged["M"]))
    assert sorted(_numbers(messages, "S")) == list(range(logged["S"]))
    # close() delivers what was logged before it (in order within a handler; each has a connection of its own)
    assert sorted(_numbers(messages, "C")) == list(range(logged["C"]))
    during = _numbers(messages, "D")
    assert len(set(during)) == len(during) and len(during) + report["close_dropped"] == logged["D"]
    # Only a record logged after close() marked the handler closed is lost: one logged between
    # its flush and that moment is sent (it was counted as "could not be delivered").
    assert "could not be delivered" not in report["stderr"], report["stderr"][-2000:]
    assert len(messages) == arrived


# SIGTERM (Pool.terminate(), a service manager) at each instruction of a logging call and
# its flush: mplog's SIGTERM handler, called by the trap where the signal would have
# interrupted, in a child forked for each instruction (the handler ends the process).
SIGTERM_WORKER = """
handler = mplog.setup_worker(batch_records=3, flush_interval=30)
log = logging.getLogger("attack")

def sprung():
    H._on_sigterm(signal.SIGTERM, None)

sys.settrace(tracer)
for k in range(30):
    log.log(logging.ERROR if k % 7 == 6 else logging.INFO, "P:%d", k)
handler.flush_within(5)
sys.settrace(None)
children = []
for i, here in enumerate(in_order(seen)):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # log until the trap has fired: the handler closes and dies of SIGTERM
        os.close(r)
        trap[0] = here
        sys.settrace(tracer)
        for k in range(8):
            os.write(w, b"%d " % k)  # the record about to be logged
            log.log(logging.ERROR if k % 7 == 6 else logging.INFO, "T%d:%d", i, k)
            if trap[0] is None:
                break
        sys.settrace(None)
        os.write(w, b"end")  # the trap never fired here: a plain exit
        handler.close()
        os._exit(0)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    said = b""
    while chunk := os.read(r, 4096):
        said += chunk
    os.close(r)
    children.append([here[0].co_qualname, here[1], os.waitstatus_to_exitcode(status), said.decode().split()])
handler.close()
done(children=children)
"""


@pytest.mark.timeout(150)
def test_sigterm_at_any_instruction_of_a_logging_call_delivers_every_record_logged_before_it_once(tmp_path):
    """Attack 2c: SIGTERM where a signal can interrupt a logging call or its flush, each
    instruction in turn, each in a child of its own: the child dies of SIGTERM, every record it
    logged before arrived exactly once, and the record it was logging arrived at most once."""
    with mplog.start_listener(_config(tmp_path), route_parent=False) as listener:
        report = _worker(TRACE_PRELUDE + SIGTERM_WORKER, timeout=120)
        children = report["children"]
        _settled(listener, 30, timeout=10)
        closed = lambda: sum(sender["closed"] for sender in listener.stats()["senders"].values())  # noqa: E731
        wait_for(lambda: closed() == len(children) + 1, timeout=30, what="every sender's goodbye")
        stats = listener.stats()
    assert stats["gaps"] == stats["duplicates"] == stats["dropped"] == 0, stats
    arrived: dict[int, list[int]] = {}
    for message in _messages(tmp_path):
        if m := re.match(r"^T(\d+):(\d+)$", message):
            arrived.setdefault(int(m[1]), []).append(int(m[2]))
    killed = 0
    for i, (where, offset, code, said) in enumerate(children):
        got = arrived.get(i, [])
        assert len(set(got)) == len(got), (where, offset, got)
        if said[-1] == "end":  # not reached by this child's calls
            assert code == 0 and sorted(got) == list(range(len(said) - 1)), (where, offset, code, said, got)
            continue
        killed += 1
        in_hand = int(said[-1])
        assert code == -signal.SIGTERM, (where, offset, code, report["stderr"][-2000:])
        assert set(range(in_hand)) <= set(got) <= set(range(in_hand + 1)), (where, offset, in_hand, got)
    assert len(children) > 200 and killed > 300 * len(children) // 557, (len(children), killed)


# ---------------------------------------------------------------- attack 3: many threads, odd batch sizes


THREADS_WORKER = """
handler = mplog.setup_worker(batch_records={batch}, wire_version={wire})
log = logging.getLogger("attack")
N, T = {count}, {threads}
start = threading.Barrier(T)

def produce(t):
    start.wait()
    adapter = logging.LoggerAdapter(log, {{"thread_no": t}})
    for k in range(N):
        if k % 50 == 0:
            adapter.info("T%d:%d", t, k)  # extra= through an adapter: packed at logging time
        elif k % 333 == 0:
            log.error("T%d:%d", t, k)
        elif k % 77 == 0:
            try:
                raise KeyError(k)
            except KeyError:
                log.info("T%d:%d", t, k, exc_info=True)
        else:
            log.info("T%d:%d", t, k)

threads = [threading.Thread(target=produce, args=(t,)) for t in range(T)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join(60)
handler.flush_within(10.0)
counters = handler.counters
handler.close()
done(counters=counters, logged=N * T, threads=T, per=N)
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("batch", "wire", "count"), [(1, 2, 150), (13, 2, 2000), (13, 1, 2000), (512, 2, 2000)])
def test_many_threads_logging_at_once_lose_nothing_and_keep_each_threads_order(tmp_path, batch, wire, count):
    """Attack 3: 6 threads released together, plain records mixed with extras (LoggerAdapter),
    exceptions and urgent ones, batches of 1, 13 and 512, wire versions 1 and 2."""
    with mplog.start_listener(_config(tmp_path), route_parent=False) as listener:
        report = _worker(THREADS_WORKER.format(batch=batch, wire=wire, count=count, threads=6))
        logged = report["logged"]
        assert report["counters"]["sent"] == logged and report["counters"]["dropped"] == 0, report["counters"]
        _balanced(report["counters"], logged)
        _settled(listener, logged)
    messages = _messages(tmp_path)
    assert len(messages) == logged
    for t in range(report["threads"]):
        assert _numbers(messages, f"T{t}") == list(range(report["per"]))


# ---------------------------------------------------------------- attack 4: fork while other threads log


# Batches of 9: about 1,000 frames in flight when the parent closes. Before a closing worker waited
# for the listener to read its ipc connection, about 1 run in 15 on a loaded machine lost the
# parent's last frame and goodbye (docs/reliability.md, "A worker's last records over ipc").
FORK_WORKER = """
import multiprocessing
# linger: the listener (two handlers, one of them JSON) can be seconds behind the 10,200 records at
# exit on a loaded machine; over ipc the tail waits in the connection for linger at most (1 s by
# default, then lost as documented: T2's last 13 to 66 records, on 3.11 and 3.13 alike).
handler = mplog.setup_worker(batch_records=9, linger=60.0)
log = logging.getLogger("attack")
N, T, CHILD = 3000, 3, 200
go = threading.Event()

def produce(t):
    go.wait()
    for k in range(N):
        log.info("T%d:%d", t, k, exc_info=None, stack_info=(k % 101 == 0))

def child_logs(c):
    for k in range(CHILD):
        log.info("C%d:%d", c, k)

threads = [threading.Thread(target=produce, args=(t,)) for t in range(T)]
for thread in threads:
    thread.start()
go.set()
pids, procs = [], []
ctx = multiprocessing.get_context("fork")
for c in range(6):
    if c % 2:
        proc = ctx.Process(target=child_logs, args=(c,))
        proc.start()
        procs.append(proc)
        continue
    pid = os.fork()
    if pid == 0:  # the child: log, deliver, leave without running the parent's cleanup
        try:
            child_logs(c)
            logging.shutdown()
        finally:
            os._exit(0)
    pids.append(pid)
for pid in pids:
    os.waitpid(pid, 0)
for proc in procs:
    proc.join(30)
for thread in threads:
    thread.join(60)
handler.flush_within(10.0)
counters = handler.counters
handler.close()
done(counters=counters, logged=N * T, threads=T, per=N, children=6, child=CHILD,
     exitcodes=[p.exitcode for p in procs])
"""


@pytest.mark.timeout(90)
def test_fork_while_threads_log_neither_duplicates_nor_loses_a_record(tmp_path):
    """Attack 4: os.fork and multiprocessing's fork while 3 threads fill the buffer: a child never
    sends the parent's pending records (no duplicate), the parent loses none, every child's arrive."""
    with mplog.start_listener(_config(tmp_path), route_parent=False) as listener:
        report = _worker(FORK_WORKER)
        assert report["exitcodes"] == [0, 0, 0], report
        logged = report["logged"] + report["children"] * report["child"]
        assert report["counters"]["sent"] == report["logged"], report["counters"]
        _balanced(report["counters"], report["logged"])
        _settled(listener, logged)
    messages = _messages(tmp_path)
    assert len(messages) == logged
    for t in range(report["threads"]):
        assert _numbers(messages, f"T{t}") == list(range(report["per"]))
    for c in range(report["children"]):
        assert _numbers(messages, f"C{c}") == list(range(report["child"]))


# ---------------------------------------------------------------- attack 5: no listener, every policy: exact counters


ABSENT_WORKER = """
handler = mplog.setup_worker({endpoint!r}, batch_records={batch}, policy={policy!r}, max_buffer_bytes=3000,
                             block_timeout=0.05, close_timeout=0.2, level=logging.DEBUG)
log = logging.getLogger("attack")
wrong = []
for k in range(1500):
    if k % 10 == 0:
        log.info("A:%d", k, extra={{"k": k}})
    elif k % 91 == 0:
        log.error("A:%d", k)
    else:
        log.info("A:%d", k)
    c = handler.counters
    if c["sent"] + c["dropped"] + c["buffered"] != k + 1:
        wrong.append((k, c))
counters = handler.counters
handler.close()
done(counters=counters, after=handler.counters, logged=1500, wrong=wrong[:5])
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest", "block"])
@pytest.mark.parametrize("batch", [1, 6])
def test_with_no_listener_the_counters_account_for_every_record_after_every_call(tmp_path, policy, batch):
    """Attack 5: nobody listens and the outbox holds 3000 bytes: after every logging call, records
    sent to the transport + dropped + buffered equal the records logged; close() counts the rest."""
    endpoint = f"ipc://{tmp_path}/nobody.sock"
    report = _worker(ABSENT_WORKER.format(endpoint=endpoint, batch=batch, policy=policy))
    assert report["wrong"] == [], report["wrong"]
    _balanced(report["counters"], report["logged"])
    assert report["counters"]["dropped"] > 0, report["counters"]
    after = report["after"]
    assert after["buffered"] == 0 and after["sent"] + after["dropped"] == report["logged"], after
    assert after["buffered_bytes"] == 0, after  # what close() could not deliver is counted as dropped, in bytes too


# ---------------------------------------------- defects found: one hostile value, a record logged inside a flush

HOSTILE_WORKER = """
class Hostile:
    # isinstance() asks for __class__ when the type does not match: this one raises
    @property
    def __class__(self):
        raise RuntimeError("no class")

handler = mplog.setup_worker(batch_records=10, wire_version={wire}, flush_interval=30.0)

def poison(record):
    if record.args[0] == 3:
        record.funcName = Hostile()
    return True

handler.addFilter(poison)
log = logging.getLogger("attack")
for k in range(25):
    log.info("H:%d", k)
handler.flush_within(10.0)
counters = handler.counters
handler.close()
done(counters=counters, logged=25)
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("wire", [1, 2])
def test_one_value_that_refuses_isinstance_costs_its_field_not_its_whole_batch(tmp_path, wire):
    """Defect 1 (also before the flat batch): a filter sets a field to an object whose
    ``__class__`` raises. Both packers refuse it, the sanitizer's isinstance() raised, and the
    flush lost the whole batch of 10 records, counted nowhere (sent 0, dropped 0, buffered 0,
    errors 1, and a traceback on the program's stderr). Now the value is described instead."""
    with mplog.start_listener(_config(tmp_path), route_parent=False) as listener:
        report = _worker(HOSTILE_WORKER.format(wire=wire))
        _balanced(report["counters"], report["logged"])
        assert report["counters"]["sent"] == report["logged"], report["counters"]
        assert report["counters"]["errors"] == 0 and "Traceback" not in report["stderr"], report["stderr"]
        _settled(listener, report["logged"])
    records = _json_records(tmp_path)
    assert [r["message"] for r in records] == [f"H:{k}" for k in range(report["logged"])]
    assert records[3]["funcName"] == "<unencodable Hostile: RuntimeError>"
    assert all(r["funcName"] == "<module>" for k, r in enumerate(records) if k != 3)


INNER_WORKER = """
out = {out!r}
handler = mplog.setup_worker(batch_records={batch}, flush_interval=0.05, level=logging.DEBUG)
log = logging.getLogger("attack")

def arrived(text, within):
    end = time.monotonic() + within
    while time.monotonic() < end:
        if os.path.exists(out) and text in open(out, encoding="utf-8").read():
            return True
        time.sleep(0.02)  # polling the listener's file, bounded by within
    return False

log.info("warm-up")  # the connection is up before the attack: a refused send would kick the flusher
handler.flush_within(10.0)
assert arrived("warm-up", 10.0)

class Loud:
    # Packed only at flush (neither packer takes it); describing it logs a record.
    def __repr__(self):
        logging.getLogger("inner").warning("logged from inside the flush")
        return "<Loud>"

def loud(record):
    if record.args and record.args[0] == 2:  # the last record logged: no later call sends it
        record.funcName = Loud()
    return True

handler.addFilter(loud)
for k in range(3):
    log.{level}("L:%d", k)
in_time = arrived("logged from inside the flush", {within})
counters = handler.counters
handler.close()
done(counters=counters, after=handler.counters, in_time=in_time, logged=5)
"""


@pytest.mark.timeout(60)
def test_a_record_logged_from_inside_a_flush_is_sent_within_the_flush_interval(tmp_path):
    """Defect 2 (also before the flat batch): a record logged while the buffer is being flushed
    (a value's __repr__ that logs; the same path as a signal handler that logs during a flush)
    is only appended to the next batch, and nothing woke the flusher thread for it: it waited
    for the next logging call, or for exit, however long that was."""
    out = tmp_path / "out.log"
    with mplog.start_listener(_config(tmp_path), route_parent=False) as listener:
        # The flusher thread flushes the batch (512 records, none urgent) and runs the __repr__.
        report = _worker(INNER_WORKER.format(out=str(out), batch=512, level="info", within=3.0))
        _settled(listener, report["logged"])
    assert report["in_time"], "the record logged inside the flush waited for the handler's close"
    _balanced(report["counters"], report["logged"])
    assert "inside the flush" in out.read_text(encoding="utf-8")


@pytest.mark.timeout(60)
def test_a_record_logged_from_inside_closes_flush_is_delivered_not_counted_lost(tmp_path):
    """Defect 2, at close: the record logged inside close()'s own flush was counted as one that
    'could not be delivered' (and said so on stderr) with the listener up and taking frames."""
    out = tmp_path / "out.log"
    with mplog.start_listener(_config(tmp_path), route_parent=False) as listener:
        # 0.0 s: the worker closes at once, with the Loud record still pending.
        report = _worker(INNER_WORKER.format(out=str(out), batch=512, level="info", within=0.0))
        _settled(listener, report["logged"])
    assert report["after"]["dropped"] == 0 and report["after"]["sent"] == report["logged"], report["after"]
    assert "could not be delivered" not in report["stderr"], report["stderr"]
    assert "inside the flush" in out.read_text(encoding="utf-8")


INTERRUPT_WORKER = """
class Interrupting:
    # Raises KeyboardInterrupt the first time it is described, inside the flush: what a signal
    # handler raising (Ctrl-C, an alarm-based timeout) does wherever it interrupts.
    raised = False
    def __repr__(self):
        if not Interrupting.raised:
            Interrupting.raised = True
            raise KeyboardInterrupt
        return "<Interrupting>"

handler = mplog.setup_worker(batch_records=10, flush_interval=30.0)

def interrupting(record):
    if record.args[0] == 3:
        record.funcName = Interrupting()
    return True

handler.addFilter(interrupting)
log = logging.getLogger("attack")
interrupted = []
for k in range(25):
    try:
        log.info("K:%d", k)
    except KeyboardInterrupt:
        interrupted.append(k)
handler.flush_within(10.0)
counters = handler.counters
handler.close()
done(counters=counters, logged=25, interrupted=interrupted)
"""


@pytest.mark.timeout(60)
def test_an_exception_raised_into_a_flush_puts_the_batch_back_instead_of_losing_it(tmp_path):
    """Defect 3 (also before the flat batch): an exception that is no Exception raised while a
    logging call packs its batch (KeyboardInterrupt, a signal handler's timeout) reaches the
    caller, as it must; but the batch, already taken out of the pending list, was lost with it,
    counted nowhere. Now it goes back in front of the pending records and the next flush sends it."""
    with mplog.start_listener(_config(tmp_path), route_parent=False) as listener:
        report = _worker(INTERRUPT_WORKER)
        assert report["interrupted"] == [9], report  # the call that filled the batch, and flushed it
        _balanced(report["counters"], report["logged"])
        assert report["counters"]["sent"] == report["logged"], report["counters"]
        _settled(listener, report["logged"])
    assert _messages(tmp_path) == [f"K:{k}" for k in range(report["logged"])]


# ---------------------------------------------- defects found by an outsider (threads, asyncio)

REPLACE_WORKER = """
first = mplog.setup_worker()
log = logging.getLogger("attack")
T, N = 16, 2000
started = threading.Barrier(T + 1)

def produce(t):
    started.wait()
    for k in range(N):
        log.info("R%d:%d", t, k)

threads = [threading.Thread(target=produce, args=(t,)) for t in range(T)]
for thread in threads:
    thread.start()
started.wait()
time.sleep(0.02)  # the threads are logging
second = mplog.setup_worker(sndhwm=10)  # another transport option: a new handler replaces the first
for thread in threads:
    thread.join()
replaced = second is not first
second.flush_within(10.0)
counters = [first.counters, second.counters]
second.close()
done(counters=counters, logged=T * N, replaced=replaced)
"""


@pytest.mark.timeout(90)
def test_setup_worker_replacing_the_handler_while_threads_log_loses_nothing(tmp_path):
    """An outsider: ``setup_worker()`` called again with another transport option while 32
    threads logged lost 29,407-30,176 of 32,000 records, counted nowhere: the root logger had
    no handler while the old one closed (logging drops INFO records then), and the records
    that reached the old handler after its close were counted only in its own counters. The
    new handler now takes the old one's place in one step, and a record that reaches the old
    one after its close goes to the new one."""
    with mplog.start_listener(_config(tmp_path), route_parent=False) as listener:
        report = _worker(REPLACE_WORKER)
        assert report["replaced"], report
        first, second = report["counters"]
        assert first["dropped"] == second["dropped"] == first["errors"] == second["errors"] == 0, report["counters"]
        assert first["sent"] + second["sent"] == report["logged"], report["counters"]
        _settled(listener, report["logged"])
        assert listener.stats()["received"] == report["logged"]
    messages = _messages(tmp_path)
    for t in range(16):
        # Each thread's records, once. Not necessarily in order across the replacement: the old
        # handler's last batch and the new handler's first travel on two connections (a full run
        # once had a thread's record 12 written before its 11).
        assert sorted(_numbers(messages, f"R{t}")) == list(range(2000)), t
    assert "was logged after" not in report["stderr"], report["stderr"]


DEFERRED_SIGTERM_WORKER = """
import socket
from mplog.worker import outbox as O

# An asyncio program owns the signal wakeup fd (loop.add_signal_handler): mplog's SIGTERM
# watcher thread is not started, so only mplog's SIGTERM handler acts.
reader, writer = socket.socketpair()
writer.setblocking(False)
signal.set_wakeup_fd(writer.fileno())
handler = mplog.setup_worker(flush_interval=30)
log = logging.getLogger("attack")
for k in range(20):
    log.info("M:%d", k)
raised = []

def other_thread():
    try:
        log.info("T:0")
    except BaseException as exc:  # a logging call must never raise
        raised.append(repr(exc))
        print(json.dumps({{"raised": repr(exc)}}), flush=True)

def trap(frame, event, arg):
    # SIGTERM while the main thread is inside flush_within() (it holds the buffer: mplog
    # defers the signal), and another thread's logging call that ends meanwhile.
    if event == "call" and frame.f_code is O.BatchingHandler._flush_locked.__code__:
        sys.settrace(None)
        os.kill(os.getpid(), signal.SIGTERM)
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join(0.3)
    return None

sys.settrace(trap)
handler.flush_within(10.0)
sys.settrace(None)
time.sleep(10)  # SIGTERM should have ended this process by now
done(survived=True, raised=raised)
"""


@pytest.mark.timeout(60)
def test_sigterm_deferred_during_a_flush_is_acted_on_by_the_main_thread_not_by_another_threads_logging_call(tmp_path):
    """An outsider: SIGTERM arrived while the main thread was inside ``flush_within()``, so mplog
    deferred it; the next logging call to end on another thread then closed every handler and
    called signal.signal() off the main thread: ValueError raised into that logging call, and in an
    asyncio program (the watcher thread not started) the process never died (5 of 20 runs hung,
    73,522-85,590 records lost after the close). Now the main thread acts on it when it leaves
    mplog: the process dies of SIGTERM, no logging call raises, every record logged before arrives."""
    with mplog.start_listener(_config(tmp_path), route_parent=False) as listener:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-c", PRELUDE + textwrap.dedent(DEFERRED_SIGTERM_WORKER.format())],
            capture_output=True,
            timeout=30,
            env=env,
            check=False,
        )
        took = time.monotonic() - started
        stderr = proc.stderr.decode(errors="replace")
        assert proc.returncode == -signal.SIGTERM, (proc.returncode, proc.stdout.decode(), stderr[-3000:])
        assert took < 8, took
        assert b"raised" not in proc.stdout and "ValueError" not in stderr, (proc.stdout.decode(), stderr[-3000:])
        _settled(listener, 20)
    messages = _messages(tmp_path)
    assert _numbers(messages, "M") == list(range(20))
    assert len(_numbers(messages, "T")) <= 1
