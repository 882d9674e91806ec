"""Spool files for acknowledged delivery: unacknowledged frames that outlive their worker.

With ``spool_dir`` set, :class:`mplog.ack.AckingSender` appends every frame it keeps to
its own spool file (:class:`OwnSpool`) before sending it, and forgets it once the
listener acknowledges it. A live worker holds an exclusive ``flock`` on its file; a
file nobody holds belongs to a worker that died, and the next worker to start adopts
it (:func:`adopt_spools`): it resends the frames under the dead worker's identity (the
listener drops what it already wrote), then says goodbye for it and deletes the file.

A file is a 512-byte header, then entries::

    header: b"MPLOGSPL", u32 version, u32 reserved,
            at 16: u64 stream, u64 next_seq, u32 crc32  (acknowledged progress)
            at 48: u16 length, u32 crc32, sender bytes  (the writer's identity)
    entry:  u32 length, u32 crc32 of the frame, frame

all little-endian. A reader stops at the first entry that is short or fails its
checksum: a write torn by SIGKILL or a full disk loses that frame only. Files are
written through the page cache without ``fsync``: they survive the process, not a
power loss (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import stat
import struct
import sys
import time
import zlib
from collections import deque
from collections.abc import Container
from typing import Any, NamedTuple

import msgpack

from mplog.wire import FLAG_FINAL, build_frame

__all__ = [
    "AdoptedSpool",
    "AdoptedStream",
    "FrameHead",
    "OwnSpool",
    "SpoolContents",
    "Spooler",
    "adopt_spools",
    "frame_head",
    "goodbye_frame",
    "parse_spool",
    "prepare_dir",
]

MAGIC = b"MPLOGSPL"
VERSION = 1
HEADER_SIZE = 512
SUFFIX = ".spool"
ENTRY = struct.Struct("<II")  # frame length, crc32 of the frame
_PREAMBLE = struct.Struct("<8sII")  # magic, version, reserved
_MARK = struct.Struct("<QQI")  # stream, next_seq, crc32 of the first 16 bytes
_MARK_AT = 16
_IDENT = struct.Struct("<HI")  # length, crc32
_IDENT_AT = 48
_MAX_IDENTITY = HEADER_SIZE - _IDENT_AT - _IDENT.size
_TMP = ".tmp"
_STALE_TMP = 10.0  # seconds: an unlocked temporary file older than this was left by a crash
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class FrameHead(NamedTuple):
    """What a spool needs from a frame built by :func:`mplog.wire.build_frame`."""

    sender: bytes  # the packed sender array, as the frame carries it
    stream: int
    seq: int
    dropped: int
    flags: int
    records: int

    @property
    def end_seq(self) -> int:
        return self.seq + self.records


def frame_head(frame: bytes) -> FrameHead:
    """Read a frame's envelope, keeping the sender's bytes as they are.

    Raises:
        ValueError: the bytes do not start like a frame.
    """
    unpacker = msgpack.Unpacker(max_buffer_size=len(frame) + 16, max_str_len=1024, max_ext_len=0)
    unpacker.feed(frame[:2048])
    try:
        if unpacker.read_array_header() != 6 or unpacker.unpack() != 1:
            raise ValueError("not a version 1 frame")
        start = unpacker.tell()
        sender = unpacker.unpack()
        end = unpacker.tell()
        seq, dropped, flags = unpacker.unpack(), unpacker.unpack(), unpacker.unpack()
        records = unpacker.read_array_header()
        stream = sender[3]
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"not a frame: {exc}") from None
    if not all(type(v) is int and v >= 0 for v in (stream, seq, dropped, flags)):
        raise ValueError("not a frame: bad envelope")
    return FrameHead(frame[start:end], stream, seq, dropped, flags, records)


def goodbye_frame(sender: bytes, next_seq: int, dropped: int) -> bytes:
    """The frame a sender ends with: no records, FLAG_FINAL, its final next sequence number."""
    return build_frame(sender, next_seq, dropped, FLAG_FINAL, [])


def _entry(frame: bytes) -> bytes:
    return ENTRY.pack(len(frame), zlib.crc32(frame)) + frame


def _mark(stream: int, next_seq: int) -> bytes:
    body = struct.pack("<QQ", stream, next_seq)
    return body + struct.pack("<I", zlib.crc32(body))


def _header(stream: int, next_seq: int, identity: bytes) -> bytes:
    head = bytearray(HEADER_SIZE)
    _PREAMBLE.pack_into(head, 0, MAGIC, VERSION, 0)
    head[_MARK_AT : _MARK_AT + _MARK.size] = _mark(stream, next_seq)
    if identity:
        _IDENT.pack_into(head, _IDENT_AT, len(identity), zlib.crc32(identity))
        head[_IDENT_AT + _IDENT.size : _IDENT_AT + _IDENT.size + len(identity)] = identity
    return bytes(head)


class SpoolContents(NamedTuple):
    """What a spool file holds, up to its last whole entry."""

    frames: list[bytes]
    mark: tuple[int, int] | None  # (stream, next_seq) acknowledged when the writer last recorded it
    identity: bytes  # the writer's packed sender, or b"" before its first frame
    torn: int  # bytes after the last whole entry (a torn write)


def parse_spool(data: bytes) -> SpoolContents:
    """Split a spool file into its frames, ignoring a torn tail.

    Raises:
        ValueError: not a spool file (wrong magic or version).
    """
    if len(data) < HEADER_SIZE:
        raise ValueError(f"{len(data)} bytes is shorter than a spool header")
    magic, version, _ = _PREAMBLE.unpack_from(data, 0)
    if magic != MAGIC or version != VERSION:
        raise ValueError("not an mplog spool file (magic or version)")
    stream, next_seq, crc = _MARK.unpack_from(data, _MARK_AT)
    mark = (stream, next_seq) if crc == zlib.crc32(data[_MARK_AT : _MARK_AT + 16]) else None
    length, crc = _IDENT.unpack_from(data, _IDENT_AT)
    identity = data[_IDENT_AT + _IDENT.size : _IDENT_AT + _IDENT.size + length] if length <= _MAX_IDENTITY else b""
    if not identity or zlib.crc32(identity) != crc:
        identity = b""
    frames: list[bytes] = []
    offset = HEADER_SIZE
    while offset + ENTRY.size <= len(data):
        length, crc = ENTRY.unpack_from(data, offset)
        frame = data[offset + ENTRY.size : offset + ENTRY.size + length]
        if not length or len(frame) != length or zlib.crc32(frame) != crc:
            break
        frames.append(frame)
        offset += ENTRY.size + length
    return SpoolContents(frames, mark, identity, len(data) - offset)


def prepare_dir(path: str) -> None:
    """Create ``path`` private to this user (0700), or check that an existing one is.

    Raises:
        OSError: it cannot be created, or other users could read or plant files in it.
    """
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise PermissionError(
            f"spool_dir {path!r} must be a directory private to this user (mode 0700, owner uid {os.geteuid()}), "
            f"got mode {stat.S_IMODE(st.st_mode):04o}, owner uid {st.st_uid}"
        )


def _write_all(fd: int, data: bytes, offset: int) -> None:
    written = os.pwrite(fd, data, offset)
    if written != len(data):  # a full disk gives a short write before it gives ENOSPC
        raise OSError(28, f"short write to a spool file ({written} of {len(data)} bytes)")


def _create_locked(path: str, header: bytes) -> int:
    """Write a locked file at ``path``: built under a temporary name, so no one adopts it half made."""
    tmp = path + _TMP
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | _O_CLOEXEC | _O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _write_all(fd, header, 0)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        os.close(fd)
        raise
    return fd


class OwnSpool:
    """The spool file of this process's AckingSender: what it keeps, also on disk.

    Not thread-safe: the sender calls it with its lock held. Every method but
    :meth:`remove` and :meth:`release` may raise OSError (the sender then stops spooling).

    Args:
        directory: the spool directory (see :func:`prepare_dir`).
        bound: the largest size of the file, the resend buffer's bound (one frame may
            pass it while the file holds no other, as in the memory buffer).
    """

    def __init__(self, directory: str, bound: int) -> None:
        self.bound = bound
        self.path = os.path.join(directory, f"{os.getpid()}-{secrets.token_hex(6)}{SUFFIX}")
        self._identity = b""
        self._mark = (0, 0)
        self._fd = _create_locked(self.path, _header(0, 0, b""))
        self._end = HEADER_SIZE  # where the next entry goes
        self._live: deque[tuple[int, bytes]] = deque()  # (end_seq, frame) of unacknowledged entries
        self._live_bytes = HEADER_SIZE  # the file's size once compacted
        self._last = HEADER_SIZE  # offset of the last entry appended (for undo)

    def append(self, frame: bytes, head: FrameHead) -> bool:
        """Add a frame the sender keeps; False (nothing written) if the bound leaves no room."""
        size = ENTRY.size + len(frame)
        if self._live and self._end + size > self.bound:
            # Rewriting costs the live bytes: only when it frees a quarter of the bound,
            # otherwise the sender refuses (its worker's policy applies) until acks free more.
            if self._live_bytes + size > self.bound or self._end - self._live_bytes < self.bound // 4:
                return False
            self._compact()
        if not self._identity and len(head.sender) <= _MAX_IDENTITY:
            ident = _IDENT.pack(len(head.sender), zlib.crc32(head.sender)) + head.sender
            _write_all(self._fd, ident, _IDENT_AT)
            self._identity = head.sender
        _write_all(self._fd, _entry(frame), self._end)
        self._last = self._end
        self._end += size
        self._live.append((head.end_seq, frame))
        self._live_bytes += size
        return True

    def undo(self) -> None:
        """Take back the last append (the transport refused the frame after all)."""
        _, frame = self._live.pop()
        self._live_bytes -= ENTRY.size + len(frame)
        self._end = self._last
        os.ftruncate(self._fd, self._end)

    def acknowledged(self, stream: int, next_seq: int) -> None:
        """Forget frames below ``next_seq``; an empty spool is truncated to its header."""
        live = self._live
        popped = False
        while live and live[0][0] <= next_seq:
            _, frame = live.popleft()
            self._live_bytes -= ENTRY.size + len(frame)
            popped = True
        if not popped:
            return
        if (stream, next_seq) != self._mark:
            _write_all(self._fd, _mark(stream, next_seq), _MARK_AT)
            self._mark = (stream, next_seq)
        if not live:
            os.ftruncate(self._fd, HEADER_SIZE)
            self._end = self._last = HEADER_SIZE

    def _compact(self) -> None:
        """Rewrite the file with only its unacknowledged frames (locked before it replaces the old one)."""
        data = _header(*self._mark, self._identity) + b"".join(_entry(frame) for _, frame in self._live)
        fd = _create_locked(self.path, data)
        os.close(self._fd)  # the old file is gone from the directory; its lock goes with it
        self._fd = fd
        self._end = self._last = self._live_bytes = len(data)

    def stop(self) -> None:
        """Stop spooling after a write failure: keep the lock, leave no frame and no identity behind
        (a worker adopting the file after this one died must not say goodbye at a stale position)."""
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, HEADER_SIZE)
            _write_all(self._fd, bytes(_IDENT.size), _IDENT_AT)
        self._live.clear()

    def remove(self) -> None:
        """Everything was acknowledged: delete the file."""
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        self.release()

    def release(self) -> None:
        """Close the file, keeping it (for the next worker, or for this process's parent after a fork)."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1


class AdoptedStream(NamedTuple):
    """One sender stream of a dead worker's spool file: what is left to resend, and how to close it."""

    frames: list[tuple[int, bytes]]  # (end_seq, frame), oldest first, none acknowledged yet
    sender: bytes  # the dead sender's packed identity
    end_seq: int  # where its goodbye goes
    dropped: int  # its last reported policy drops
    final: bool  # its own goodbye is among the frames


class AdoptedSpool:
    """A dead worker's spool file, locked by this process until its frames are acknowledged."""

    def __init__(self, path: str, fd: int, contents: SpoolContents) -> None:
        self.path = path
        self.contents = contents
        self._fd = fd

    def streams(self) -> dict[int, AdoptedStream]:
        """The file's frames by stream, less those its writer recorded as acknowledged.

        A file with no frame left but a writer that was acknowledged past 0 yields that
        writer with no frames: only its goodbye is missing.

        Raises:
            ValueError: a whole entry that is not a frame.
        """
        mark, identity = self.contents.mark, self.contents.identity
        found: dict[int, AdoptedStream] = {}
        for frame in self.contents.frames:
            head = frame_head(frame)
            if head.records and mark is not None and mark[0] == head.stream and head.end_seq <= mark[1]:
                continue  # acknowledged before the writer died
            old = found.get(head.stream) or AdoptedStream([], head.sender, 0, 0, False)
            old.frames.append((head.end_seq, frame))
            found[head.stream] = AdoptedStream(
                old.frames,
                head.sender,
                max(old.end_seq, head.end_seq),
                max(old.dropped, head.dropped),
                bool(head.flags & FLAG_FINAL),
            )
        if not found and identity and mark is not None and mark[1]:
            try:
                stream = msgpack.unpackb(identity)[3]
            except Exception as exc:
                raise ValueError(f"unreadable identity: {exc}") from None
            if stream == mark[0]:
                found[stream] = AdoptedStream([], identity, mark[1], 0, False)
        return found

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        self.release()

    def release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1


def _lock_unheld(path: str) -> int | None:
    """Open and lock ``path`` if no live process holds it and it is this user's regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | _O_CLOEXEC | _O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        st, now = os.fstat(fd), os.stat(path, follow_symlinks=False)
        # Replaced (compacted) or deleted between our open and our lock: not this file any more.
        same = (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)
        if same and st.st_uid == os.geteuid() and stat.S_ISREG(st.st_mode):
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def adopt_spools(directory: str, skip: str, budget: int) -> tuple[list[AdoptedSpool], list[str], bool]:
    """Lock and read the spool files in ``directory`` that no live process holds.

    Args:
        skip: this process's own spool file.
        budget: stop adopting once this many bytes are held (always at least one file);
            the others stay for a later call or another worker.

    Returns:
        The adopted spools, one line per file that is not a spool (left alone), and
        whether the budget left files unadopted.
    """
    adopted: list[AdoptedSpool] = []
    problems: list[str] = []
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        return adopted, [f"cannot list spool_dir {directory!r}: {exc}"], False
    for name in names:
        path = os.path.join(directory, name)
        if name.endswith(SUFFIX + _TMP):
            _remove_stale_tmp(path)
            continue
        if not name.endswith(SUFFIX) or path == skip:
            continue
        if adopted and budget <= 0:
            return adopted, problems, True
        fd = _lock_unheld(path)
        if fd is None:
            continue
        try:
            data = _read_all(fd)
            contents = parse_spool(data)
        except (OSError, ValueError) as exc:
            problems.append(f"spool file {path} left alone: {exc}")
            os.close(fd)
            continue
        adopted.append(AdoptedSpool(path, fd, contents))
        budget -= len(data)
    return adopted, problems, False


def _remove_stale_tmp(path: str) -> None:
    """A temporary file nobody holds, older than a rewrite takes, was left by a crash mid-rewrite."""
    fd = _lock_unheld(path)
    if fd is None:
        return
    try:
        if time.time() - os.fstat(fd).st_mtime > _STALE_TMP:
            os.unlink(path)
    except OSError:
        pass
    finally:
        os.close(fd)


def report(line: str) -> None:
    """One line on stderr: mplog's channel for what it cannot log (it is the logging)."""
    with contextlib.suppress(Exception):
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


class Spooler:
    """A sender's spool: its own file, and the dead workers' files it adopted.

    A failure to create or write the own file is counted in :attr:`errors`, reported
    once, and ends spooling: the sender goes on with its memory buffer alone. Not
    thread-safe: the sender calls it with its lock held.
    """

    def __init__(self, directory: str, bound: int) -> None:
        self.directory = directory
        self.bound = bound
        self.errors = 0
        self.own: OwnSpool | None = None
        self.adopted: dict[str, tuple[AdoptedSpool, set[int]]] = {}  # path -> (file, its streams not yet closed)
        self.more = False  # the last adoption left files for later (its memory budget was spent)
        try:
            prepare_dir(directory)
            self.own = OwnSpool(directory, bound)
        except OSError as exc:
            self._failed(exc, directory)

    @property
    def path(self) -> str | None:
        """The own file, while it is written."""
        return self.own.path if self.own is not None and not self.errors else None

    def _failed(self, exc: OSError, where: str) -> None:
        self.errors += 1
        if self.own is not None and self.errors == 1:
            self.own.stop()
        if self.errors == 1:
            report(
                f"mplog: spool {where}: {exc}; acknowledged delivery goes on without a spool "
                f"(unacknowledged frames are kept in memory only; pid {os.getpid()})"
            )

    def call(self, method: str, *args: Any) -> Any:
        """``OwnSpool.method(*args)``; None when not spooling or when it failed."""
        if self.own is None or self.errors:
            return None
        try:
            return getattr(self.own, method)(*args)
        except OSError as exc:
            self._failed(exc, self.own.path)
            return None

    def adopt(self, taken: Container[int]) -> list[tuple[str, dict[int, AdoptedStream]]]:
        """Lock the unheld spool files of the directory; their streams to resend, by file.

        Args:
            taken: stream ids the sender tracks already (a file naming one is left alone).
        """
        if self.own is None:
            return []
        spools, problems, self.more = adopt_spools(self.directory, self.own.path, self.bound)
        for line in problems:
            report(f"mplog: {line}")
        result = []
        for spool in spools:
            try:
                found = spool.streams()
            except ValueError as exc:
                report(f"mplog: spool file {spool.path} holds an entry that is not a frame ({exc}); left as it is")
                spool.release()
                continue
            if not found:  # nothing left to send, nobody to say goodbye for
                spool.remove()
                continue
            if any(sid in taken for sid in found):
                spool.release()  # the same stream id twice (one chance in 2**32): another worker's job
                continue
            if spool.contents.torn:
                report(f"mplog: spool file {spool.path}: ignored a torn last entry ({spool.contents.torn} bytes)")
            self.adopted[spool.path] = (spool, set(found))
            result.append((spool.path, found))
        return result

    def stream_done(self, path: str, stream: int) -> None:
        """An adopted stream is acknowledged up to its goodbye: the file goes with its last one."""
        spool, open_streams = self.adopted[path]
        open_streams.discard(stream)
        if not open_streams:
            del self.adopted[path]
            spool.remove()

    def give_up(self, path: str, frames: int, waited: float) -> set[int]:
        """Leave an adopted file for the next worker; returns its streams, for the sender to forget."""
        spool, open_streams = self.adopted.pop(path)
        report(
            f"mplog: spool file {path} of a dead worker: {frames} frames were not acknowledged "
            f"within {waited:g} s; left for the next worker (pid {os.getpid()})"
        )
        spool.release()
        return open_streams

    def release_inherited(self) -> None:
        """In a forked child: close the parent's files without unlocking them (the locks are the parent's)."""
        if self.own is not None:
            self.own.release()
        for spool, _ in self.adopted.values():
            spool.release()
        self.own, self.adopted = None, {}

    def close(self, *, keep: bool) -> None:
        """Keep the own file (unacknowledged frames, for the next worker) or delete it."""
        if self.own is not None:
            if keep and not self.errors:
                self.own.release()
            else:
                self.own.remove()
