"""Acknowledged delivery: the write-ahead intent that lets a restarted listener undo a torn frame.

Before a frame's records reach the handlers, the listener records an *intent* in a small
memory-mapped file beside the marks: which sender's records it is about to write
(``first`` .. ``end``) and, for every file a handler appends to, the file's identity
(st_dev, st_ino) and size. Once the frame was handled and its mark stored, the intent is
cleared. A listener killed in between leaves the intent behind; the next one, before its
handlers write anything, cuts each of those files back to the recorded size, unless the
persisted mark shows that the frame was finished. The frame was never acknowledged, so
its worker sends it again and it is written once.

Only appended regular files can be undone. A file that is no longer the one recorded
(rotated or replaced in between) is left alone and reported; records that went to a
syslog daemon, a mail server or a socket are out of reach (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import logging.handlers
import mmap
import os
import stat
import struct
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgpack

__all__ = [
    "FileState",
    "IntentFile",
    "Recovery",
    "create_replacing",
    "file_handlers",
    "measure",
    "read_intent",
    "reserve",
    "roll_back",
]

_MAGIC = b"MPLOGWAI"
_HEADER = 16  # magic, u32 state (1: a frame is being written), u32 body length
_STATE = 8
_LENGTH = 12
_OPEN = 1
_PAGE = 4096
_MAX_BODY = 16 << 20  # a body claiming more is damage, not an intent


class FileState(NamedTuple):
    """A file a handler appends to, as it was before a frame: its identity and size."""

    path: str
    dev: int
    ino: int
    size: int
    exists: bool = True  # False: a delayed handler's file that did not exist yet (size 0)

    def pack(self) -> list[Any]:
        return [os.fsencode(self.path), self.dev, self.ino, self.size, self.exists]


@dataclass
class Recovery:
    """What a restarted listener found of the frame its predecessor was writing when it died.

    ``complete``: the persisted mark shows the frame was finished; nothing was undone.
    ``truncated`` and ``skipped`` describe each recorded file (one line each).
    """

    key: str
    first: int
    end: int
    complete: bool
    truncated: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _loggers() -> list[logging.Logger]:
    found = [logging.getLogger()]
    found.extend(x for x in logging.Logger.manager.loggerDict.values() if isinstance(x, logging.Logger))
    return found


def file_handlers(configured: list[logging.Handler]) -> list[logging.StreamHandler[Any]]:
    """The stream handlers that write while a frame is dispatched: candidates for :func:`measure`.

    Reached from the loggers' handlers, and from a handler's ``target`` (a MemoryHandler,
    flushed before the mark is stored). A handler fed from a queue by a thread of its own
    writes at times unrelated to the frame, so it is not a candidate, and neither is any
    handler writing to the same file as one.

    Args:
        configured: every handler of the configuration (``mplog.listener.loop._all_handlers()``).
    """
    reached: dict[int, logging.Handler] = {}
    pending = [h for logger in _loggers() for h in logger.handlers]
    while pending:
        handler = pending.pop(0)
        if id(handler) in reached:
            continue
        reached[id(handler)] = handler
        target = getattr(handler, "target", None)
        if isinstance(target, logging.Handler):
            pending.append(target)
    elsewhere = {h.baseFilename for h in configured if isinstance(h, logging.FileHandler) and id(h) not in reached}
    return [
        h
        for h in reached.values()
        if isinstance(h, logging.StreamHandler)
        and not (isinstance(h, logging.FileHandler) and h.baseFilename in elsewhere)
    ]


def measure(handler: logging.StreamHandler[Any]) -> FileState | None:
    """The file ``handler`` appends to and its size now; None when it writes to no regular file.

    The size comes from ``fstat`` on the open stream (the file's end, which is where an
    ``O_APPEND`` write lands). A FileHandler opened with ``delay=True`` that has written
    nothing yet, and a WatchedFileHandler, are measured by their path. Everything it wrote has been flushed: file and
    stream handlers flush in every emit, and the others are flushed after every frame.
    """
    stream = handler.stream
    try:
        if isinstance(handler, logging.FileHandler):
            path = handler.baseFilename
            # A WatchedFileHandler writes to whatever file is at its path (it reopens when
            # the file was moved away), so that file is the one to measure.
            if stream is None or isinstance(handler, logging.handlers.WatchedFileHandler):
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    return FileState(path, 0, 0, 0, exists=False)
            else:
                st = os.fstat(stream.fileno())
            return FileState(path, st.st_dev, st.st_ino, st.st_size) if stat.S_ISREG(st.st_mode) else None
        name = getattr(stream, "name", None)
        if not isinstance(name, str) or name.startswith("<"):
            return None  # <stderr>, a pipe, a socket: nothing to cut back
        fd = stream.fileno()
        st = os.fstat(fd)
        # A stream that writes at its own offset would leave a hole when its file is cut back.
        if not stat.S_ISREG(st.st_mode) or not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND:
            return None
        return FileState(os.path.abspath(name), st.st_dev, st.st_ino, st.st_size)
    except (OSError, ValueError, AttributeError):  # a closed or unusual stream: not undoable
        return None


def roll_back(files: list[FileState]) -> tuple[list[str], list[str]]:
    """Cut every file back to its recorded size, if it is still the same file.

    Returns:
        (what was cut, what was left alone and why), one line per file.
    """
    truncated: list[str] = []
    skipped: list[str] = []
    for state in files:
        try:
            st = os.stat(state.path)
        except FileNotFoundError:
            if state.exists:
                skipped.append(f"{state.path}: gone (rotated away?)")
            continue
        except OSError as exc:
            skipped.append(f"{state.path}: {exc}")
            continue
        if state.exists and (st.st_dev, st.st_ino) != (state.dev, state.ino):
            skipped.append(f"{state.path}: replaced by another file (rotated?)")
            continue
        if st.st_size < state.size:
            skipped.append(f"{state.path}: shorter ({st.st_size} bytes) than before the frame ({state.size})")
            continue
        if st.st_size == state.size:
            continue
        try:
            os.truncate(state.path, state.size)
        except OSError as exc:
            skipped.append(f"{state.path}: {exc}")
            continue
        truncated.append(f"{state.path}: {st.st_size} -> {state.size} bytes")
    return truncated, skipped


def read_intent(path: str) -> tuple[str, int, int, list[FileState]] | None:
    """The intent a listener left open at ``path``: (sender key, first, end, files), or None."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    if len(data) < _HEADER or data[:8] != _MAGIC:
        return None
    state, length = struct.unpack_from("<II", data, _STATE)
    if state != _OPEN or length > min(len(data) - _HEADER, _MAX_BODY):
        return None
    try:
        key, first, end, files = msgpack.unpackb(data[_HEADER : _HEADER + length], raw=False)
        states = [FileState(os.fsdecode(p), int(d), int(i), int(s), bool(e)) for p, d, i, s, e in files]
        return str(key), int(first), int(end), states
    except Exception:  # a damaged intent is no intent: nothing is cut
        return None


def reserve(fd: int, start: int, length: int) -> None:
    """Have the disk back ``length`` bytes from ``start`` of ``fd`` before they are stored into through a map.

    A store into a mapped page of a sparse file that a full disk cannot back kills the
    process with SIGBUS; reserving first fails with ENOSPC instead (test_ack_disk_full).
    Pages already backed cost nothing and succeed on a full disk.

    Raises:
        OSError: the disk has no room (ENOSPC) or refused otherwise.
    """
    fallocate = getattr(os, "posix_fallocate", None)  # not on macOS: pages are backed there as they are written
    if fallocate is not None and length > 0:
        fallocate(fd, start, length)


def create_replacing(path: str, head: bytes, size: int) -> int:
    """A new file of ``size`` bytes starting with ``head`` (mode 0600) in place of ``path``; its descriptor (O_RDWR).

    Written beside it and renamed over it, its first page reserved (:func:`reserve`), so a
    full disk fails here with ENOSPC and never later as SIGBUS; nothing is left behind on
    failure.
    """
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(head)
            f.truncate(size)
            reserve(f.fileno(), 0, min(size, _PAGE))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return os.open(path, os.O_RDWR)


class IntentFile:
    """The memory-mapped intent: opened empty, written before each frame, cleared after it.

    Like the marks, a store into it is a store into the page cache: no system call for a
    SIGKILL to interrupt. The body is written first and the state word last, so a listener
    killed while writing it leaves no intent (and had written nothing yet).

    On a full disk the file is not rewritten: the one a dead listener left is reused in
    place (its pages are backed), and without one the intent is kept in memory until
    :meth:`retry` can create the file (:attr:`failure` says why; a crash meanwhile cannot
    be undone, so its frame may be written twice). A body larger than the disk lets the
    file grow is not recorded (:attr:`unrecorded`).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.open = False
        self.unrecorded = 0  # frames handled without an intent: the disk refused to grow the file
        self.failure: OSError | None = None  # why the intent is only in memory (None: in the file)
        try:
            self._fd = self._create(path)
        except OSError as exc:
            self._fd = self._reuse(path)
            if self._fd < 0:
                self.failure = exc
        self._size = _PAGE if self._fd < 0 else os.fstat(self._fd).st_size
        self._map = mmap.mmap(self._fd, self._size)
        struct.pack_into("<I", self._map, _STATE, 0)

    @staticmethod
    def _create(path: str) -> int:
        return create_replacing(path, _MAGIC + struct.pack("<II", 0, 0), _PAGE)

    @staticmethod
    def _reuse(path: str) -> int:
        """The intent file a dead listener left, if it is whole and every page of it is backed; else -1 (memory)."""
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            return -1
        try:
            size = os.fstat(fd).st_size
            if size < _PAGE or size % _PAGE or os.pread(fd, 8, 0) != _MAGIC:
                raise OSError(f"{path} is not an intent file")
            reserve(fd, 0, size)
        except OSError:
            os.close(fd)
            return -1
        return fd

    def retry(self) -> bool:
        """Between frames, while the intent is only in memory: move it into a new file. True once it is there."""
        if self._fd >= 0:
            return True
        try:
            fd = self._create(self.path)
        except OSError as exc:
            self.failure = exc
            return False
        self._map.close()
        self._fd, self._size, self.failure = fd, _PAGE, None
        self._map = mmap.mmap(fd, _PAGE)
        return True

    def begin(self, key: str, first: int, end: int, files: list[FileState]) -> None:
        """Record that ``key``'s records ``first`` .. ``end - 1`` are about to be written to ``files``."""
        body = msgpack.packb([key, first, end, [f.pack() for f in files]])
        if self.open:
            struct.pack_into("<I", self._map, _STATE, 0)
            self.open = False
        need = _HEADER + len(body)
        if need > self._size and not self._grow(need):
            self.unrecorded += 1  # no intent: a crash during this frame cannot be undone
            return
        self._map[_HEADER:need] = body
        struct.pack_into("<I", self._map, _LENGTH, len(body))
        struct.pack_into("<I", self._map, _STATE, _OPEN)
        self.open = True

    def clear(self) -> None:
        """The frame was handled and its mark stored: nothing to undo."""
        struct.pack_into("<I", self._map, _STATE, 0)
        self.open = False

    def _grow(self, need: int) -> bool:
        size = -(-need // _PAGE) * _PAGE
        if self._fd < 0:
            self._map.resize(size)
            self._size = size
            return True
        try:
            os.ftruncate(self._fd, size)
            reserve(self._fd, self._size, size - self._size)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            return False
        self._map.close()
        self._map = mmap.mmap(self._fd, size)
        self._size = size
        return True

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._map.close()
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
