"""The spool directory and its files: this process's own, and dead workers' to adopt.

A live worker holds an exclusive ``flock`` on its own file (:class:`OwnSpool`); a file
is built under a temporary name and renamed into place already locked, so no one
adopts it half made, and rewritten the same way when it reaches its bound. A file
nobody holds belongs to a worker that died: :func:`adopt_spools` locks and reads it
(:class:`AdoptedSpool`). Files are written through the page cache without ``fsync``:
they survive the process, not a power loss (docs/reliability.md). The bytes inside are
:mod:`mplog.delivery.spool_format`'s.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import stat
import time
from collections import deque
from typing import NamedTuple

from mplog.delivery.spool_format import (
    ENTRY,
    FLAGS_AT,
    HEADER_SIZE,
    IDENT_AT,
    MARK_AT,
    MAX_IDENTITY,
    NO_IDENTITY,
    STOPPED,
    SpoolContents,
    pack_entry,
    pack_flags,
    pack_header,
    pack_identity,
    pack_mark,
    parse_spool,
)
from mplog.transports.base import foreign_dir_problem
from mplog.wire import FLAG_FINAL, Envelope, read_envelope, read_sender

__all__ = ["SUFFIX", "AdoptedSpool", "AdoptedStream", "OwnSpool", "adopt_spools", "prepare_dir"]

SUFFIX = ".spool"
_TMP = ".tmp"
_STALE_TMP = 10.0  # seconds: an unlocked temporary file older than this was left by a crash
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def prepare_dir(path: str) -> None:
    """Create ``path`` private to this user (0700), or check that an existing one is.

    Raises:
        OSError: it cannot be created, or other users could read or plant files in it (a
            directory, or a symbolic link to one, that another user owns: its owner can
            replace what is in it).
    """
    os.makedirs(path, mode=0o700, exist_ok=True)
    problem = foreign_dir_problem(path, "spool_dir", "another spool_dir")
    if problem is not None:
        raise PermissionError(problem)
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


class _SpoolFile:
    """A spool file this process holds open (and locked): ``path`` and its descriptor."""

    path: str
    _fd: int

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


class OwnSpool(_SpoolFile):
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
        self._fd = _create_locked(self.path, pack_header(0, 0, b""))
        self._end = HEADER_SIZE  # where the next entry goes
        self._live: deque[tuple[int, bytes]] = deque()  # (end_seq, frame) of unacknowledged entries
        self._live_bytes = HEADER_SIZE  # the file's size once compacted
        self._last = HEADER_SIZE  # offset of the last entry appended (for undo)

    def append(self, frame: bytes, head: Envelope) -> bool:
        """Add a frame the sender keeps; False (nothing written) if the bound leaves no room."""
        size = ENTRY.size + len(frame)
        if self._live and self._end + size > self.bound:
            # Rewriting costs the live bytes: only when it frees a quarter of the bound,
            # otherwise the sender refuses (its worker's policy applies) until acks free more.
            if self._live_bytes + size > self.bound or self._end - self._live_bytes < self.bound // 4:
                return False
            self._compact()
        if not self._identity and len(head.sender) <= MAX_IDENTITY:
            _write_all(self._fd, pack_identity(head.sender), IDENT_AT)
            self._identity = head.sender
        _write_all(self._fd, pack_entry(frame), self._end)
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
            _write_all(self._fd, pack_mark(stream, next_seq), MARK_AT)
            self._mark = (stream, next_seq)
        if not live:
            os.ftruncate(self._fd, HEADER_SIZE)
            self._end = self._last = HEADER_SIZE

    def _compact(self) -> None:
        """Rewrite the file with only its unacknowledged frames (locked before it replaces the old one)."""
        data = pack_header(*self._mark, self._identity) + b"".join(pack_entry(frame) for _, frame in self._live)
        fd = _create_locked(self.path, data)
        os.close(self._fd)  # the old file is gone from the directory; its lock goes with it
        self._fd = fd
        self._end = self._last = self._live_bytes = len(data)

    @property
    def kept(self) -> int:
        """Unacknowledged frames in the file (after :meth:`stop`: those it kept)."""
        return len(self._live)

    def stop(self) -> int:
        """Stop appending after a write failure; keep the lock and the whole entries already written.

        The torn entry is cut off (a shrink needs no room on a full disk) and the file is
        marked STOPPED: a worker adopting it after this one died resends its frames but
        says no goodbye after them, as this sender's stream goes on from memory (a goodbye
        there would close it at a stale position). :meth:`acknowledged` still records
        acknowledgements, so an adopter resends only what is not acknowledged. When that
        cannot be done, nothing is kept (:meth:`drop`).

        Returns:
            How many frames the file keeps.
        """
        try:
            os.ftruncate(self._fd, self._end)
            if self._live:
                _write_all(self._fd, pack_flags(STOPPED), FLAGS_AT)
                return len(self._live)
        except OSError:
            pass
        self.drop()
        return 0

    def drop(self) -> None:
        """Keep nothing: no frame and no identity (an adopter must not say goodbye at a stale position)."""
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, HEADER_SIZE)
            _write_all(self._fd, NO_IDENTITY, IDENT_AT)
        self._live.clear()


class AdoptedStream(NamedTuple):
    """One sender stream of a dead worker's spool file: what is left to resend, and how to close it."""

    frames: list[tuple[int, bytes]]  # (end_seq, frame), oldest first, none acknowledged yet
    sender: bytes  # the dead sender's packed identity
    end_seq: int  # where its goodbye goes
    dropped: int  # its last reported policy drops
    final: bool  # no goodbye to add: its own is among the frames, or its writer stopped spooling (STOPPED)


class AdoptedSpool(_SpoolFile):
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
            head = read_envelope(frame)
            if head.records and mark is not None and mark[0] == head.stream and head.end_seq <= mark[1]:
                continue  # acknowledged before the writer died
            old = found.get(head.stream) or AdoptedStream([], head.sender, 0, 0, False)
            old.frames.append((head.end_seq, frame))
            found[head.stream] = AdoptedStream(
                old.frames,
                head.sender,
                max(old.end_seq, head.end_seq),
                max(old.dropped, head.dropped),
                bool(head.flags & FLAG_FINAL) or self.contents.stopped,
            )
        if not found and identity and mark is not None and mark[1] and not self.contents.stopped:
            try:
                stream = read_sender(identity).stream
            except Exception as exc:
                raise ValueError(f"unreadable identity: {exc}") from None
            if stream == mark[0]:
                found[stream] = AdoptedStream([], identity, mark[1], 0, False)
        return found


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
