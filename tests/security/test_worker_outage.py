"""A worker whose listener is away keeps its program running: one bounded wait, then counted drops.

Under the default ``block`` policy a full buffer used to wait the whole ``block_timeout`` for
every batch while the listener was away (200,000 calls took 351 s). Now the first wait that
gets nothing through begins an outage: the policy drops at once, counted, until the transport
takes a frame again, and says so once on stderr at each end. The rule lives in the worker's
batching, so it holds for every transport: ZeroMQ over ipc and tcp, the multiprocessing
transport and acknowledged delivery.
"""

from __future__ import annotations

import json
import os
import re
import select
import socket
import subprocess
import sys

import pytest
from helpers import check_lines, file_config, read_lines, wait_for
from ledger import build_ledger

import mplog

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COUNT = 150_000
ROUNDS = 2  # live and away runs interleaved, each side's best compared: a shared machine's load comes in bursts

# Logs COUNT numbered records as fast as it can, reports the time and its counters, waits
# for a line on stdin, then closes and reports its counters again.
WORKER = r"""
import json, logging, sys, time
import mplog
endpoint, count, options = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
handler = mplog.setup_worker(endpoint, **options)
log = logging.getLogger("outage")
start = time.perf_counter()
for seq in range(count):
    log.info("P0:%08d:00000:", seq)
seconds = time.perf_counter() - start
print(json.dumps({"event": "logged", "seconds": seconds, "counters": handler.counters}), flush=True)
sys.stdin.readline()
handler.close()
print(json.dumps({"event": "closed", "counters": handler.counters}), flush=True)
"""


_started: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_worker_left_behind():
    """A test that fails half-way still ends its worker processes."""
    yield
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            proc.kill()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        proc.wait(timeout=10)


class Worker:
    """A worker process (no MPLOG_* settings inherited from the test process)."""

    def __init__(self, endpoint: str, options: dict) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MPLOG_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, endpoint, str(COUNT), json.dumps(options)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        _started.append(self.proc)

    def read(self, event: str, timeout: float = 60.0) -> dict:
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            self.proc.kill()
            raise AssertionError(f"no {event!r} from the worker within {timeout:g} s")
        line = self.proc.stdout.readline()
        if not line:
            self.proc.kill()
            raise AssertionError(f"worker ended early: {self.proc.communicate()[1]}")
        message = json.loads(line)
        assert message["event"] == event, message
        return message

    def abandon(self) -> None:
        """End a worker whose run was only timed."""
        self.proc.kill()
        self.proc.communicate(timeout=10)

    def close(self) -> tuple[dict, str]:
        self.proc.stdin.write("close\n")
        self.proc.stdin.flush()
        closed = self.read("closed")
        _, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, err
        return closed["counters"], err


def every_sender_closed(listener: mplog.Listener) -> bool:
    senders = listener.stats()["senders"].values()
    return bool(senders) and all(s["closed"] for s in senders)


def free_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def endpoints(kind: str, tmp_path) -> tuple[str, str]:
    """Two endpoints of the kind: one with a live listener, one whose listener comes late."""
    if kind == "tcp":
        return f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    scheme = "mp" if kind == "mp" else "ipc"
    return f"{scheme}://{tmp_path}/live.sock", f"{scheme}://{tmp_path}/away.sock"


def listen(config: dict, endpoint: str, kind: str) -> mplog.Listener:
    return mplog.start_listener(
        config,
        endpoint=endpoint,
        transport="multiprocessing" if kind == "mp" else "zmq",
        ack=kind == "ack",
        route_parent=False,
        export_env=False,
    )


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["ipc", "tcp", "mp", "ack"])
def test_a_worker_whose_listener_is_away_waits_once_then_drops_fast_and_reports_the_drops(tmp_path, kind):
    live_endpoint, away_endpoint = endpoints(kind, tmp_path)
    options = {"ack": kind == "ack", "close_timeout": 30}  # the default policy: block, block_timeout 2 s
    # A buffer that COUNT calls overfill: a worker's frames (wire version 2, records as columns)
    # hold these records in ~7 MB, under the default bound of 16 MiB.
    options["max_buffer_bytes"] = 4 * 1024 * 1024

    # The same calls with a live listener (the baseline, in this run) and with nobody listening
    # at the away endpoint: one wait of block_timeout, then the program runs on at full speed.
    live: list[float] = []
    away: list[float] = []
    with listen(file_config(tmp_path / "live.log"), live_endpoint, kind) as listener:
        for round_ in range(ROUNDS):
            worker = Worker(live_endpoint, options)
            live.append(worker.read("logged")["seconds"])
            worker.close()
            worker = Worker(away_endpoint, options)
            logged = worker.read("logged")  # before: about 100 s (a 2 s wait for every batch past the bound)
            away.append(logged["seconds"])
            if round_ < ROUNDS - 1:
                worker.abandon()  # the last one goes on below
        wait_for(lambda: every_sender_closed(listener), timeout=60)
    print(f"{kind}: {COUNT} calls, best of {ROUNDS}: {min(away):.2f} s with no listener, {min(live):.2f} s with one")
    assert min(away) <= 3 * min(live)
    counters = logged["counters"]
    assert counters["outages"] == 1
    assert counters["sent"] == 0 and counters["dropped"] > 0
    assert counters["dropped"] + counters["buffered"] == COUNT

    # The listener appears: the buffer is delivered and the drops are reported with it.
    out = tmp_path / "away.log"
    with listen(file_config(out), away_endpoint, kind) as listener:
        closed, err = worker.close()
        stats = wait_for(lambda: listener.stats() if every_sender_closed(listener) else None, timeout=60)
    (sender,) = stats["senders"].values()
    assert closed["dropped"] == counters["dropped"]
    assert sender["dropped"] == counters["dropped"]  # the worker's count reached the listener
    assert sender["records"] + sender["dropped"] == COUNT and sender["gaps"] == 0  # the ledger balances exactly
    lines = read_lines(out)
    check = check_lines(lines, {})
    assert check.duplicates == check.truncated == check.garbage == 0
    assert len(check.seen) == len(lines) == sender["records"] == COUNT - counters["dropped"]
    assert all(producer == 0 and seq < COUNT for producer, seq in check.seen)
    build_ledger(lines, {0: COUNT}, stats, {0: worker.proc.pid}).assert_balanced()  # written + dropped == logged
    said = [line for line in err.splitlines() if line.startswith("mplog:")]
    assert len(said) == 3, err
    began = re.match(rf"mplog: the listener at {re.escape(away_endpoint)} took nothing for (\d+\.\d) s", said[0])
    assert began and float(began[1]) >= 2.0, said[0]  # block_timeout, once
    assert "dropped without waiting, and counted, until it takes them again" in said[0]
    assert said[1].startswith(f"mplog: the listener at {away_endpoint} takes records again after ")
    assert said[1].split("; ")[1].startswith(f"{counters['dropped']} records were dropped meanwhile")
    assert said[2].startswith(f"mplog: 0 records could not be delivered and {counters['dropped']} were dropped")
