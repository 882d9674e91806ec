"""Acknowledged delivery, listener side: handle, flush, persist the mark, then acknowledge.

The worker side and the acknowledgement format are in :mod:`mplog.ack`; the duplicate
window and what this does and does not promise are in docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import mmap
import os
import struct
import time

from mplog.ack import Envelope, encode_ack, frame_envelope
from mplog.server import Server, _all_handlers
from mplog.transports.zeromq_ack import RouterReceiver
from mplog.wire import Frame, Limits

__all__ = ["AckServer", "MarksFile", "marks_path"]

UNKNOWN_SENDER_GRACE = 1.5  # seconds a restarted listener waits for an unknown sender's earlier frames


def marks_path(state_dir: str) -> str:
    return os.path.join(state_dir, "acked.json")


class MarksFile:
    """Per-sender high-water marks that survive a listener crash: ``sender_key -> next_seq``.

    A memory-mapped file of fixed 256-byte slots, so recording a mark is one 8-byte
    store into the page cache: no system call, nothing a SIGKILL can tear, and the
    window between "a handler wrote the frame" and "the mark says so" stays a few
    microseconds (the duplicate window in docs/reliability.md). The kernel keeps the
    pages when the process dies; surviving a power loss would take an msync, which
    mplog does not do. Slots of senders that said goodbye are dropped when the file
    is next opened.
    """

    _MAGIC = b"MPLOGACK"
    _HEADER = 16  # magic, u32 version, u32 slots in use
    _SLOT = 256  # u64 next_seq, u8 state, u16 key length, key
    _MAX_KEY = _SLOT - 11

    def __init__(self, path: str) -> None:
        self.path = path
        self.marks: dict[str, int] = self._read(path)
        self._slots: dict[str, int] = {}
        capacity = 256
        while capacity < 2 * len(self.marks):
            capacity *= 2
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as f:  # rewritten compact: closed senders and torn slots left behind
            f.write(self._MAGIC + struct.pack("<II", 1, 0))
            f.truncate(self._HEADER + capacity * self._SLOT)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
        self._fd = os.open(path, os.O_RDWR)
        self._capacity = capacity
        self._map = mmap.mmap(self._fd, self._HEADER + capacity * self._SLOT)
        for key, next_seq in self.marks.items():
            self.set(key, next_seq)

    @classmethod
    def _read(cls, path: str) -> dict[str, int]:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return {}
        if data[:8] != cls._MAGIC or len(data) < cls._HEADER:
            return {}
        (used,) = struct.unpack_from("<I", data, 12)
        marks: dict[str, int] = {}
        for i in range(min(used, (len(data) - cls._HEADER) // cls._SLOT)):
            offset = cls._HEADER + i * cls._SLOT
            next_seq, state, length = struct.unpack_from("<QBH", data, offset)
            if state == 1 and length <= cls._MAX_KEY:
                try:
                    marks[data[offset + 11 : offset + 11 + length].decode()] = next_seq
                except UnicodeDecodeError:
                    continue
        return marks

    def _allocate(self, key: str) -> int | None:
        raw = key.encode()
        if len(raw) > self._MAX_KEY:
            return None  # a host name longer than DNS allows: this sender gets no persisted mark
        index = len(self._slots)
        if index >= self._capacity:
            self._capacity *= 2
            size = self._HEADER + self._capacity * self._SLOT
            os.ftruncate(self._fd, size)
            self._map.close()
            self._map = mmap.mmap(self._fd, size)
        offset = self._HEADER + index * self._SLOT
        struct.pack_into("<QBH", self._map, offset, 0, 0, len(raw))
        self._map[offset + 11 : offset + 11 + len(raw)] = raw
        self._map[offset + 8] = 1  # the slot becomes valid only once its key is complete
        struct.pack_into("<I", self._map, 12, index + 1)
        self._slots[key] = offset
        return offset

    def set(self, key: str, next_seq: int) -> None:
        """Record that every record of ``key`` below ``next_seq`` reached the handlers."""
        offset = self._slots.get(key)
        if offset is None:
            offset = self._allocate(key)
            if offset is None:
                return
        struct.pack_into("<Q", self._map, offset, next_seq)
        self.marks[key] = next_seq

    def forget(self, key: str) -> None:
        """The sender said goodbye: its slot is dropped at the next open."""
        offset = self._slots.get(key)
        if offset is not None:
            self._map[offset + 8] = 2
        self.marks.pop(key, None)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._map.close()
        with contextlib.suppress(OSError):
            os.close(self._fd)


_SELF_FLUSHING = (
    logging.StreamHandler.emit,
    logging.FileHandler.emit,
    logging.handlers.BaseRotatingHandler.emit,
    logging.handlers.WatchedFileHandler.emit,
)


def _flushes_every_record(handler: logging.Handler) -> bool:
    """True for the stdlib stream and file handlers, whose emit() ends with a flush."""
    cls = type(handler)
    return (
        isinstance(handler, logging.StreamHandler)
        and cls.emit in _SELF_FLUSHING
        and (cls.flush is logging.StreamHandler.flush)
    )


class AckServer(Server):
    """The receive loop for acknowledged delivery: handle, flush, persist the mark, acknowledge."""

    def __init__(self, receiver: RouterReceiver, *, limits: Limits | None = None, drain_quiet: float = 0.2) -> None:
        super().__init__(receiver, limits=limits, drain_quiet=drain_quiet)
        self.router = receiver
        self.marks: MarksFile | None = None
        self.refused = 0  # frames refused because they arrived ahead of a gap (resent later)
        self._handlers: list[logging.Handler] | None = None
        self._unknown: dict[str, float] = {}  # sender key -> when its first out-of-order frame came
        self._started = time.monotonic()

    def _out_of_order(self, env: Envelope) -> bool:
        sender = self.stats.senders.get(env.key)
        if sender is not None:
            return env.seq > sender.next_seq
        if env.seq == 0:
            return False
        # An unknown sender starting past 0: its first frames may have died with the last
        # incarnation (they will be resent), or this listener lost its state (they will not).
        first = self._unknown.setdefault(env.key, time.monotonic())
        if time.monotonic() - first < UNKNOWN_SENDER_GRACE:
            return True
        del self._unknown[env.key]
        return False  # accepted: the records before it are counted as a gap

    def after_restore(self, state_dir: str) -> None:
        """Load the persisted marks: records below them already reached the handlers."""
        self.marks = MarksFile(marks_path(state_dir))
        for key, next_seq in self.marks.marks.items():
            self.stats.resume_sender(key, next_seq)

    def _flush_handlers(self) -> None:
        if self._handlers is None:
            # A StreamHandler (files included) flushes inside every emit; only the others
            # (MemoryHandler and other buffers) can hold records that an ack would promise.
            self._handlers = [h for h in _all_handlers() if not _flushes_every_record(h)]
        for handler in self._handlers:
            try:
                handler.flush()
            except Exception:  # noqa: PERF203  # one failing handler must not stop the others' flush
                handler.handleError(logging.makeLogRecord({"msg": "flush failed"}))

    def handle_frame(self, data: bytes) -> Frame | None:
        """Handle one frame as the plain server does, then acknowledge it to its sender.

        Frames must arrive in order: one that starts past the sender's next record
        (earlier frames were lost with a killed listener and will be resent) is refused,
        and the refusal tells the worker where to resend from.
        """
        route = self.router.last_route
        try:
            env = frame_envelope(data)
        except ValueError:
            env = None
        if env is not None and self._out_of_order(env):
            self.refused += 1
            sender = self.stats.senders.get(env.key)
            self.router.reply(route, encode_ack(env.stream, sender.next_seq if sender else 0, refused=True))
            return None
        frame = super().handle_frame(data)
        if frame is not None:  # an undecodable frame names no sender to answer
            self._acknowledge(route, frame)
        return frame

    def _acknowledge(self, route: bytes, frame: Frame) -> None:
        key = frame.sender.key
        sender = self.stats.senders.get(key)
        if sender is None:
            return
        next_seq = sender.next_seq
        self._flush_handlers()
        if self.marks is not None:
            if sender.closed:
                self.marks.forget(key)
            else:
                self.marks.set(key, next_seq)
        self.router.reply(route, encode_ack(frame.sender.stream, next_seq))
