"""Acknowledged delivery, listener side: handle, flush, persist the mark, then acknowledge.

The worker side is :mod:`mplog.delivery.ack_sender`, the acknowledgement format :mod:`mplog.delivery.ack_format`;
the duplicate window and what this does and does not promise are in docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import mmap
import os
import struct
import sys
import time
from typing import Any

from mplog.delivery.ack_format import encode_ack
from mplog.delivery.intent import (
    FileState,
    IntentFile,
    Recovery,
    create_replacing,
    file_handlers,
    measure,
    read_intent,
    reserve,
    roll_back,
)
from mplog.listener.loop import Server, _all_handlers, _reopen
from mplog.listener.sender_table import SenderLimits, ledger_key
from mplog.listener.stats_view import printable
from mplog.listener.supervisor import load_checkpoint, say, stats_path
from mplog.listener.write_failures import recover
from mplog.transports import NO_ORIGIN, Origin
from mplog.transports.zeromq_ack import RouterReceiver
from mplog.wire import Envelope, Frame, Limits, read_envelope

__all__ = ["AckServer", "MarksFile", "marks_path"]

_PAGE = 4096
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

    Beside it, ``<path>.intent`` holds the write-ahead intent of the frame being handled
    (:mod:`mplog.delivery.intent`). Opening the file resolves an intent a killed listener left:
    unless the sender's mark shows the frame finished, every recorded file is cut back to
    its size before the frame; :attr:`recovery` says what was found and done.
    """

    _MAGIC = b"MPLOGACK"
    _HEADER = 16  # magic, u32 version, u32 slots in use
    _SLOT = 256  # u64 next_seq, u8 state, u16 key length, key
    _MAX_KEY = _SLOT - 11

    def __init__(self, path: str) -> None:
        self.path = path
        self.marks, closed = self._read(path)
        # Resolved before the marks are compacted (which forgets closed senders) and the
        # intent reset: a listener killed during this start finds the same inputs again.
        self.recovery = self._recover(f"{path}.intent", {**closed, **self.marks})
        self._intent = IntentFile(f"{path}.intent")
        self._slots: dict[str, int] = {}  # key -> offset of its slot
        self._used = 0  # slots handed out (the header's count)
        self._free: list[int] = []  # slots of senders that said goodbye (or were forgotten), to reuse
        self._backed = 0  # bytes from the file's start that the disk has reserved (stores below never SIGBUS)
        self._unslotted: set[str] = set()  # keys whose slot the disk refused: their marks are only in memory
        self.slots_refused = 0  # slots the full disk refused (each retried, at most once a second)
        self._retry_at = 0.0
        self.failure: OSError | None = None  # why the marks are only in memory (None: in the file)
        self._said: str | None = None  # what is off, as last said on stderr (None: nothing)
        capacity = 256
        while capacity < 2 * len(self.marks):
            capacity *= 2
        self._fd = -1
        self._capacity = capacity
        try:
            self._fd = self._create(path, capacity)
        except OSError as exc:  # a full disk: the file a dead listener left is used in place, else memory
            adopted = self._adopt(path)
            if not adopted:
                self.failure = exc
                self._map = mmap.mmap(-1, self._HEADER + capacity * self._SLOT)  # until retry() can create the file
        else:
            adopted = False
            self._map = mmap.mmap(self._fd, self._HEADER + capacity * self._SLOT)
        if not adopted:  # an adopted file holds them already
            for key, next_seq in self.marks.items():
                self.set(key, next_seq)
        self._note()

    @classmethod
    def _create(cls, path: str, capacity: int) -> int:
        """A new, compact file (closed senders and torn slots left behind) replacing ``path``; its descriptor."""
        return create_replacing(path, cls._MAGIC + struct.pack("<II", 1, 0), cls._HEADER + capacity * cls._SLOT)

    def _adopt(self, path: str) -> bool:
        """Use the marks file a dead listener left as it is: its open senders keep their slots, the rest are free.

        Nothing is moved, so a kill meanwhile finds a file as whole as before. False when
        there is none, or it is damaged, or its used pages are not all backed.
        """
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            return False
        try:
            size = os.fstat(fd).st_size
            head = os.pread(fd, self._HEADER, 0)
            (used,) = struct.unpack_from("<I", head, 12) if len(head) == self._HEADER else (0,)
            capacity = (size - self._HEADER) // self._SLOT
            if head[:8] != self._MAGIC or capacity < 1 or used > capacity:
                raise OSError(f"{path} is not a marks file")
            backed = -(-(self._HEADER + used * self._SLOT) // _PAGE) * _PAGE
            reserve(fd, 0, min(backed, size))
        except OSError:
            os.close(fd)
            return False
        self._fd, self._capacity, self._used, self._backed = fd, capacity, used, min(backed, size)
        self._map = mmap.mmap(fd, self._HEADER + capacity * self._SLOT)
        data = self._map
        for i in range(used):
            offset = self._HEADER + i * self._SLOT
            _, state, length = struct.unpack_from("<QBH", data, offset)
            key = bytes(data[offset + 11 : offset + 11 + length]).decode(errors="replace")
            if state == 1 and length <= self._MAX_KEY and key in self.marks and key not in self._slots:
                self._slots[key] = offset
            else:
                self._free.append(offset)
        for key in list(self.marks):  # a key _read kept from a later slot than the one adopted: store it there too
            if key in self._slots:
                struct.pack_into("<Q", data, self._slots[key], self.marks[key])
        return True

    @classmethod
    def _read(cls, path: str) -> tuple[dict[str, int], dict[str, int]]:
        """The marks of open senders, and the last marks of senders that said goodbye."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return {}, {}
        if data[:8] != cls._MAGIC or len(data) < cls._HEADER:
            return {}, {}
        (used,) = struct.unpack_from("<I", data, 12)
        marks: dict[str, int] = {}
        closed: dict[str, int] = {}
        for i in range(min(used, (len(data) - cls._HEADER) // cls._SLOT)):
            offset = cls._HEADER + i * cls._SLOT
            next_seq, state, length = struct.unpack_from("<QBH", data, offset)
            if state in {1, 2} and length <= cls._MAX_KEY:
                try:
                    key = data[offset + 11 : offset + 11 + length].decode()
                except UnicodeDecodeError:
                    continue
                (marks if state == 1 else closed)[key] = next_seq
        return marks, closed

    @staticmethod
    def _recover(intent_path: str, persisted: dict[str, int]) -> Recovery | None:
        intent = read_intent(intent_path)
        if intent is None:
            return None
        key, first, end, files = intent
        mark = persisted.get(key)
        if mark is not None and mark >= end:  # killed after the mark was stored: the frame was written whole
            return Recovery(key, first, end, complete=True)
        truncated, skipped = roll_back(files)
        return Recovery(key, first, end, complete=False, truncated=truncated, skipped=skipped)

    def _allocate(self, key: str) -> int | None:
        raw = key.encode()
        if len(raw) > self._MAX_KEY:
            return None  # a host name longer than DNS allows: this sender gets no persisted mark
        if self._free:  # reused only after the frame that freed it was done (its intent cleared)
            offset = self._free.pop()
        else:
            index = self._used
            if index >= self._capacity:
                capacity = self._capacity * 2
                size = self._HEADER + capacity * self._SLOT
                if self._fd < 0:
                    self._map.resize(size)
                else:
                    try:
                        os.ftruncate(self._fd, size)
                    except OSError as exc:
                        self._refuse(key, exc)
                        return None
                    self._map.close()
                    self._map = mmap.mmap(self._fd, size)
                self._capacity = capacity
            offset = self._HEADER + index * self._SLOT
            end = offset + self._SLOT
            if self._fd >= 0 and end > self._backed:
                # A store into a page the disk cannot back is SIGBUS (test_ack_disk_full): reserve it first.
                backed = -(-end // _PAGE) * _PAGE
                try:
                    reserve(self._fd, self._backed, backed - self._backed)
                except OSError as exc:
                    self._refuse(key, exc)
                    return None
                self._backed = backed
            self._used = index + 1
        struct.pack_into("<QBH", self._map, offset, 0, 0, len(raw))
        self._map[offset + 11 : offset + 11 + len(raw)] = raw
        self._map[offset + 8] = 1  # the slot becomes valid only once its key is complete
        struct.pack_into("<I", self._map, 12, self._used)
        self._slots[key] = offset
        if key in self._unslotted:
            self._unslotted.discard(key)
            self._note()
        return offset

    def _refuse(self, key: str, error: OSError) -> None:
        """The disk has no room for ``key``'s slot: its mark stays in memory, and a slot is asked for again later."""
        self.slots_refused += 1
        self._retry_at = time.monotonic() + self.RETRY
        if key not in self._unslotted:
            self._unslotted.add(key)
            self._note(error)

    RETRY = 1.0  # seconds between attempts at a slot (or the file) the disk refused

    def set(self, key: str, next_seq: int) -> None:
        """Record that every record of ``key`` below ``next_seq`` reached the handlers."""
        offset = self._slots.get(key)
        if offset is None:
            if key in self._unslotted and time.monotonic() < self._retry_at:
                self.marks[key] = next_seq  # the disk refused its slot: in memory until one is given
                return
            offset = self._allocate(key)
            if offset is None:
                self.marks[key] = next_seq
                return
        struct.pack_into("<Q", self._map, offset, next_seq)
        self.marks[key] = next_seq

    @property
    def in_memory(self) -> int:
        """How many senders' marks are only in memory now (the disk refused their file or slot)."""
        return len(self.marks) if self._fd < 0 else len(self._unslotted)

    @property
    def degraded(self) -> bool:
        """True while some marks (or the intent) are only in memory: :meth:`retry` may bring them back."""
        return self._fd < 0 or bool(self._unslotted) or self._intent.failure is not None

    def retry(self) -> None:
        """Between frames (no intent open), at most once a second: move what is only in memory onto the disk."""
        now = time.monotonic()
        if now < self._retry_at or self._intent.open:
            return
        self._retry_at = now + self.RETRY
        self._intent.retry()
        if self._fd < 0:
            try:
                fd = self._create(self.path, self._capacity)
            except OSError as exc:
                self.failure = exc
            else:
                memory = self._map
                self._fd, self.failure, self._used, self._backed = fd, None, 0, 0
                self._map = mmap.mmap(fd, self._HEADER + self._capacity * self._SLOT)
                memory.close()
                self._slots, self._free = {}, []
                self._unslotted = set(self.marks)
        for key in list(self._unslotted):
            self._retry_at = 0.0
            self.set(key, self.marks[key])
            if key in self._unslotted:
                break  # still full
        self._retry_at = now + self.RETRY
        self._note()

    def _note(self, error: OSError | None = None) -> None:
        """Say on stderr, once, what the full disk turned off, and once that it works again."""
        error = error or self.failure or self._intent.failure
        off = []
        if self._fd < 0:
            off.append(f"the marks are kept in memory, not in {self.path}")
        elif self._unslotted:
            off.append(f"{self.path} has no room for a new sender's slot: those marks are kept in memory")
        if self._intent.failure is not None:
            off.append(f"the write-ahead intent is kept in memory, not in {self._intent.path}")
        line = "; ".join(off) or None
        if line == self._said:
            return
        if line is None:
            say(f"mplog: {self.path} and its intent are on the disk again: acknowledged delivery is exactly once")
        elif self._said is None:
            reason = f" ({error.strerror or error})" if error is not None else ""
            say(
                f"mplog: the state directory is full{reason}: {line}. Until there is room, a listener killed "
                "meanwhile may write those senders' last frames twice (at least once, not exactly once); "
                "retried every second"
            )
        self._said = line

    def forget(self, key: str) -> None:
        """The sender said goodbye (or was forgotten): its slot keeps its last mark until reused.

        A restart drops the slot; so does the next sender given a slot, which keeps the
        file and this object as large as the senders still open, not all ever seen.
        """
        offset = self._slots.pop(key, None)
        if offset is not None:
            self._map[offset + 8] = 2
            self._free.append(offset)
        self.marks.pop(key, None)
        self._unslotted.discard(key)  # a mark only in memory is not needed past the goodbye

    def begin_intent(self, key: str, first: int, end: int, files: list[FileState]) -> None:
        """Before ``key``'s records ``first`` .. ``end - 1`` reach the handlers: ``files`` as they are now."""
        self._intent.begin(key, first, end, files)

    @property
    def intent_open(self) -> bool:
        return self._intent.open

    def clear_intent(self) -> None:
        """After the frame's mark is stored (never before: see :meth:`_recover`)."""
        if self._intent.open:
            self._intent.clear()

    def close(self) -> None:
        self._intent.close()
        with contextlib.suppress(Exception):
            self._map.close()
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)


def _forget_line_ends(paths: list[str]) -> None:
    """Reopen the file handlers of ``paths``, which the roll-back cut back after they were opened.

    A file the kill left inside a line gave its handler's stream a line end to write first
    when it was opened (mplog.listener.write_failures); the roll-back then cut the file back
    to the frame's start, a line end, where that buffered line end would be an empty line.
    Nothing else was written yet: the stream is dropped and the file opened again, which
    looks at its end afresh (test_a_frame_cut_inside_a_line_by_the_kill_is_cut_back_without_leaving_an_empty_line).
    """
    cut = {os.path.abspath(path) for path in paths}
    for handler in _all_handlers():
        if isinstance(handler, logging.FileHandler) and handler.stream is not None and handler.baseFilename in cut:
            recover(handler, _reopen)


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
    """The receive loop for acknowledged delivery: handle, flush, persist the mark, acknowledge.

    With a state directory, each frame is bracketed by a write-ahead intent
    (:mod:`mplog.delivery.intent`): before its records reach the handlers, the size and
    identity of every file a handler appends to; after its mark is stored, nothing. A
    listener killed in between is followed by one that cuts those files back before it
    writes anything, so file output holds each record exactly once. Records that left
    the process through other handlers (syslog, SMTP, HTTP, sockets) cannot be taken
    back: for them a crash can still repeat up to one frame (docs/reliability.md).
    """

    def __init__(
        self,
        receiver: RouterReceiver,
        *,
        limits: Limits | None = None,
        drain_quiet: float = 0.2,
        sender_limits: SenderLimits | None = None,
    ) -> None:
        super().__init__(receiver, limits=limits, drain_quiet=drain_quiet, sender_limits=sender_limits)
        self.count_unwritten_at_stop = False  # unacknowledged frames stay with their workers, resent later
        self.count_cut_frames = False  # a frame a kill left half-written is cut back and sent again (after_restore)
        self.router = receiver
        self.marks: MarksFile | None = None
        self.refused = 0  # frames refused because they arrived ahead of a gap (resent later)
        self.rolled_back = 0  # frames a killed listener left half-written, undone in every file at restart
        self.rollback_skipped = 0  # files such a frame reached that could not be cut back (rotated, replaced)
        self._handlers: list[logging.Handler] | None = None
        self._confirming: list[Any] | None = None  # handlers with wait_confirmed() (RELPHandler, RFC5424Handler)
        self.unconfirmed = 0  # acknowledgements withheld: a handler had not confirmed delivery in time
        self._files: list[logging.StreamHandler[Any]] | None = None  # candidates for the intent
        self._unknown: dict[str, float] = {}  # ledger key -> when its first out-of-order frame came
        # ledger key -> the seq of the first frame refused since its last accepted one (see _out_of_order)
        self._refused_first: dict[str, int] = {}
        self._behind_said = False
        self._started = time.monotonic()
        self.stats.table.on_forget = self._forget_mark

    def tend(self) -> None:
        """Move marks (or the intent) the full disk kept in memory back into their files, once it has room."""
        marks = self.marks
        if marks is not None and marks.degraded:
            marks.retry()

    def _forget_mark(self, key: str) -> None:
        """A folded sender silent so long that the stats forgot its place: its mark goes too (bounded state)."""
        if self.marks is not None:
            self.marks.forget(key)

    def _out_of_order(self, key: str, env: Envelope) -> bool:
        next_seq = self.stats.next_seq_of(key)
        if next_seq is not None:
            refused = self._refused_first
            if env.seq <= next_seq:
                refused.pop(key, None)
                return False
            refused_at = refused.get(key)
            if refused_at is None or env.seq > refused_at:
                if refused_at is None:
                    if len(refused) >= self.stats.limits.max_senders:
                        refused.pop(next(iter(refused)))
                    refused[key] = env.seq
                return True
            # The sender answered the refusal with a resend round, which starts with the oldest
            # frame it holds, and that is still past next_seq: what lies between was acknowledged
            # to it earlier, so this listener's marks are older than what it acknowledged (a
            # state directory restored from a copy, or one that lost its last writes with the
            # host). Refusing again would refuse this sender for good; its frame is accepted and
            # the records between counted as a gap.
            del refused[key]
            self._say_behind(key, next_seq, env.seq)
            return False
        if env.seq == 0:
            return False
        # An unknown sender starting past 0: its first frames may have died with the last
        # incarnation (they will be resent), or this listener lost its state (they will not).
        now = time.monotonic()
        unknown = self._unknown
        if len(unknown) >= self.stats.limits.max_senders and key not in unknown:
            self._forget_unknown(now)
        first = unknown.setdefault(key, now)
        if now - first < UNKNOWN_SENDER_GRACE:
            return True
        del unknown[key]
        return False  # accepted: the records before it are counted as a gap

    def _say_behind(self, key: str, next_seq: int, seq: int) -> None:
        if self._behind_said:
            return
        self._behind_said = True
        say(
            f"mplog: sender {printable(key)} resent from record {seq}, "
            f"but this listener's marks expected record {next_seq}: "
            "its state directory is older than what it acknowledged (restored from a copy, or its last writes "
            f"lost with the host). Records {next_seq}..{seq - 1} are counted as a gap; said once for all senders"
        )

    def _forget_unknown(self, now: float) -> None:
        """Keep the unknown senders waited for bounded: drop those past their grace, else the oldest."""
        unknown = self._unknown
        for key in [key for key, first in unknown.items() if now - first >= UNKNOWN_SENDER_GRACE]:
            del unknown[key]
        while len(unknown) >= self.stats.limits.max_senders:
            del unknown[next(iter(unknown))]

    def after_restore(self, state_dir: str) -> None:
        """Load the persisted marks and undo a frame the last listener left half-written.

        Runs before the first frame is received and before any handler wrote (the
        handlers' files are open, in append mode, so their next write lands at the
        end the rollback left). Records below a mark already reached the handlers.
        """
        self.marks = MarksFile(marks_path(state_dir))
        for key, next_seq in self.marks.marks.items():
            self.stats.resume_sender(key, next_seq)
        earlier = load_checkpoint(stats_path(state_dir)) or {}
        self.rolled_back = int(earlier.get("rolled_back", 0))
        self.rollback_skipped = int(earlier.get("rollback_skipped", 0))
        self.unconfirmed = int(earlier.get("unconfirmed", 0))  # cumulative across restarts, as the stats
        self.refused = int(earlier.get("out_of_order", 0))
        recovery = self.marks.recovery
        if recovery is not None and not recovery.complete:
            self._undo_accounting(recovery)
            _forget_line_ends([line.rsplit(": ", 1)[0] for line in recovery.truncated])

    def _undo_accounting(self, recovery: Recovery) -> None:
        """The frame being written at the crash is not written: its sender resends it from ``first``."""
        key, first, end = recovery.key, recovery.first, recovery.end
        mark = self.marks.marks.get(key) if self.marks is not None else None
        # The stats checkpoint may have been taken after the frame was accepted. The mark is
        # where the worker resends from: the frame's first record, or earlier when earlier
        # frames were left unacknowledged (a handler had not confirmed them).
        self.stats.resume_sender(key, first if mark is None else min(mark, first))
        sender = self.stats.senders.get(key)
        if sender is not None:
            sender.closed = False  # a goodbye frame that was undone comes again
        self.rollback_skipped += len(recovery.skipped)
        if not recovery.skipped:
            self.rolled_back += 1
        what = f"records {first}..{end - 1} of {printable(key)}"
        lines = [f"mplog: undoing the unacknowledged frame the last listener was writing when it died ({what})"]
        lines += [f"mplog:   cut back {line}" for line in recovery.truncated]
        lines += [f"mplog:   could not undo {line}; {what} may be written twice" for line in recovery.skipped]
        with contextlib.suppress(Exception):
            sys.stderr.write("\n".join(lines) + "\n")
            sys.stderr.flush()

    def snapshot(self) -> dict[str, Any]:
        snap = super().snapshot()
        snap["rolled_back"] = self.rolled_back
        snap["rollback_skipped"] = self.rollback_skipped
        snap["unconfirmed"] = self.unconfirmed
        snap["out_of_order"] = self.refused
        marks = self.marks
        if marks is not None:  # what a full state directory turned off (see docs/reliability.md)
            snap["state_on_disk"] = {
                "marks_in_memory": marks.in_memory,
                "intent_in_memory": int(marks._intent.failure is not None),
                "slots_refused": marks.slots_refused,
                "frames_without_intent": marks._intent.unrecorded,
            }
        return snap

    def _confirmed(self) -> bool:
        """Wait (bounded) for every handler that confirms delivery downstream; True when all did.

        A handler opts in with ``wait_confirmed(timeout=None) -> bool``: True once every
        record it was given has been taken by its destination (RELPHandler: acknowledged by
        rsyslog; RFC5424Handler: written into the socket), False after its own bound.
        """
        if self._confirming is None:
            self._confirming = [h for h in _all_handlers() if callable(getattr(h, "wait_confirmed", None))]
        confirmed = True
        for handler in self._confirming:
            try:
                if not handler.wait_confirmed():
                    confirmed = False
            except Exception:  # noqa: PERF203  # one failing handler must not stop the others
                handler.handleError(logging.makeLogRecord({"msg": "wait_confirmed failed"}))
                confirmed = False
        return confirmed

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

    def _begin_intent(self, key: str, seq: int, end: int) -> None:
        """Record the intent for records ``seq`` .. ``end - 1`` of ``key`` (those not already written)."""
        marks = self.marks
        if marks is None:
            return
        first = max(seq, self.stats.next_seq_of(key) or 0)
        if first >= end:
            return  # every record is a duplicate: nothing will be written
        marks.begin_intent(key, first, end, self._measure_files())

    def _measure_files(self) -> list[FileState]:
        """Every file a handler appends to, with its identity and size now (a few fstat calls)."""
        if self._files is None:
            self._files = file_handlers(_all_handlers())
        files = []
        for handler in self._files:
            state = measure(handler)
            if state is not None:
                files.append(state)
        return files

    def handle_frame(self, data: bytes, origin: Origin = NO_ORIGIN) -> Frame | None:
        """Handle one frame as the plain server does, then acknowledge it to its sender.

        Frames must arrive in order: one that starts past the sender's next record
        (earlier frames were lost with a killed listener and will be resent) is refused,
        and the refusal tells the worker where to resend from. The answer goes to the
        connection the frame came on (``origin.connection``, the ROUTER's routing id).
        """
        route = origin.connection
        try:
            env = read_envelope(data)
        except ValueError:
            env = None
        if env is not None:
            key = ledger_key(env.key, origin.peer_key)
            # Another connection's sender, or a jump past the window (mplog.listener.stats): refused and
            # counted before anything else, so that it is never answered as a real sender's frame.
            if self.stats.refuse_claim(key, env.seq, env.records, origin):
                return None
            if self._out_of_order(key, env):
                self.refused += 1
                next_seq = self.stats.next_seq_of(key) or 0
                self.router.reply(route, encode_ack(env.stream, next_seq, refused=True))
                return None
            if self.marks is not None and key not in self.marks.marks:
                # A sender's first mark is where it starts: with acknowledgements withheld
                # (wait_confirmed), a restart must go back there, not to the stats checkpoint.
                self.marks.set(key, env.seq)
            # Before the frame is accepted: the stats checkpoint may see it accepted from then on.
            self._begin_intent(key, env.seq, env.seq + env.records)
        frame = super().handle_frame(data, origin)
        if frame is not None:  # an undecodable frame names no sender to answer
            self._acknowledge(route, frame, origin)
        elif self.marks is not None:
            self.marks.clear_intent()
        return frame

    def dispatch(
        self,
        frame: Frame,
        records: list[list[Any]],
        first: int | None = None,
        origin: Origin = NO_ORIGIN,
        columns: list[list[Any]] | None = None,
    ) -> None:
        """Dispatch as the plain server does, under an intent (also when the envelope could not be read first)."""
        marks = self.marks
        if marks is not None and records and not marks.intent_open:
            end = frame.seq + len(frame.records)
            start = end - len(records) if first is None else first
            marks.begin_intent(ledger_key(frame.sender.key, origin.peer_key), start, end, self._measure_files())
        super().dispatch(frame, records, first, origin, columns)

    def _acknowledge(self, route: bytes, frame: Frame, origin: Origin) -> None:
        key = ledger_key(frame.sender.key, origin.peer_key)
        sender = self.stats.senders.get(key)
        marks = self.marks
        if sender is None:
            if marks is not None:
                marks.clear_intent()
            return
        next_seq = sender.next_seq
        self._flush_handlers()
        if not self._confirmed():
            # Not acknowledged, no mark: the worker resends, and a restarted listener
            # dispatches the frame again. This listener still holds the records (the
            # handler delivers them when its destination is back).
            self.unconfirmed += 1
            if marks is not None:
                marks.clear_intent()
            return
        if marks is not None:
            marks.set(key, next_seq)  # a closed sender's last mark too: a restart reads it (MarksFile._recover)
            if sender.closed:
                marks.forget(key)
            marks.clear_intent()  # after the mark: a crash in between finds the frame complete
        self.router.reply(route, encode_ack(frame.sender.stream, next_seq, closed=sender.closed))
