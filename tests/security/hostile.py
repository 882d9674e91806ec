"""Tools for the bounds tests: raw senders built with msgpack alone, a well-behaved sender
whose records' delay is measured, and the listener process's memory.

Frames are packed here from docs/wire-format.md, not with mplog's encoder, so a test
sends exactly the bytes a careless or hostile program would.
"""

from __future__ import annotations

import multiprocessing
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing import connection as mpc
from pathlib import Path
from typing import Any

import msgpack
import psutil
import zmq

VERSION = 1
FLUSH_INTERVAL = 0.05  # a worker's default flush_interval
GOOD_RE = re.compile(r"good (\d+) ")


def record(name: str = "app", message: str = "m", levelno: int = 20, extra: dict[str, Any] | None = None) -> list[Any]:
    """A valid record array of 20 fields (docs/wire-format.md, Records)."""
    level = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}.get(levelno, "INFO")
    now = time.time()
    return [
        name, levelno, level, message, now, 0.0, 0.0, "/src/app.py", "app.py", "app", 1,
        "fn", 1, "MainThread", 1, "MainProcess", None, None, None, extra or {},
    ]  # fmt: skip


def frame(sender: list[Any], seq: int, records: list[Any], flags: int = 0) -> bytes:
    """Pack ``records`` (already arrays, or anything a hostile sender puts there) under a frame header."""
    data: bytes = msgpack.packb([VERSION, sender, seq, 0, flags, records], use_bin_type=True)
    return data


class RawPush:
    """A bare ZeroMQ PUSH socket at the listener's endpoint (no mplog code)."""

    def __init__(self, endpoint: str, sndhwm: int = 1000) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context(io_threads=1)
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, sndhwm)
        self.sock.connect(endpoint)

    def send(self, data: bytes, timeout: float = 5.0) -> bool:
        return bool(self.sock.poll(int(timeout * 1000), zmq.POLLOUT)) and self._send(data)

    def _send(self, data: bytes) -> bool:
        try:
            self.sock.send(data, zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


class RawMp:
    """A bare ``multiprocessing.connection`` client at an ``mp://`` endpoint (send_bytes framing only)."""

    def __init__(self, endpoint: str) -> None:
        self.conn = mpc.Client(endpoint[len("mp://") :], family="AF_UNIX")

    def send(self, data: bytes, timeout: float = 5.0) -> bool:
        self.conn.send_bytes(data)
        return True

    def close(self) -> None:
        self.conn.close()


def raw_sender(endpoint: str, sndhwm: int = 1000) -> RawPush | RawMp:
    return RawMp(endpoint) if endpoint.startswith("mp://") else RawPush(endpoint, sndhwm)


class GoodSender:
    """A well-behaved sender: one numbered record every ``interval`` seconds, on its own connection.

    It runs in a process of its own (so that the test process building an attack does
    not delay it), which also reads the listener's output file and notes when each of
    its records appears there: :meth:`max_delay` gives the longest time from a record's
    send to its line being in the file.
    """

    def __init__(self, endpoint: str, out: Path, interval: float = 0.02) -> None:
        self.endpoint, self.out, self.interval = endpoint, out, interval
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._proc = context.Process(target=_good_main, args=(endpoint, str(out), interval, child), daemon=True)
        self._child = child
        self.sent: dict[int, float] = {}
        self.seen: dict[int, float] = {}

    def __enter__(self) -> GoodSender:
        self._proc.start()
        self._child.close()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._ask("stop")
        finally:
            self._proc.join(10)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(5)
            self._conn.close()

    def _ask(self, what: str) -> None:
        self._conn.send(what)
        if not self._conn.poll(20):
            raise AssertionError("the good sender did not answer")
        self.sent, self.seen = self._conn.recv()

    def wait_seen(self, count: int, timeout: float = 30.0) -> None:
        """Wait until the first ``count`` good records are in the file."""
        deadline = time.monotonic() + timeout
        while True:
            self._ask("poll")
            if all(n in self.seen for n in range(count)):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"good records not written within {timeout} s: {len(self.seen)} of {count}")
            time.sleep(0.02)

    def mark(self) -> int:
        """The number the next good record will have (records are logged, then sent, as a worker's are)."""
        self._ask("poll")
        return len(self.sent)

    def max_delay(self, since: int = 0) -> float:
        """The longest time a record numbered ``since`` or later took to be written (unwritten: until now)."""
        self._ask("poll")
        now = time.time()
        numbers = [n for n in self.sent if n >= since]
        return max((self.seen.get(n, now) - self.sent[n] for n in numbers), default=0.0)


def _good_main(endpoint: str, out: str, interval: float, conn: Any) -> None:
    """The good sender's process: log, send, read the output file, answer the parent, until told to stop.

    It behaves as mplog's worker does with its defaults: a record is logged every
    ``interval`` seconds into a pending batch, and the batch goes out as one frame every
    ``FLUSH_INTERVAL`` (50 ms), or later when the transport does not take it (a send
    queue of 8 frames, a worker's SNDHWM).
    """
    channel = raw_sender(endpoint, sndhwm=8)
    sender = ["good-host", 4242, 1.0, 1]
    sent: dict[int, float] = {}
    seen: dict[int, float] = {}
    pending: list[list[Any]] = []
    offset, number, seq, next_log, next_flush = 0, 0, 0, 0.0, 0.0
    try:
        while True:
            now = time.time()
            if now >= next_log:
                pending.append(record("good", f"good {number} "))
                sent[number] = now
                number += 1
                next_log = now + interval
            if pending and now >= next_flush and channel.send(frame(sender, seq, pending, flags=2), timeout=0):
                seq += len(pending)  # flags=2: urgent, so a listener yielding to busy workers never holds it
                pending = []
                next_flush = now + FLUSH_INTERVAL
            try:
                with open(out, "rb") as file:
                    file.seek(offset)
                    chunk = file.read()
            except FileNotFoundError:
                chunk = b""
            now = time.time()
            end = chunk.rfind(b"\n") + 1
            offset += end
            for match in GOOD_RE.finditer(chunk[:end].decode("utf-8", "replace")):
                seen.setdefault(int(match[1]), now)
            if conn.poll(0.005):
                what = conn.recv()
                conn.send((sent, seen))
                if what == "stop":
                    return
    finally:
        channel.close()


class Memory:
    """The listener process's resident memory (psutil) and its peak (VmHWM, reset through clear_refs)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.proc = psutil.Process(pid)

    def rss(self) -> int:
        return int(self.proc.memory_info().rss)

    def reset_peak(self) -> bool:
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    def peak(self) -> int:
        """The highest RSS since :meth:`reset_peak` (Linux VmHWM); the current RSS elsewhere."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return self.rss()


@contextmanager
def measured(pid: int) -> Iterator[dict[str, int]]:
    """Yield a dict filled on exit with ``idle``, ``peak`` and ``after`` RSS bytes of ``pid``."""
    memory = Memory(pid)
    figures = {"idle": memory.rss()}
    memory.reset_peak()
    try:
        yield figures
    finally:
        figures["peak"] = max(memory.peak(), memory.rss())
        figures["after"] = memory.rss()


MiB = 1024 * 1024


def listener_config(out: Path, fmt: str = "%(name)s %(levelname)s %(message)s", **mplog_section: Any) -> dict[str, Any]:
    """One FileHandler on the root at DEBUG, plus an ``mplog`` section."""
    config: dict[str, Any] = {
        "version": 1,
        "formatters": {"f": {"format": fmt}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(out), "formatter": "f"}},
        "root": {"level": "DEBUG", "handlers": ["file"]},
    }
    if mplog_section:
        config["mplog"] = mplog_section
    return config


class NoReceiver:
    """A receiver that never has a frame: for a Server whose frames a test hands to handle_frame()."""

    endpoint = "none://"

    def __init__(self) -> None:
        self.events: dict[str, int] = {}

    def recv(self, timeout: float) -> None:
        return None

    def close(self) -> None:
        pass
