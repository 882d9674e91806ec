"""Records per second from the listener into rsyslog: RFC 5424 over TCP, RELP, and the stdlib SysLogHandler.

``python -m benchmarks.syslog_forward`` measures, in one run and on one machine:

1. **end to end**: ``--workers`` processes log ``--records`` numbered records each into one
   listener whose only handler forwards to a private rsyslogd (its own per system, on a
   loopback port, writing every message to a file through a ruleset with a direct queue);
   the figure is records divided by the time from the first record logged to the last
   line rsyslog wrote. ``null`` is the same listener with a ``NullHandler``: the ceiling
   of the listener's generic dispatch on this machine, for comparison.
2. **listener cost**: the CPU time one listener process spends per record forwarding with
   that handler: decoding, validating and dispatching recorded frames (as the listener
   does) plus the handler, its writer thread included, until rsyslog has every record
   (``time.process_time``, in microseconds). ``null`` is the listener's own part; the
   difference is the handler's part; ``ceiling`` is 1e6 / cost, the records/s one listener
   process could forward on this machine. At 100,000 records/s a listener has 10 us per
   record in all.

The stdlib handler gets an ``imtcp`` with ``AddtlFrameDelimiter="0"`` (its messages end
in NUL); without it a stock ``imtcp`` joins them. Figures depend on the machine and its
load: compare systems within one run, as ratios.
"""

from __future__ import annotations

import argparse
import json
import logging
import logging.handlers
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import mplog
import mplog.handlers
from mplog.listener.dispatch import BatchDispatcher
from mplog.wire import Sender, build_frame, check_records, decode_header, encode_record, encode_sender

SYSTEMS = ("null", "rfc5424-tcp", "relp", "stdlib-tcp")
RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Daemon:
    """A private rsyslogd with one input of the kind a system needs, writing %msg% lines to a file."""

    def __init__(self, directory: Path, system: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir, self.port, self.out = directory, _free_port(), directory / "out.log"
        if system == "relp":
            module, input_type = 'module(load="imrelp")', "imrelp"
        elif system == "stdlib-tcp":
            module, input_type = 'module(load="imtcp" addtlFrameDelimiter="0")', "imtcp"
        else:
            module, input_type = 'module(load="imtcp")', "imtcp"
        conf = directory / "rsyslog.conf"
        conf.write_text(
            f'global(workDirectory="{directory}" maxMessageSize="64k")\n{module}\n'
            'template(name="m" type="string" string="%msg%\\n")\n'
            f'ruleset(name="out" queue.type="Direct") {{ action(type="omfile" file="{self.out}" template="m") }}\n'
            f'input(type="{input_type}" address="127.0.0.1" port="{self.port}" ruleset="out")\n'
        )
        self.proc = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(conf), "-i", str(directory / "pid")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def lines(self) -> int:
        try:
            with open(self.out, "rb") as f:
                return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
        except FileNotFoundError:
            return 0

    def wait_lines(self, count: int, timeout: float = 120.0) -> float:
        """Wait until the file holds ``count`` lines; the monotonic time it was first seen so."""
        deadline = time.monotonic() + timeout
        while (n := self.lines()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"rsyslog wrote {n} of {count} lines")
            time.sleep(0.01)
        return time.monotonic()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def handler_spec(system: str, port: int) -> dict[str, Any]:
    if system == "null":
        return {"class": "logging.NullHandler"}
    # "block": when rsyslog is slower than the listener, the listener waits (no record is dropped).
    if system == "rfc5424-tcp":
        return {
            "class": "mplog.handlers.RFC5424Handler",
            "address": ["127.0.0.1", port],
            "transport": "tcp",
            "policy": "block",
        }
    if system == "relp":
        return {"class": "mplog.handlers.RELPHandler", "address": ["127.0.0.1", port], "policy": "block"}
    return {
        "class": "logging.handlers.SysLogHandler",
        "address": ["127.0.0.1", port],
        "socktype": "ext://socket.SOCK_STREAM",
    }


def _config(system: str, port: int) -> dict[str, Any]:
    spec = handler_spec(system, port)
    spec["formatter"] = "plain"
    return {
        "version": 1,
        "formatters": {"plain": {"format": "%(message)s"}},
        "handlers": {"out": {**spec, "level": "INFO"}},
        "root": {"level": "INFO", "handlers": ["out"]},
    }


def _worker(endpoint: str, producer: int, count: int, start: Any) -> None:
    mplog.setup_worker(endpoint)
    log = logging.getLogger("bench")
    start.wait()
    for seq in range(count):
        log.info("P%d:%08d order placed for customer %d", producer, seq, seq % 977)
    logging.shutdown()


def end_to_end(system: str, workers: int, records: int, directory: Path) -> float:
    """Records/s from the first record logged to the last line rsyslog wrote (null: to the listener's count)."""
    daemon = Daemon(directory / system, system) if system != "null" else None
    context = multiprocessing.get_context("fork")
    try:
        with mplog.start_listener(_config(system, daemon.port if daemon else 0), route_parent=False) as listener:
            start = context.Event()
            procs = [
                context.Process(target=_worker, args=(listener.endpoint, p, records, start)) for p in range(workers)
            ]
            for proc in procs:
                proc.start()
            time.sleep(0.3)
            began = time.monotonic()
            start.set()
            total = workers * records
            if daemon is not None:
                ended = daemon.wait_lines(total)
            else:
                while listener.stats()["received"] < total:
                    time.sleep(0.01)
                ended = time.monotonic()
            for proc in procs:
                proc.join(60)
        return total / (ended - began)
    finally:
        if daemon is not None:
            daemon.stop()


def _frames(records: int) -> list[bytes]:
    """A worker's frames of 512 numbered records, as the listener receives them."""
    maker = logging.getLogger("bench")
    sender = encode_sender(Sender("web7", 4242, 1.0, 0x1C9E02AA))
    frames = []
    for first in range(0, records, 512):
        packed = [
            encode_record(
                maker.makeRecord(
                    "bench", logging.INFO, __file__, 1, "P0:%08d order placed for customer %d", (seq, seq % 977), None
                )
            )
            for seq in range(first, min(first + 512, records))
        ]
        frames.append(build_frame(sender, first, 0, 0, packed))
    return frames


def listener_cost(system: str, records: int, directory: Path) -> float:
    """CPU microseconds per record of one listener process forwarding with ``system``.

    Decode, validate and dispatch (the listener's generic path, records built with their
    sender and sequence number) plus the handler, its writer thread included, until rsyslog
    has every record. ``null``: the same with a NullHandler (the listener's own part).
    """
    daemon = Daemon(directory / f"cost-{system}", system) if system != "null" else None
    logger = logging.getLogger("bench")
    try:
        spec = handler_spec(system, daemon.port if daemon else 0)
        cls = {"rfc5424-tcp": "RFC5424Handler", "relp": "RELPHandler"}.get(system)
        if cls is not None:
            handler: logging.Handler = getattr(mplog.handlers, cls)(
                spec["address"], spec.get("transport", "tcp"), max_buffer=records
            )
        elif system == "stdlib-tcp":
            handler = logging.handlers.SysLogHandler(("127.0.0.1", spec["address"][1]), socktype=socket.SOCK_STREAM)
        else:
            handler = logging.NullHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.handlers[:], logger.propagate, logger.level = [handler], False, logging.INFO
        frames = _frames(records)
        dispatcher = BatchDispatcher()
        dispatcher.positions = bool(getattr(handler, "wants_positions", False))
        cpu = time.process_time()
        for frame in frames:
            decoded = decode_header(frame)
            check_records(decoded.records)
            dispatcher.dispatch(decoded.records, "web7", sender=decoded.sender.key, first_seq=decoded.seq)
        wait = getattr(handler, "wait_confirmed", None)
        if wait is not None:
            wait(120)
        used = time.process_time() - cpu
        if daemon is not None:
            daemon.wait_lines(records)
        handler.close()
        return used / records * 1e6
    finally:
        logger.handlers[:], logger.propagate, logger.level = [], True, logging.NOTSET  # forked workers log through it
        if daemon is not None:
            daemon.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--records", type=int, default=100_000, help="per worker")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--output", help="write the results as JSON to this file")
    args = parser.parse_args(argv)
    systems = [s for s in args.systems.split(",") if s]
    results: dict[str, Any] = {
        "workers": args.workers,
        "records_per_worker": args.records,
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "loadavg_before": os.getloadavg(),
        "python": sys.version.split()[0],
        "end_to_end": {},
        "listener_cost_us": {},
    }
    with tempfile.TemporaryDirectory(prefix="mplog-syslog-bench-") as tmp:
        directory = Path(tmp)
        for repeat in range(args.repeats):  # interleaved: load changes hit every system alike
            for system in systems:
                rate = end_to_end(system, args.workers, args.records, directory / f"r{repeat}")
                results["end_to_end"].setdefault(system, []).append(round(rate))
                cost = listener_cost(system, args.records, directory / f"r{repeat}")
                results["listener_cost_us"].setdefault(system, []).append(round(cost, 2))
    results["loadavg_after"] = os.getloadavg()
    load = results["loadavg_before"][0]
    print(f"{args.workers} workers x {args.records} records, median of {args.repeats} (load average {load:.1f})")
    print(f"{'system':<14}{'records/s':>11}{'vs null':>9}{'listener us/record':>20}{'handler part':>14}{'ceiling':>10}")
    null = statistics.median(results["end_to_end"]["null"]) if "null" in results["end_to_end"] else None
    own = statistics.median(results["listener_cost_us"]["null"]) if "null" in results["listener_cost_us"] else None
    for system in systems:
        rate = statistics.median(results["end_to_end"][system])
        cost = statistics.median(results["listener_cost_us"][system])
        ratio = f"{rate / null:.2f}" if null else "-"
        part = f"{cost - own:.2f}" if own is not None and system != "null" else "-"
        print(f"{system:<14}{rate:>11,.0f}{ratio:>9}{cost:>20.2f}{part:>14}{1e6 / cost:>10,.0f}")
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
