"""Acknowledged delivery (opt-in): at-least-once, with duplicates removed by the listener.

Worker side, :class:`AckingSender` wraps the DEALER transport
(:mod:`mplog.transports.zeromq_ack`). Every frame it sends stays in a bounded resend
buffer until the listener acknowledges it; when no acknowledgement arrives for
``ack_timeout`` seconds (the listener died and was restarted, say), every unacknowledged
frame is sent again, oldest first. A full resend buffer refuses new frames, so the
worker's own policy (block, drop_newest, drop_oldest) applies and counts them.

Listener side, :class:`mplog.ack_server.AckServer` handles each frame as the plain
server does, then flushes every handler, records the sender's new high-water mark (``next_seq``) in a
small state file, and only then acknowledges. A restarted listener reads the marks
back, so a resent frame's records that already reached the handlers are skipped
(counted as ``duplicates``). An acknowledgement is the msgpack array
``[stream, next_seq]``: "every record of stream ``stream`` below ``next_seq`` is written".

The duplicate window and everything else this does and does not promise are in
docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections import deque
from typing import Any, NamedTuple

import msgpack

from mplog.transports.base import TransportOptions
from mplog.transports.zeromq_ack import DealerSender
from mplog.wire import FLAG_FINAL
from mplog.worker import ACK_CLOSE_TIMEOUT

__all__ = [
    "AckingSender",
    "Envelope",
    "decode_ack",
    "encode_ack",
    "frame_envelope",
    "open_ack_sender",
]

ENV_ACK = "MPLOG_ACK"  # "1": workers started by an acknowledging listener use acknowledged delivery
_REFUSAL_QUIET = 0.2  # seconds: refusals of the same position within this time trigger one resend round
_BLOCKED_SIGNALS = set(signal.valid_signals()) - {
    signal.SIGSEGV,
    signal.SIGBUS,
    signal.SIGFPE,
    signal.SIGILL,
    signal.SIGKILL,
    signal.SIGSTOP,
}


def encode_ack(stream: int, next_seq: int, *, refused: bool = False) -> bytes:
    """``[stream, next_seq]``; with ``refused``, ``[stream, next_seq, 1]``: "resend from next_seq"."""
    data: bytes = msgpack.packb([stream, next_seq, 1] if refused else [stream, next_seq])
    return data


def decode_ack(data: bytes) -> tuple[int, int, bool] | None:
    """``(stream, next_seq, refused)`` from an acknowledgement, or None if it is not one."""
    try:
        obj = msgpack.unpackb(data, max_array_len=3, max_map_len=0, max_str_len=0, max_bin_len=0, max_ext_len=0)
    except Exception:
        return None
    if type(obj) is list and len(obj) in (2, 3) and all(type(v) is int and v >= 0 for v in obj):
        return obj[0], obj[1], len(obj) == 3
    return None


class Envelope(NamedTuple):
    """A frame's position in its sender's stream, read without unpacking its records."""

    key: str  # the sender key, as mplog.wire.Sender.key spells it
    stream: int
    seq: int
    records: int
    flags: int


def frame_envelope(frame: bytes) -> Envelope:
    """Read the envelope of a frame built by mplog.wire.build_frame.

    Raises:
        ValueError: the bytes do not start like a frame (the full decoder then counts it).
    """
    unpacker = msgpack.Unpacker(max_buffer_size=len(frame) + 16, max_str_len=1024, max_ext_len=0)
    unpacker.feed(frame[:2048])  # version, sender (host <= 255 chars), seq, dropped, flags, records header
    try:
        unpacker.read_array_header()
        unpacker.unpack()  # version
        host, pid, _, stream = unpacker.unpack()
        seq = unpacker.unpack()
        unpacker.unpack()  # dropped
        flags = unpacker.unpack()
        count = unpacker.read_array_header()
        return Envelope(f"{host}/{pid}/{stream:08x}", int(stream), int(seq), int(count), int(flags))
    except Exception as exc:
        raise ValueError(f"not a frame envelope: {exc}") from None


def _report(line: str) -> None:
    with contextlib.suppress(Exception):
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


# ---------------------------------------------------------------- worker side


class AckingSender:
    """A Sender that keeps every frame until the listener acknowledges it, resending on silence.

    Args:
        endpoint: the listener's endpoint (ipc:// or tcp://).
        options: socket options for the DEALER transport.
        ack_timeout: seconds without progress before every unacknowledged frame is sent again.
        max_unacked_bytes: the resend buffer's bound; past it :meth:`send` refuses frames.
        close_timeout: the longest :meth:`close` waits for the last acknowledgements.
    """

    def __init__(
        self,
        endpoint: str,
        options: TransportOptions,
        *,
        ack_timeout: float = 1.0,
        max_unacked_bytes: int = 16 * 1024 * 1024,
        close_timeout: float = 2.0,
    ) -> None:
        self.endpoint = endpoint
        self._dealer = DealerSender(endpoint, options)
        self._ack_timeout = ack_timeout
        self._max_bytes = max_unacked_bytes
        self._close_timeout = close_timeout
        self._lock = threading.Lock()
        self._unacked: deque[tuple[int, bytes]] = deque()  # (end_seq, frame), in send order
        self._unacked_bytes = 0
        self._stream = -1
        self._acked = 0  # next_seq the listener last acknowledged
        self._progress = time.monotonic()
        self._refused_at, self._refused_when = -1, 0.0
        self._pid = os.getpid()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.resent = 0  # frames sent again after a silence
        self.unacknowledged_at_close = 0  # records never acknowledged when close() gave up

    @property
    def unacked(self) -> int:
        """Frames sent but not yet acknowledged."""
        return len(self._unacked)

    def send(self, frame: bytes, timeout: float = 0.0) -> bool:
        if self._closed:
            return False
        if self._pid != os.getpid():  # forked: the parent's unacknowledged frames are the parent's
            self._reset_after_fork()
        _, stream, seq, count, flags = frame_envelope(frame)
        with self._lock:
            self._read_acks()
            if self._unacked and self._unacked_bytes + len(frame) > self._max_bytes:
                return False  # the worker keeps it; its policy applies
            if not self._dealer.send(frame, timeout):
                return False
            self._stream = stream
            if count or flags & FLAG_FINAL:
                if not self._unacked:
                    self._progress = time.monotonic()
                self._unacked.append((seq + count, frame))
                self._unacked_bytes += len(frame)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mplog-ack", daemon=True)
            self._thread.start()
        return True

    def _reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._unacked, self._unacked_bytes = deque(), 0
        self._acked, self._stream, self._thread = 0, -1, None
        self._pid = os.getpid()

    def _read_acks(self) -> None:
        """Drop every frame the listener acknowledged (call with the lock held)."""
        while True:
            data = self._dealer.recv(0.0)
            if data is None:
                return
            ack = decode_ack(data)
            if ack is None or ack[0] != self._stream:
                continue
            next_seq, refused = ack[1], ack[2]
            if refused:  # the listener expects next_seq first (it restarted): go back, oldest first
                self._resend_from_refusal(next_seq)
                continue
            self._acked = max(self._acked, next_seq)
            unacked = self._unacked
            while unacked and unacked[0][0] <= next_seq:
                _, frame = unacked.popleft()
                self._unacked_bytes -= len(frame)
                self._progress = time.monotonic()

    def _resend_from_refusal(self, next_seq: int) -> None:
        now = time.monotonic()
        if next_seq == self._refused_at and now - self._refused_when < _REFUSAL_QUIET:
            return  # one resend round answers a whole burst of refusals
        self._refused_at, self._refused_when = next_seq, now
        self._progress = now
        for _, frame in self._unacked:
            if not self._dealer.send(frame, 0.0):
                return
            self.resent += 1

    def _resend_if_silent(self) -> None:
        """After ``ack_timeout`` without progress, send every unacknowledged frame again (lock held)."""
        if not self._unacked or time.monotonic() - self._progress < self._ack_timeout:
            return
        self._progress = time.monotonic()  # at most one resend round per ack_timeout
        for _, frame in self._unacked:
            if not self._dealer.send(frame, 0.0):
                return  # the listener is still away (IMMEDIATE=1): try again next round
            self.resent += 1

    def _run(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED_SIGNALS)  # signals belong to the main thread
        while not self._closed and self._pid == os.getpid():
            time.sleep(0.02)
            with self._lock:
                if self._closed:
                    return
                self._read_acks()
                self._resend_if_silent()

    def close(self, linger: float | None = None) -> None:
        """Wait (at most ``close_timeout``) until every frame is acknowledged, then close; idempotent."""
        if self._closed:
            return
        if self._pid == os.getpid():
            deadline = time.monotonic() + self._close_timeout
            while True:
                with self._lock:
                    self._read_acks()
                    if not self._unacked or time.monotonic() >= deadline:
                        break
                    self._resend_if_silent()
                time.sleep(0.01)
            with self._lock:
                self._closed = True
                if self._unacked:
                    self.unacknowledged_at_close = max(self._unacked[-1][0] - self._acked, 0)
                    _report(
                        f"mplog: {self.unacknowledged_at_close} records were sent but never acknowledged "
                        f"(endpoint {self.endpoint}, pid {os.getpid()})"
                    )
        self._closed = True
        self._dealer.close(linger)


def open_ack_sender(endpoint: str, options: Any) -> AckingSender:
    """The worker's transport in acknowledged mode (``options`` is a WorkerOptions)."""
    return AckingSender(
        endpoint,
        options.transport,
        ack_timeout=options.ack_timeout,
        max_unacked_bytes=options.max_buffer_bytes,
        # At exit, wait long enough for a supervised restart and one resend round.
        close_timeout=max(options.close_timeout, ACK_CLOSE_TIMEOUT, 5 * options.ack_timeout),
    )
