"""A listener that continues an earlier one never truncates a log file that one wrote.

A ``FileHandler`` configured with ``mode = "w"`` truncates its file when it opens it.
That is what a user asks for when the listener starts; it is not what they ask for when
the supervisor restarts a killed listener, or when ``mplog listen`` is started again on
its ``mplog.state_dir``: the new listener continues the earlier one's stats, so
truncating would silently throw away records the stats count as written (and, in ack
mode, records already acknowledged to their workers).

A state directory a listener has started on is marked used by an empty file (:func:`mark_used`),
and one that holds any of a listener's files counts as used (:func:`was_used`): an empty
file needs no data block, so a full disk cannot leave a used directory looking new.

So a listener that continues an earlier run (:func:`continues_earlier_run`) calls
:func:`append_on_first_open` before it applies the config: from then on, in that
process, the first time each file handler opens its file it opens it for appending
('w' becomes 'a', 'w+' 'a+'), whatever mode it was configured with. This is one hook on
``logging.FileHandler._open``, so it covers every file handler of ``logging`` and
``logging.handlers`` (FileHandler, WatchedFileHandler, RotatingFileHandler,
TimedRotatingFileHandler), mplog's rotating handlers, subclasses whose default mode is
'w', handlers made by ``'()'`` factories, and ``delay = true`` (the first open then
comes with the first record). Later opens keep the configured mode: a rollover opens a
new file, and a SIGHUP reopen appends on its own (mplog.listener.loop). mplog's
``FactoryStreamHandler`` follows the same rule for a ``mode`` in its factory's arguments
(``factory = "ext://builtins.open"``). A handler that opens its file some other way (a
custom ``_open`` that does not call the base class's, a stream built by a ``'()'``
factory) is outside this rule; docs/reliability.md says so.

Appending is also what the ack mode's write-ahead intent needs (mplog.delivery.intent): the
restarted listener cuts a half-written frame off the end of each file, and appended
writes then land at that end.

A state directory belongs to one live listener at a time (:func:`claim_state_dir`): two
listeners on one directory (one config started twice with different endpoints) would write
over each other's stats checkpoint, senders' progress and acknowledged marks, and whichever
restarted next would continue a mix of both. So does each log file a handler names
(:func:`claim_log_files`): two listeners on one file rotate it under each other, and an
acknowledging one's restart cuts the other's lines off the file's end.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
from typing import Any

from mplog.exceptions import ConfigError
from mplog.handlers.stream import FactoryStreamHandler

__all__ = [
    "append_on_first_open",
    "claim_log_files",
    "claim_state_dir",
    "continues_earlier_run",
    "file_lock_path",
    "mark_used",
    "open_for_appending",
    "used_path",
    "was_used",
]

_original_open = logging.FileHandler._open
_enabled = False


def used_path(state_dir: str) -> str:
    """The empty file that marks ``state_dir`` as used by a listener (:func:`mark_used`)."""
    return os.path.join(state_dir, "used")


# The files a listener leaves in its state directory; any of them, even empty, marks it used.
# (An earlier listener that met a full disk left only an empty stats.json.tmp: its successor
# truncated the mode 'w' file and zeroed the stats. tests/reliability/test_state_dir_faults.py)
_STATE_FILES = ("used", "stats.json", "stats.json.tmp", "progress.slots", "progress.slots.tmp", "acked.json")


def was_used(state_dir: str) -> bool:
    """Whether a listener has started on ``state_dir`` before (it holds one of a listener's files)."""
    return any(os.path.lexists(os.path.join(state_dir, name)) for name in _STATE_FILES)


def mark_used(state_dir: str) -> OSError | None:
    """Mark ``state_dir`` as used with an empty file; the error if it cannot be created (None when it is).

    An empty file needs an inode and no data block, so a directory on a full disk is
    still marked: a listener started on it later continues it, whether or not a
    checkpoint could be written.
    """
    try:
        fd = os.open(used_path(state_dir), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        return exc
    os.close(fd)
    return None


CLAIM_FILE = "listener.lock"
_claims: dict[str, int] = {}  # lock file (real path) -> its descriptor, locked by this process


def _drop_claims_in_child() -> None:
    # A process forked by a listener must not keep its state directory or files once the listener is gone.
    for fd in _claims.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _claims.clear()


os.register_at_fork(after_in_child=_drop_claims_in_child)


def _release_claims() -> None:
    """At exit: remove each lock file this process still holds (while holding it), then let go."""
    if not _claims:
        return
    for lock, fd in list(_claims.items()):
        with contextlib.suppress(OSError):
            if _same_file(lock, fd):
                os.unlink(lock)
        with contextlib.suppress(OSError):
            os.close(fd)
    _claims.clear()


atexit.register(_release_claims)


def _same_file(path: str, fd: int) -> bool:
    try:
        st, held = os.lstat(path), os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)


def _claim(lock: str) -> str | None:
    """Lock ``lock`` (made 0600 if missing) for this process's life; the holder's pid if another process has it.

    A lock file that cannot be made (no permission, no inode left) is not claimed (None).
    """
    lock = os.path.realpath(lock)
    if lock in _claims:
        return None
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            return pid
        except OSError:
            os.close(fd)
            return None
        if _same_file(lock, fd):  # not a file its last holder unlinked between our open and our lock
            break
        os.close(fd)
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    _claims[lock] = fd
    return None


def claim_state_dir(state_dir: str) -> None:
    """Hold ``state_dir`` for this process's life: an exclusive ``flock`` on ``state_dir/listener.lock``.

    The kernel drops the lock when the process ends, however it ends, so a supervised
    restart or a listener started after a kill finds it free. A directory whose lock file
    cannot be made (no inode left, no permission) is not claimed: :func:`mark_used` says
    what that costs.

    Raises:
        ConfigError: another live listener holds it (its pid named).
    """
    pid = _claim(os.path.join(state_dir, CLAIM_FILE))
    if pid is not None:
        raise ConfigError(
            f"mplog.state_dir {state_dir!r} is in use by another running listener (pid {pid}): two listeners on one "
            "state directory write over each other's stats checkpoint, senders' progress and acknowledged marks; "
            "give each listener its own state_dir, or stop the other one first"
        )


def file_lock_path(filename: str) -> str:
    """Where the listener that writes ``filename`` holds its claim: ``.NAME.mplog-lock`` beside it."""
    path = os.path.realpath(os.path.expanduser(filename))
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.mplog-lock")


def claim_log_files(handlers: Any) -> None:
    """Hold every file a handler of the config names (``filename``) for this process's life.

    Two listeners on one file (one config started twice) rotate it under each other, and an
    acknowledging one's restart cuts the other's lines off the file's end with its own
    unfinished frame. A file whose directory takes no lock file is not claimed.

    Raises:
        ConfigError: another live listener holds one of them (the handler, the file and its pid named).
    """
    if not isinstance(handlers, dict):
        return
    for name, spec in handlers.items():
        filename = spec.get("filename") if isinstance(spec, dict) else None
        if not isinstance(filename, str) or not filename:
            continue
        pid = _claim(file_lock_path(filename))
        if pid is not None:
            path = os.path.realpath(os.path.expanduser(filename))
            raise ConfigError(
                f"handlers.{name} writes {path!r}, which another running mplog listener (pid {pid}) writes: two "
                "listeners on one file rotate it under each other, and an acknowledging one's restart cuts the "
                "other's lines off its end; give each listener its own filename, or stop the other one first"
            )


def continues_earlier_run(state_dir: str | None, restarts: int = 0) -> bool:
    """True for a supervised restart, or a listener whose state directory was used by an earlier one.

    A listener marks its state directory used as it starts, before any record comes
    (:func:`mark_used`, from mplog.listener.process.resume), so a listener killed at any
    point after start-up, even on a full disk, leaves it marked.
    """
    return restarts > 0 or bool(state_dir and was_used(state_dir))


def open_for_appending(mode: str) -> str:
    """The mode that opens the same way as ``mode`` but never truncates: 'w' -> 'a', 'wb' -> 'ab', 'w+' -> 'a+'."""
    return mode.replace("w", "a")


def append_on_first_open(enabled: bool = True) -> None:
    """From now on in this process, each file handler's first open appends (see the module docstring).

    Call before ``dictConfig`` builds the handlers; ``enabled=False`` turns it off again
    (for a process that runs a listener in the foreground and goes on).
    """
    global _enabled  # one switch for the whole listener process
    _enabled = enabled
    FactoryStreamHandler.append_on_first_open = enabled  # its factory's 'mode' argument, e.g. builtins.open
    if enabled and logging.FileHandler._open is not _open:
        logging.FileHandler._open = _open  # type: ignore[method-assign]  # the listener process owns every handler


def _open(self: logging.FileHandler) -> Any:
    if not _enabled or self.__dict__.get("_mplog_opened"):
        return _original_open(self)
    self._mplog_opened = True  # type: ignore[attr-defined]  # later opens (rollover) keep the configured mode
    mode = self.mode
    self.mode = open_for_appending(mode)
    try:
        return _original_open(self)
    finally:
        self.mode = mode
