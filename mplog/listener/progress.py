"""Each sender's ledger, persisted with every frame, so that a listener killed mid-stream loses none of it.

The stats checkpoint (:class:`mplog.listener.supervisor.Checkpoint`) is a JSON file written every
50 ms at best. A listener SIGKILLed between two checkpoints had written records that the
last checkpoint did not count: its successor counted them as received *and* as gaps
(measured: 7,828 of one sender's 20,000 records). So the listener keeps each sender's
ledger (next sequence number and every per-sender count) in this file as it handles
its frames, and a restarted listener brings each sender forward (or back) to it after
restoring the checkpoint (:meth:`mplog.listener.stats.Stats.apply_progress`).

A memory-mapped file (like the acknowledgement marks, :class:`mplog.listener.ack_loop.MarksFile`):
no system call per frame but one ``fstat`` per output file. A SIGKILL can stop a process
between any two stores, so every change becomes valid by one byte written last:

- one *slot* per sender of the table, holding two copies of its ledger and a byte naming
  the valid one. Before a frame is dispatched (:meth:`ProgressFile.begin`), the ledger
  *with* the frame goes into the other copy, the size of every file a handler writes to
  into the header, and the slot's *pending* byte is set; after the dispatch
  (:meth:`ProgressFile.commit`) the valid byte is flipped and the pending byte cleared.
  A listener killed in between (after the frame's last ``write()``, preempted on its
  way back from the system call, is the likely case) leaves the frame pending; the next
  one counts it as written if one of those files has grown since, as not written (a
  gap) if none has.
- a *ring* of fold records, written with ``pwrite()`` (a fold is rare next to a frame,
  and pages that are not mapped do not add to the listener's resident size): when the
  table folds a sender (:mod:`mplog.listener.sender_table`), its final ledger and the fold's
  number go into the ring and its slot is freed. A
  restarted listener folds again, with their own numbers, the senders folded after the
  checkpoint it restored (whose ``folded["senders"]`` says how many folds it counts),
  and remembers every sender in the ring as folded with its place in its stream, so a
  folded sender that comes back after a restart continues where it was. The ring holds
  the last ``DORMANT_PER_SLOT * max_senders`` folds, as many places as the table
  remembers.

The slots are allocated as they are first used (``posix_fallocate``), so a full disk
refuses a new slot instead of killing the listener with SIGBUS on a page it cannot back
(a fold record is then not written). Power loss is
not covered (no ``msync``).

A SIGKILL can also cut a frame's ``write()`` short: the kernel stops a write to a regular file
at a page boundary once the signal is pending (measured here: 69 of 100 kills of a process
that writes 30 KB at a time, every one ending on a 4096-byte boundary). The header also holds
how many records the pending frame dispatches, so a restarted listener that finds a file
grown to a page boundary with fewer complete lines than that counts the lines as written and
the rest as gaps (:func:`read_progress`); the line the kill cut is ended when its handler opens the file.
A handler that writes a record at a time is followed record by record: the dispatcher stores,
after each such record, how many of the frame's records are in their files
(:meth:`ProgressFile.mark_written`), and a restart counts the rest as gaps.

What this leaves (docs/reliability.md): a pending frame that went to no file (only to
syslog, say, or below every handler's level) counts as not written; one written partly
between two handlers on the frame path counts as
written; one cut short counts a line as a record (a record of several lines as several);
the counts by reason (``malformed``, ``repaired``, ``handler_errors``) and
``claims_refused`` come from the checkpoint, one interval behind at most; a sender whose
ledger key is longer than 96 bytes (a host name of over about 40 characters under CURVE,
80 without) keeps the checkpoint's numbers;
more folds between two checkpoints than the ring holds lose the oldest of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import mmap
import os
import stat
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from mplog.listener.sender_table import DORMANT_PER_SLOT, SenderStats, SenderTable
from mplog.listener.supervisor import say

__all__ = ["OutputFiles", "Progress", "ProgressFile", "file_sizes", "progress_path", "read_progress"]

FREE, VALID = 0, 1  # a slot's or a ring entry's state byte

_MAGIC = b"MPLOGPRG"
_VERSION = 1
# Header: magic, u32 version, u32 slots handed out, u32 files measured for the pending frame,
# u32 slots room, u32 ring entries, u32 records the pending frame dispatches (0: not known,
# as in a file of an earlier version), then (dev, ino, size) of each file measured (at most
# _MAX_FILES). Then the slots (as many as the table holds senders), then the ring.
_HEADER = 1024
_RECORDS_AT = 28
_FILES_AT = 32
_FILE = struct.Struct("<QQq")
_MAX_FILES = (_HEADER - _FILES_AT) // _FILE.size
# u32 in the header's last bytes (after the files): 1 + how many of the pending frame's records
# were written when the record path stopped (the dispatcher's mark, ProgressFile.mark_written);
# 0 when it is past the record path or not on it (and in a file of an earlier version).
_DONE_AT = _FILES_AT + _MAX_FILES * _FILE.size
MAX_KEY = 96  # bytes of a ledger key (UTF-8) that fit in a slot or a ring entry
# next_seq, records, frames, rejected, repaired, dropped, gaps, duplicates, closed; last_seen
_LEDGER = struct.Struct("<9Qd")
# A slot: u8 state, u8 valid copy, u8 pending (0, or 1 + the copy being written), u8 spare,
# u16 key length, u16 spare, then start_time, first_seen, the folds counted when it was
# opened (a slot older than its sender's last fold is stale), the two ledgers, the key.
_IDENT = struct.Struct("<ddQ")
_COPIES = (32, 32 + _LEDGER.size)
_SLOT_KEY = 32 + 2 * _LEDGER.size
_SLOT = _SLOT_KEY + MAX_KEY  # 288
# A ring entry: u8 state, u8 spare, u16 key length, u32 spare, u64 its number in the ring's
# order, u64 the fold's number, the final ledger, the key.
# Written with one pwrite() each (the ring is not mapped: it would only add to the listener's
# resident size), 256 bytes so that none straddles a page: a SIGKILL never tears one.
_ENTRY_HEAD = struct.Struct("<BBHIQQ")
_ENTRY_LEDGER = _ENTRY_HEAD.size  # 24
_ENTRY_KEY = _ENTRY_LEDGER + _LEDGER.size
_ENTRY = 256
_PAGE = 4096
_MAX_ROOM = 1 << 20  # slots at most (288 MiB of address space), whatever max_senders says
_MAX_RING = 1 << 21  # fold records at most (512 MiB, sparse)
_NONE = 2  # in a copy's ``closed``: no ledger (the sender was not in the table before this frame)
_CHUNK = 64 * 1024  # bytes of slots backed by the disk at a time, as they are first used
_RING_CHUNK = 1 << 20  # bytes of the ring read at a time by a restart
_MAX_COUNTED = 256 << 20  # bytes a restart reads to count a cut frame's lines; a file grown more was not cut

FileSizes = dict[tuple[int, int], int]  # (st_dev, st_ino) -> size


def progress_path(state_dir: str) -> str:
    return os.path.join(state_dir, "progress.slots")


@dataclass(frozen=True)
class Progress:
    """A sender's ledger read back: from its slot (``fold``: the folds counted when the slot was
    opened) or from the ring (``fold``: the number of the fold that wrote it; ``order``: its place in the ring)."""

    key: str
    fold: int
    order: int
    start_time: float
    first_seen: float
    next_seq: int
    records: int
    frames: int
    rejected: int
    repaired: int
    dropped: int
    gaps: int
    duplicates: int
    closed: bool
    last_seen: float

    def apply(self, sender: SenderStats) -> None:
        """Make ``sender``'s ledger this one."""
        sender.next_seq, sender.records, sender.frames = self.next_seq, self.records, self.frames
        sender.rejected, sender.repaired, sender.dropped = self.rejected, self.repaired, self.dropped
        sender.gaps, sender.duplicates, sender.closed = self.gaps, self.duplicates, self.closed
        if self.closed:
            sender.unclosed = ""
        sender.last_seen = max(sender.last_seen, self.last_seen)
        sender.first_seen = self.first_seen or sender.first_seen
        if not sender.start_time:
            sender.start_time = self.start_time


def file_sizes(handlers: Iterable[logging.Handler]) -> FileSizes:
    """The size of each regular file the ``handlers`` write to, by identity (a delayed FileHandler's by its path)."""
    return OutputFiles(handlers).sizes


class OutputFiles:
    """The regular files a restarted listener's handlers write to, measured before it writes anything.

    ``sizes``: each file's size by identity (st_dev, st_ino); ``paths``: where a
    FileHandler's file can be read (to count the lines a cut frame left); ``cut``: the
    paths :func:`read_progress` found cut in the middle of a line (the handler's open
    ends that line: :func:`mplog.listener.write_failures.end_cut_lines_on_open`).
    """

    def __init__(self, handlers: Iterable[logging.Handler]) -> None:
        self.sizes: FileSizes = {}
        self.paths: dict[tuple[int, int], str] = {}
        self.cut: list[str] = []
        for handler in handlers:
            stream = getattr(handler, "stream", None)
            try:
                if stream is not None:
                    st = os.fstat(stream.fileno())
                elif isinstance(handler, logging.FileHandler):
                    st = os.stat(handler.baseFilename)
                else:
                    continue
            except (OSError, ValueError, AttributeError):  # closed, gone, or no file descriptor (a StringIO)
                continue
            if stat.S_ISREG(st.st_mode):
                self.sizes[(st.st_dev, st.st_ino)] = st.st_size
                if isinstance(handler, logging.FileHandler):
                    self.paths[(st.st_dev, st.st_ino)] = handler.baseFilename


def read_progress(path: str, sizes_now: FileSizes | OutputFiles | None = None) -> tuple[list[Progress], list[Progress]]:
    """The senders' ledgers in the file at ``path``, and its fold records oldest first (none if it is no such file).

    A slot left *pending* (the listener died while dispatching that sender's frame) is
    read with the frame if a file recorded for it is now larger than it was then
    (``sizes_now``: the same files' sizes now, before anything else wrote to them), and
    without it otherwise. Given :class:`OutputFiles`, a frame the kill cut short (a file
    grown to a page boundary with fewer complete lines than the frame's records) counts
    its complete lines as received and the rest as gaps, and the files cut in the middle
    of a line are noted in ``cut``.
    """
    files = sizes_now if isinstance(sizes_now, OutputFiles) else None
    sizes = sizes_now.sizes if isinstance(sizes_now, OutputFiles) else sizes_now or {}
    try:
        # The header and the slots handed out are mapped; the ring is read where it holds data
        # (_ring_data): the parts never written are never read.
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _read_file(data, f.fileno(), sizes, files)
    except (OSError, ValueError):  # missing, or empty
        return [], []


def _read_file(
    data: mmap.mmap, fd: int, sizes_now: FileSizes, files: OutputFiles | None
) -> tuple[list[Progress], list[Progress]]:
    if len(data) < _HEADER or data[:8] != _MAGIC or struct.unpack_from("<I", data, 8)[0] != _VERSION:
        return [], []
    used, measured, room, ring, dispatched = struct.unpack_from("<IIIII", data, 12)
    (done,) = struct.unpack_from("<I", data, _DONE_AT)
    before = [_FILE.unpack_from(data, _FILES_AT + i * _FILE.size) for i in range(min(measured, _MAX_FILES))]
    grew = any(sizes_now.get((dev, ino), -1) > size for dev, ino, size in before)
    slots_at, ring_at = _HEADER, _ring_at(room)
    ledgers = []
    for index in range(min(used, room, max(len(data) - slots_at, 0) // _SLOT)):
        offset = slots_at + index * _SLOT
        state, valid, pending, _, length = struct.unpack_from("<BBBBH", data, offset)
        if state != VALID or valid > 1 or length > MAX_KEY:
            continue
        lost = 0
        if pending and pending - 1 != valid and grew:
            valid = pending - 1  # the frame reached a file: its ledger is the one being written
            lost = _unwritten(done, dispatched, before, files)
        start_time, first_seen, opened = _IDENT.unpack_from(data, offset + 8)
        found = _read(
            data, offset + _COPIES[valid], offset + _SLOT_KEY, length,
            fold=opened, order=0, start_time=start_time, first_seen=first_seen,
        )  # fmt: skip
        if found is not None:
            if lost:  # what the cut write did not reach the file with: lost at the kill, a gap
                lost = min(lost, found.records)
                found = dataclasses.replace(found, records=found.records - lost, gaps=found.gaps + lost)
            ledgers.append(found)
    folds = []
    for chunk in _ring_data(fd, ring_at, min(ring * _ENTRY, max(len(data) - ring_at, 0))):
        for offset in range(0, len(chunk) - _ENTRY + 1, _ENTRY):
            state, _, length = struct.unpack_from("<BBH", chunk, offset)
            if state != VALID or length > MAX_KEY:
                continue
            _, _, _, _, order, fold = _ENTRY_HEAD.unpack_from(chunk, offset)
            found = _read(
                chunk, offset + _ENTRY_LEDGER, offset + _ENTRY_KEY, length,
                fold=fold, order=order, start_time=0.0, first_seen=0.0,
            )  # fmt: skip
            if found is not None:
                folds.append(found)
    folds.sort(key=lambda p: p.order)
    return ledgers, folds


def _ring_data(fd: int, start: int, length: int) -> Iterator[bytes]:
    """The parts of the ring (``length`` bytes from ``start``) that hold data, in chunks of whole entries.

    Read with ``pread``, and only where the file holds data (``SEEK_DATA``): the ring is
    sparse, and on a tmpfs a mapped read of a hole allocates a page, so a restart on a
    small one died of SIGBUS (tests/reliability/test_state_dir_faults.py).
    """
    end = start + length
    at = start
    while at < end:
        try:
            at = os.lseek(fd, at, os.SEEK_DATA)
            stop = min(os.lseek(fd, at, os.SEEK_HOLE), end)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data past ``at``
                return
            stop = end  # no SEEK_DATA here: read it all
        at -= (at - start) % _ENTRY  # from the start of the entry the data begins in
        stop += -(stop - start) % _ENTRY  # to the end of the entry it ends in
        while at < min(stop, end):
            chunk = os.pread(fd, min(_RING_CHUNK, min(stop, end) - at), at)
            if len(chunk) < _ENTRY:
                return
            yield chunk
            at += len(chunk) - len(chunk) % _ENTRY


def _unwritten(done: int, dispatched: int, before: list[tuple[int, int, int]], files: OutputFiles | None) -> int:
    """How many of the pending frame's ``dispatched`` records did not reach their files (gaps, not received)."""
    if not dispatched or files is None:
        return 0  # not known (a file of an earlier version), or not to be counted (acknowledged delivery)
    if done:  # killed on the record path: the records after the dispatcher's mark were not written
        return max(dispatched - (done - 1), 0)
    return dispatched - _written(before, files, dispatched)


def _written(before: list[tuple[int, int, int]], files: OutputFiles, dispatched: int) -> int:
    """How many of the pending frame's ``dispatched`` records reached its files: all, unless a kill cut the write.

    A write that a SIGKILL cut ends on a page boundary. The frame counts as cut when a
    grown file ends on one and none of the grown files holds a line per record; the most
    lines any of them got are what was written (one line per record: the fast path's
    case). A file that cannot be read, or grew by more than a frame could write, says nothing.
    """
    most, cut, mid_line = 0, False, []
    for dev, ino, size in before:
        now = files.sizes.get((dev, ino), -1)
        if now <= size:
            continue
        path = files.paths.get((dev, ino))
        if path is None or now - size > _MAX_COUNTED:
            return dispatched
        lines, last = _lines_between(path, (dev, ino), size, now)
        if lines < 0:
            return dispatched
        if lines >= dispatched:
            return dispatched
        most = max(most, lines)
        if now % mmap.PAGESIZE == 0:
            cut = True
            if last != b"\n":
                mid_line.append(path)
    if not cut:
        return dispatched
    files.cut.extend(mid_line)
    return most


def _lines_between(path: str, identity: tuple[int, int], start: int, end: int) -> tuple[int, bytes]:
    """The newlines in bytes [start, end) of the file at ``path`` and its last byte; -1 if it is not that file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return -1, b""
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != identity:
            return -1, b""
        lines, at, last = 0, start, b""
        while at < end:
            chunk = os.pread(fd, min(1 << 20, end - at), at)
            if not chunk:
                break
            lines += chunk.count(b"\n")
            at += len(chunk)
            last = chunk[-1:]
        return lines, last
    except OSError:
        return -1, b""
    finally:
        os.close(fd)


def _read(
    data: mmap.mmap | bytes,
    at: int,
    key_at: int,
    length: int,
    *,
    fold: int,
    order: int,
    start_time: float,
    first_seen: float,
) -> Progress | None:
    try:
        key = data[key_at : key_at + length].decode()
    except UnicodeDecodeError:
        return None
    next_seq, records, frames, rejected, repaired, dropped, gaps, duplicates, closed, last_seen = _LEDGER.unpack_from(
        data, at
    )
    if closed == _NONE:
        # A sender that came with a frame which was not written: nothing of it was received,
        # whatever the stats checkpoint, written while the frame was dispatched, counted
        # (test_a_listener_killed_between_writing_a_frame_and_its_next_step_counts_what_it_wrote).
        next_seq = records = frames = rejected = repaired = dropped = gaps = duplicates = closed = 0
    return Progress(
        key, fold, order, start_time, first_seen,
        next_seq, records, frames, rejected, repaired, dropped, gaps, duplicates, bool(closed), last_seen,
    )  # fmt: skip


class ProgressFile:
    """The open progress file of a running listener: one slot per sender in its table, and the ring of folds.

    Every method runs on the receive loop's thread (:meth:`fold` under the stats lock,
    when the table folds a sender while it books a new one). The file is laid out for
    ``max_senders`` slots and as many fold records as the table remembers places
    (``DORMANT_PER_SLOT * max_senders``), and backed by the disk as they are first used.

    Args:
        path: the file, replaced by a new one.
        table: the sender table: each of its senders is given a slot holding its ledger
            now, each place it remembers a fold record; its fold count and bounds.
        files: the handlers whose files are measured before each frame (those a frame
            can reach: :func:`mplog.delivery.intent.file_handlers`).

    Raises:
        OSError: the file could not be written or allocated.
    """

    def __init__(self, path: str, table: SenderTable, files: list[Any]) -> None:
        senders, places = table.senders, table.places()
        max_senders = table.limits.max_senders
        self.path = path
        # Laid out for the table's bound (sparse: only what is used takes room), within reason:
        # a table larger than _MAX_ROOM keeps the checkpoint's numbers for the senders past it.
        self._room = min(max(max_senders, len(senders)) + 1, _MAX_ROOM)
        self._ring = min(max(DORMANT_PER_SLOT * max_senders, len(places), 1), _MAX_RING)
        self._ring_at = _ring_at(self._room)
        size = self._ring_at + self._ring * _ENTRY
        tmp = f"{path}.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, size)  # sparse: backed as it is used (_back)
            _allocate(fd, 0, _HEADER)
            os.write(fd, _MAGIC + struct.pack("<IIIII", _VERSION, 0, 0, self._room, self._ring))
            os.fchmod(fd, 0o600)
            os.replace(tmp, path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._fd = fd
        self._map = mmap.mmap(fd, self._ring_at)  # the header and the slots
        self._used = 0  # slots handed out
        self._slots_backed = 0  # bytes of slots backed by the disk
        self._slots: dict[str, int] = {}  # ledger key -> offset of its slot (-1: none, the checkpoint's numbers)
        self._free: list[int] = []  # offsets of slots freed by folds
        self._pending = 0  # offset of the slot whose frame is being dispatched (0: none)
        self._files = [h for h in files if _writes_a_file(h)][:_MAX_FILES]
        self._written = 0  # ring entries written
        self._full = False  # the disk refused the last slot chunk or fold record (said once on stderr)
        self._folds = table.folded["senders"]
        self._pack = _LEDGER.pack_into
        self._pack_file = _FILE.pack_into
        place = SenderStats("", 0, 0.0, 0)
        for key, next_seq, dropped, closed in places:  # remembered as folds the checkpoint counts
            place.next_seq, place.dropped, place.closed = next_seq, dropped, closed
            self._record_fold(key, place, 0)
        for key, sender in senders.items():
            self.store(key, sender)

    # ------------------------------------------------------------ per frame

    def begin(self, key: str, sender: SenderStats, records: int = 0, *, marked: bool = False) -> None:
        """Before a frame of ``key`` is dispatched: its ledger *with* the frame, pending until :meth:`commit`.

        ``records``: how many records the frame dispatches (0: not known), so that a restart
        can tell a frame the kill cut short from one written whole (:func:`read_progress`).
        ``marked``: the dispatcher marks its progress through the frame (:meth:`mark_written`).
        """
        offset = self._slots.get(key)
        if offset is None:
            offset = self._open_slot(key, sender, empty=True)
            if offset < 0:
                return
        elif offset < 0:
            return
        m = self._map
        copy = m[offset + 1] ^ 1
        if not self._write(offset + _COPIES[copy], sender):
            return
        fstat, pack_file, count = os.fstat, self._pack_file, 0
        for handler in self._files:
            stream = handler.stream
            if stream is None:
                continue
            try:
                st = fstat(stream.fileno())
            except (OSError, ValueError):  # closed meanwhile
                continue
            pack_file(m, _FILES_AT + count * _FILE.size, st.st_dev, st.st_ino, st.st_size)
            count += 1
        struct.pack_into("<I", m, 16, count)
        struct.pack_into("<I", m, _RECORDS_AT, min(records, 0xFFFFFFFF))
        struct.pack_into("<I", m, _DONE_AT, 1 if marked else 0)  # none written yet
        m[offset + 2] = copy + 1  # pending, and in which copy: written last
        self._pending = offset

    def mark_written(self, records: int) -> None:
        """The dispatcher's progress through the pending frame: its first ``records`` are in their files.

        Called on the record path after each record a handler wrote at once (a rotating or
        timed file, say: each record is its own ``write``), and with -1 once the frame is past
        that path (the lines collected for a whole frame are then written). A listener killed
        in between leaves the frame's tail unwritten, and its successor counts that tail as a
        gap (:func:`read_progress`), where it used to count the whole frame as written.
        """
        if self._pending:
            struct.pack_into("<I", self._map, _DONE_AT, 0 if records < 0 else min(records, 0xFFFFFFFE) + 1)

    def commit(self) -> None:
        """After the frame was dispatched: its ledger becomes the valid one."""
        offset = self._pending
        if offset:
            m = self._map
            m[offset + 1] ^= 1
            m[offset + 2] = 0
            self._pending = 0

    def store(self, key: str, sender: SenderStats) -> None:
        """Persist ``sender``'s ledger now (a frame that is counted but not dispatched: rejected as a whole)."""
        offset = self._slots.get(key)
        if offset is None:
            self._open_slot(key, sender)
        elif offset >= 0:
            m = self._map
            copy = m[offset + 1] ^ 1
            if self._write(offset + _COPIES[copy], sender):
                m[offset + 1] = copy

    def _write(self, at: int, sender: SenderStats, *, closed: int | None = None) -> bool:
        try:
            self._pack(
                self._map,
                at,
                sender.next_seq,
                sender.records,
                sender.frames,
                sender.rejected,
                sender.repaired,
                sender.dropped,
                sender.gaps,
                sender.duplicates,
                sender.closed if closed is None else closed,
                sender.last_seen,
            )
        except struct.error:  # a count past 2**64 (a hostile sender's drop count): the last good copy stays
            return False
        return True

    # ------------------------------------------------------------ slots and folds

    def _open_slot(self, key: str, sender: SenderStats, *, empty: bool = False) -> int:
        """Give ``key`` a slot holding its ledger (``empty``: none, its first frame is about to be written)."""
        raw = key.encode()
        offset = self._take_slot() if len(raw) <= MAX_KEY else None
        if offset is None:  # no room: it keeps the checkpoint's numbers
            self._slots[key] = -1
            return -1
        m = self._map
        m[offset] = FREE  # a kill while it is rewritten leaves a slot that is not read
        struct.pack_into("<BBBH", m, offset + 1, 0, 0, 0, len(raw))
        _IDENT.pack_into(m, offset + 8, sender.start_time, sender.first_seen, self._folds)
        m[offset + _SLOT_KEY : offset + _SLOT_KEY + len(raw)] = raw
        self._write(offset + _COPIES[0], sender, closed=_NONE if empty else None)
        self._slots[key] = offset
        m[offset] = VALID  # only once whole
        return offset

    def _take_slot(self) -> int | None:
        if self._free:
            return self._free.pop()
        if self._used >= self._room:
            return None
        offset = _HEADER + self._used * _SLOT
        if offset + _SLOT > _HEADER + self._slots_backed:
            if not self._back(_HEADER + self._slots_backed, self._ring_at):
                return None
            self._slots_backed += _CHUNK
        self._used += 1
        struct.pack_into("<I", self._map, 12, self._used)
        return offset

    def _back(self, start: int, end: int) -> bool:
        """Back the next chunk from ``start`` (not past ``end``) by the disk; False when it is full."""
        try:
            _allocate(self._fd, start, min(_CHUNK, end - start))
        except OSError as exc:
            self._note_full(exc)
            return False
        self._note_full(None)
        return True

    def _note_full(self, error: OSError | None) -> None:
        """Say once on stderr that the disk refused a slot or a fold record, and once that it takes them again."""
        if error is not None and not self._full:
            say(
                f"mplog: cannot grow {self.path} ({error.strerror or error}): until it can, new senders and folds "
                "keep the checkpoint's numbers, so a listener killed mid-stream may count their records "
                "written since the last checkpoint as gaps"
            )
        elif error is None and self._full:
            say(f"mplog: {self.path} grows again")
        self._full = error is not None

    def fold(self, key: str, sender: SenderStats, fold: int) -> None:
        """The table folded ``key`` as its fold number ``fold``: record its final ledger in the ring, free its slot."""
        self._folds = fold
        self._record_fold(key, sender, fold)
        offset = self._slots.pop(key, None)
        if offset is not None and offset >= 0:
            self._map[offset] = FREE  # after the fold record: a kill in between finds the slot stale
            self._free.append(offset)

    def _record_fold(self, key: str, sender: SenderStats, fold: int) -> None:
        raw = key.encode()
        if len(raw) > MAX_KEY:
            return
        entry = bytearray(_ENTRY)
        _ENTRY_HEAD.pack_into(entry, 0, VALID, 0, len(raw), 0, self._written, fold)
        try:
            _LEDGER.pack_into(
                entry, _ENTRY_LEDGER,
                sender.next_seq, sender.records, sender.frames, sender.rejected, sender.repaired,
                sender.dropped, sender.gaps, sender.duplicates, sender.closed, sender.last_seen,
            )  # fmt: skip
        except struct.error:  # a count past 2**64: no record (its fold is lost to a restart)
            return
        entry[_ENTRY_KEY : _ENTRY_KEY + len(raw)] = raw
        try:
            os.pwrite(self._fd, entry, self._ring_at + (self._written % self._ring) * _ENTRY)
        except OSError as exc:  # a full disk: no record
            self._note_full(exc)
            return
        if self._full:
            self._note_full(None)
        self._written += 1

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._map.close()
        with contextlib.suppress(OSError):
            os.close(self._fd)


def _ring_at(room: int) -> int:
    """Where the ring starts in a file with ``room`` slots: on a page boundary."""
    return -(-(_HEADER + room * _SLOT) // _PAGE) * _PAGE


def _writes_a_file(handler: Any) -> bool:
    """A FileHandler, or a stream handler whose stream is a regular file now (not a terminal or a pipe)."""
    if isinstance(handler, logging.FileHandler):
        return True
    try:
        return stat.S_ISREG(os.fstat(handler.stream.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):
        return False


def _allocate(fd: int, start: int, length: int) -> None:
    """Back ``length`` bytes from ``start`` by the disk, so that a store there never SIGBUSes on a full disk."""
    fallocate = getattr(os, "posix_fallocate", None)  # not on macOS: written pages are found there when used
    if fallocate is not None and length > 0:
        fallocate(fd, start, length)
