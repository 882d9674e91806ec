"""A write to a handler's file that failed: which records it left whole, a clean stream after it, what stderr says.

A write that fails on a full disk (ENOSPC) may still have put part of its bytes in the
file: the kernel takes what fits, then refuses the rest. The stdlib's buffered stream
keeps the bytes it could not write and writes them with the next record that fits. So
counting every record of a failed write as a handler error over-counts, and a record
may reach the file after it was counted. For a ``FileHandler`` (its subclasses included)
writing a regular file:

- :func:`file_offset` before a batch write and :func:`lines_written` after it failed: how
  many of the batch's lines are whole in the file, from the file descriptor's offset
  before and after, the bytes in between compared with the lines encoded;
- :func:`recover`: what the stream still holds is dropped (its descriptor is closed under
  the buffer, so those bytes are never written) and the file is reopened for appending;
- :func:`end_cut_lines_on_open`: every open of a FileHandler's file for appending (at
  start, at the first record with ``delay=True``, after :func:`recover` or a SIGHUP
  reopen) that finds the file ending inside a line (where a disk filled, or a kill cut a
  write, in this listener or an earlier one) gives the stream a line end to write first,
  so the fragment stays a line of its own and no record is glued behind it;
- :class:`Outages`: stderr names the handler's file and the records not written, at most
  once per interval while it fails, and says once when it writes again.

Any other stream (stderr, a pipe, a socket) is counted on the safe side: every record of
a failed write (docs/reliability.md, "A handler that cannot write").
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import sys
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["OUTAGES", "Outage", "Outages", "end_cut_lines_on_open", "file_offset", "lines_written", "recover"]

# A line end recover() left in a reopened stream's buffer, by handler: (that stream, the offset
# it will be written at, its bytes); lines_written() finds it in front of a failed write.
_line_ends: weakref.WeakKeyDictionary[logging.Handler, tuple[Any, int, bytes]] = weakref.WeakKeyDictionary()


def file_offset(handler: logging.Handler) -> int | None:
    """Where the next write of a FileHandler's stream lands; None for any other handler or stream."""
    if not isinstance(handler, logging.FileHandler) or handler.stream is None:
        return None
    try:
        return os.lseek(handler.stream.fileno(), 0, os.SEEK_CUR)
    except (OSError, ValueError, AttributeError):  # closed, or no descriptor
        return None


def lines_written(handler: logging.StreamHandler[Any], start: int | None, lines: list[str]) -> int:
    """How many of ``lines``, written from ``start`` (:func:`file_offset`) in one failed write, are whole in the file.

    Call it before :func:`recover`: what the file holds then is all the write ever puts
    there. Counted from the front, each line's bytes (with the terminator) compared with
    the file's; 0 when ``start`` is None, the file is not a regular file, or anything
    cannot be read.
    """
    if start is None or not isinstance(handler, logging.FileHandler):
        return 0
    stream, terminator = handler.stream, handler.terminator
    if stream is None:
        return 0
    try:
        fd = stream.fileno()
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return 0
        size = os.lseek(fd, 0, os.SEEK_CUR) - start
        written = _read_at(fd, handler.baseFilename, start, size) if size > 0 else b""
        encoding, errors = stream.encoding, stream.errors or "strict"
    except (OSError, ValueError, AttributeError):
        return 0
    pending = _line_ends.get(handler)
    prefix = pending[2] if pending is not None and pending[0] is stream and pending[1] == start else b""
    if written is not None and not written.startswith(prefix):
        return 0
    position, whole = len(prefix), 0
    for line in lines:
        try:
            data = (line + terminator).encode(encoding, errors)
        except (UnicodeError, LookupError):
            break
        end = position + len(data)
        # Unreadable (moved away and no /proc): the sizes say it, as this handler is the file's only writer.
        if end > size or (written is not None and written[position:end] != data):
            break
        position, whole = end, whole + 1
    return whole


def _read_at(fd: int, path: str, offset: int, size: int) -> bytes | None:
    """``size`` bytes at ``offset`` of the regular file open for writing at ``fd``; None when it cannot be read.

    Read through a second descriptor of the same file (``fd`` is write-only): the one
    ``/proc`` gives, else ``path`` if it still names that file.
    """
    for name in (f"/proc/self/fd/{fd}", path):
        try:
            reader = os.open(name, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            mine, other = os.fstat(fd), os.fstat(reader)
            if (mine.st_dev, mine.st_ino) == (other.st_dev, other.st_ino):
                return os.pread(reader, size, offset)
        except OSError:
            pass
        finally:
            os.close(reader)
    return None


def recover(handler: logging.Handler, reopen: Callable[[logging.FileHandler], bool]) -> bool:
    """After a failed write: drop what ``handler``'s stream still holds, reopen its file, end a cut line.

    Only a FileHandler whose stream is a file object of ``open()`` (text over a buffer over
    a raw file): its raw file is closed first, so that the buffer's bytes cannot be
    written by anything after (the stream's own close, a flush, a later record); then
    ``reopen`` (the SIGHUP reopen, :func:`mplog.listener.loop._reopen`: append mode, never
    truncating) opens it again; that open ends a cut line (:func:`end_cut_lines_on_open`,
    ``test_a_disk_that_fills_mid_frame_counts_exactly_the_records_not_whole_in_the_file``).

    Returns:
        True when the stream was replaced.
    """
    if not isinstance(handler, logging.FileHandler) or handler.stream is None:
        return False
    raw = getattr(getattr(handler.stream, "buffer", None), "raw", None)
    if raw is None:
        return False
    with contextlib.suppress(OSError):
        raw.close()
    return reopen(handler)


def end_cut_lines_on_open() -> None:
    """From now on in this process, each FileHandler's open for appending ends a line its file was left inside.

    One hook on ``logging.FileHandler._open`` (over the one
    :func:`mplog.listener.continuation.append_on_first_open` may have put there: call this
    after it), so it covers every file handler of ``logging``, ``logging.handlers`` and
    mplog, whenever it opens (see
    ``test_a_listener_started_on_a_file_that_ends_inside_a_line_starts_its_first_record_on_a_line_of_its_own``).
    """
    inner = logging.FileHandler._open
    if getattr(inner, "_mplog_ends_cut_lines", False):
        return

    def _open(self: logging.FileHandler) -> Any:
        stream = inner(self)
        # The stream's mode, not the handler's: a continued run opens a mode 'w' handler for appending.
        if "a" in getattr(stream, "mode", ""):
            _end_cut_line(self, stream)
        return stream

    _open._mplog_ends_cut_lines = True  # type: ignore[attr-defined]  # marks the wrapper so it is installed once
    logging.FileHandler._open = _open  # type: ignore[method-assign]  # the listener process owns every handler


def _end_cut_line(handler: logging.FileHandler, stream: Any) -> None:
    """Give ``handler``'s freshly opened ``stream`` a line end to write first when its file ends inside a line."""
    try:
        fd = stream.fileno()
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            return
        line_end = handler.terminator.encode(stream.encoding, stream.errors or "strict")
        last = _read_at(fd, handler.baseFilename, st.st_size - len(line_end), len(line_end))
        if not line_end or last is None or last == line_end:
            return
        stream.write(handler.terminator)  # buffered: written with the next record
        _line_ends[handler] = (stream, os.lseek(fd, 0, os.SEEK_CUR), line_end)
    except (OSError, ValueError, AttributeError, UnicodeError, LookupError):
        return


def _path(handler: logging.Handler) -> str:
    """The file a FileHandler writes, else nothing."""
    return handler.baseFilename if isinstance(handler, logging.FileHandler) else ""


@dataclass
class Outage:
    """One handler's failing spell: since when (``time.monotonic()``), when stderr last said so, records not written."""

    since: float
    said: float
    records: int = 0


class Outages:
    """The handlers failing now: one stderr line when each starts, then one per interval, one when it ends.

    ``failed`` is called per record a handler could not write (from ``handleError``);
    ``written`` after a handler wrote a record (the fast path after a batch, the guarded
    ``Handler.handle`` otherwise), which ends its outage. ``failing`` is empty while every
    handler writes: the callers look at it before anything else.
    """

    def __init__(self, quiet_interval: float = 10.0) -> None:
        self.quiet_interval = quiet_interval
        self.failing: dict[logging.Handler, Outage] = {}
        self.last_failure: BaseException | None = None  # the exception a stream was last recovered from

    def failed(self, handler: logging.Handler, name: str, exc: BaseException | None) -> None:
        """A record ``handler`` (called ``name``) could not write because of ``exc``; said once per interval at most."""
        now = time.monotonic()
        outage = self.failing.get(handler)
        if outage is None:
            outage = self.failing[handler] = Outage(now, now - self.quiet_interval)
        outage.records += 1
        if now - outage.said < self.quiet_interval:
            return
        outage.said = now
        path = _path(handler)
        _say(
            f"mplog: handler {name!r} failed{' writing ' + path if path else ''}: {type(exc).__name__}: {exc}; "
            f"{_records(outage.records)} not written in {now - outage.since:.1f} s "
            f"(counted in handler_errors; said again at most every {self.quiet_interval:g} s while it fails)"
        )

    def written(self, handler: logging.Handler) -> None:
        """``handler`` wrote a record: if it was failing, say once that it writes again."""
        outage = self.failing.pop(handler, None)
        if outage is None:
            return
        name = handler.get_name() or type(handler).__name__
        path, lasted = _path(handler), time.monotonic() - outage.since
        _say(
            f"mplog: handler {name!r} writes {path + ' ' if path else ''}again after {lasted:.1f} s; "
            f"{_records(outage.records)} not written meanwhile (counted in handler_errors)"
        )


def _records(count: int) -> str:
    return f"{count} record{'s' if count != 1 else ''}"


OUTAGES = Outages()  # the listener process's: its handleError and its fast path both report here


def _say(line: str) -> None:
    with contextlib.suppress(Exception):
        sys.stderr.write(line + "\n")
