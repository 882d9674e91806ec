"""Why a directory or a file cannot be written, from the errno, in words a user can act on.

``os.access`` answers only yes or no: a read-only file system, a full one and a missing
permission all looked like "fix its permissions" (an outside user's ``mplog check`` on a
tmpfs mounted ``ro``). These helpers find the errno without leaving anything behind
(an unnamed ``O_TMPFILE``, or an open that fails) and name the cause and its fix. Where
the file system has no ``O_TMPFILE``, its type (``/proc/self/mountinfo``) names a kernel
interface such as /proc or /sys, where access() tells root it may write and no file can be
created (an outsider's ``mplog check`` said OK to ``/proc/a.log`` and ``/sys/a.log``).
"""

from __future__ import annotations

import errno
import os

__all__ = ["KernelFileSystemError", "cause_of", "creation_error", "file_system_of", "open_error", "space_error"]

_PERMISSION = (errno.EACCES, errno.EPERM)
_FULL = (errno.ENOSPC, errno.EDQUOT)
_NO_TMPFILE = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL)  # a system or file system without O_TMPFILE


def cause_of(exc: OSError, directory: str) -> str:
    """The cause of ``exc`` (an error writing in ``directory``) and its fix, e.g. for a ConfigError."""
    code = exc.errno
    if isinstance(exc, KernelFileSystemError):
        return (
            f"{directory!r} is on a {exc.file_system} file system, a kernel interface where no file can be created "
            f"(opening one fails: {exc.strerror}, for root too); choose a directory on a disk"
        )
    if code == errno.EROFS:
        return f"{directory!r} is on a read-only file system; remount it read-write or choose another directory"
    if code in _FULL:
        return f"the file system of {directory!r} is full ({exc.strerror}); free space or choose another directory"
    if code in _PERMISSION:
        return f"this user cannot create files in {directory!r}; fix its permissions"
    return f"{directory!r} cannot be written ({exc.strerror or exc}); choose another directory"


def creation_error(directory: str) -> OSError | None:
    """The error creating a file in ``directory`` would meet now; None if it can create one.

    Creates an unnamed file (``O_TMPFILE``), which disappears as it is closed; where the
    file system cannot, the answer comes from ``os.access`` and ``statvfs``.
    """
    try:
        os.close(_open_unnamed(directory))
    except OSError as exc:
        if exc.errno not in _NO_TMPFILE:
            return exc
        return _access_error(directory)
    return None


def space_error(directory: str) -> OSError | None:
    """ENOSPC (or EDQUOT) when one byte cannot be written in ``directory`` now; None otherwise.

    Writes the byte to an unnamed file (``O_TMPFILE``), freed as it is closed; where that
    cannot be done (no O_TMPFILE, no permission to create) nothing is said.
    """
    try:
        fd = _open_unnamed(directory)
    except OSError:
        return None
    try:
        os.write(fd, b"\n")
    except OSError as exc:
        return exc if exc.errno in _FULL else None
    finally:
        os.close(fd)
    return None


def open_error(path: str) -> OSError | None:
    """The error opening the existing file ``path`` for appending would meet; None if this user may write it.

    Asks ``os.access`` first, so that a file that can be written is not opened (no
    watcher sees it); only one that cannot is opened, which fails, to learn why.
    """
    if os.access(path, os.W_OK):
        return None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        return exc
    os.close(fd)  # access() and open() disagree (e.g. effective ids): say it as access() did
    return PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)


def _open_unnamed(directory: str) -> int:
    """An unnamed file in ``directory``, gone when closed (Linux's O_TMPFILE).

    Raises:
        OSError: why it cannot be created; one of ``_NO_TMPFILE`` where the system or the
            file system has no O_TMPFILE.
    """
    flag = getattr(os, "O_TMPFILE", 0)
    if not flag:
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP), directory)
    return os.open(directory, flag | os.O_WRONLY | os.O_CLOEXEC, 0o600)


# Kernel interfaces mounted as file systems: no user, root included, creates a regular file
# in them (/proc/a.log: ENOENT, /sys/a.log: EACCES), although access() says root may write.
_KERNEL_FILE_SYSTEMS = {
    "proc": errno.ENOENT,
    "sysfs": errno.EACCES,
    "cgroup": errno.EACCES,
    "cgroup2": errno.EACCES,
    "debugfs": errno.EACCES,
    "tracefs": errno.EACCES,
    "securityfs": errno.EACCES,
    "pstore": errno.EACCES,
    "configfs": errno.EACCES,
    "efivarfs": errno.EACCES,
    "bpf": errno.EACCES,
    "devpts": errno.EACCES,
    "mqueue": errno.EACCES,
    "binfmt_misc": errno.EACCES,
}


class KernelFileSystemError(OSError):
    """A directory on a kernel interface (/proc, /sys): no file can be created in it."""

    def __init__(self, code: int, directory: str, file_system: str) -> None:
        super().__init__(code, os.strerror(code), directory)
        self.file_system = file_system


def file_system_of(path: str) -> str | None:
    """The type of the file system ``path`` is on ('ext4', 'proc'), from /proc/self/mountinfo; None if unknown."""
    try:
        device = os.stat(path).st_dev
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mounts:
            lines = mounts.read().splitlines()
    except OSError:
        return None
    wanted = f"{os.major(device)}:{os.minor(device)}"
    for line in lines:
        fields, _, rest = line.partition(" - ")
        parts = fields.split()
        if len(parts) > 2 and parts[2] == wanted and rest:
            return rest.split()[0]
    return None


def _access_error(directory: str) -> OSError | None:
    file_system = file_system_of(directory)
    if file_system in _KERNEL_FILE_SYSTEMS:
        return KernelFileSystemError(_KERNEL_FILE_SYSTEMS[file_system], directory, file_system)
    if os.access(directory, os.W_OK | os.X_OK):
        return None
    read_only = bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    code = errno.EROFS if read_only else errno.EACCES
    return OSError(code, os.strerror(code), directory)
