"""One listener per unix socket path: claim it before binding, unlink only what was created.

``bind()`` on a path where a socket file exists either fails (``multiprocessing``) or,
with libzmq's ipc transport, unlinks the file and binds anew: a second listener would
silently take the endpoint of a live one, and later delete its socket. So every
``ipc://`` and ``mp://`` bind of mplog (data endpoints and the ``.ctl`` status
channel) first claims the path:

- ``PATH.lock`` (mode 0600, beside the socket) is opened and locked with an exclusive
  ``flock``. The kernel holds the lock as long as the listener process lives and drops
  it when the process ends, however it ends (SIGKILL included). A second listener finds
  it locked and refuses with :class:`TransportError`, naming the path and the pid that
  the owner wrote into the lock file.
- With the lock held, a socket file still at PATH was left by a listener that died. It
  is replaced only if no socket is bound there any more (asked without connecting); a
  socket still bound (a server outside mplog, or a listener that does not lock) is
  refused, naming the pid of the process that holds it where psutil can see it, and a
  file that is not a socket is never removed.
- After the bind, the claim remembers the socket file's (st_dev, st_ino). At close it
  unlinks PATH only if PATH is still that file: a socket that someone else put there
  since is left alone. Then it unlinks the lock file (if it is still its own) and
  releases the lock.

A forked child does not keep a listener's lock (it closes its copy of the descriptor),
so a process forked by a listener cannot hold an endpoint after the listener died.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
import threading

import psutil

from mplog.exceptions import TransportError

__all__ = ["SocketClaim", "claim_socket_path", "lock_path_of"]

LOCK_SUFFIX = ".lock"
_held: set[int] = set()  # lock descriptors of this process, closed in a forked child
_held_lock = threading.Lock()


def lock_path_of(path: str) -> str:
    """Where the claim on the socket ``path`` is kept."""
    return path + LOCK_SUFFIX


def _close_in_child() -> None:
    for fd in list(_held):
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_close_in_child)


class SocketClaim:
    """This process's claim on a unix socket path (see the module docstring)."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd = fd
        self._pid = os.getpid()
        self._created: tuple[int, int] | None = None

    def bound(self) -> None:
        """Remember the socket file the bind just created: the only one :meth:`release` may unlink."""
        st = os.stat(self.path)
        self._created = (st.st_dev, st.st_ino)

    def release(self) -> None:
        """Unlink the socket file if it is still the one this claim created; drop the lock. Idempotent."""
        if self._fd < 0 or os.getpid() != self._pid:
            return
        if self._created is not None and _identity(self.path) == self._created:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        lock = lock_path_of(self.path)
        with contextlib.suppress(OSError):
            if _identity(lock) == _fd_identity(self._fd):  # still our lock file: remove it while locked
                os.unlink(lock)
        with _held_lock:
            _held.discard(self._fd)
        with contextlib.suppress(OSError):
            os.close(self._fd)  # releases the lock
        self._fd = -1


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _fd_identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _owner_pid(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode("ascii").strip()
        if text.isdigit():
            return text
    return "unknown"


def _lock(path: str, endpoint: str) -> int:
    """Open and lock ``PATH.lock``; raise TransportError naming the owner when a live listener holds it."""
    lock = lock_path_of(path)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise TransportError(f"cannot bind {endpoint!r}: cannot open its lock file {lock!r}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _owner_pid(fd)
            os.close(fd)
            raise TransportError(
                f"cannot bind {endpoint!r}: a live listener (pid {pid}) already serves {path}; "
                "stop it first, or bind another path"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise TransportError(f"cannot bind {endpoint!r}: cannot lock {lock!r}: {exc}") from exc
        # The last owner may have unlinked the file between our open and our lock: then
        # our lock is on a file nobody else will look at, so start again.
        if _identity(lock) == _fd_identity(fd):
            return fd
        os.close(fd)


def _bound_by(path: str) -> str:
    """The pid of a process with a unix socket bound at ``path`` (this user's processes, or any as root)."""
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="unix"):
            if conn.laddr == path and conn.pid:
                return str(conn.pid)
    return "unknown"


def _clear_leftover(path: str, endpoint: str) -> None:
    """Remove a socket file a dead listener left at ``path``; refuse anything else that is there.

    Whether something is bound there is asked without connecting (the process that owns
    the socket sees nothing): a datagram ``connect()`` to a unix stream socket fails with
    EPROTOTYPE when a socket is bound at the path, and with ECONNREFUSED when the file is
    all that is left of one.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise TransportError(
            f"cannot bind {endpoint!r}: {path} exists and is not a socket; mplog does not remove it: "
            "move it away or bind another path"
        )
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(path)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return
            if exc.errno != errno.ECONNREFUSED:  # EPROTOTYPE: a stream socket is bound there
                raise TransportError(
                    f"cannot bind {endpoint!r}: a process (pid {_bound_by(path)}) already has a socket bound "
                    f"at {path}; stop it first, or bind another path"
                ) from None
        else:  # a datagram socket is bound there
            raise TransportError(
                f"cannot bind {endpoint!r}: a process (pid {_bound_by(path)}) already has a datagram socket "
                f"bound at {path}; stop it first, or bind another path"
            )
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # nobody is bound there: a socket left by a dead listener


def claim_socket_path(path: str, endpoint: str) -> SocketClaim:
    """Claim the unix socket ``path`` for this process before binding it (see the module docstring).

    The directory must exist (``ensure_private_dir``). Call :meth:`SocketClaim.bound`
    after the bind and :meth:`SocketClaim.release` after closing the socket.

    Raises:
        TransportError: a live listener holds the path (its pid named), something else
            accepts connections there, or the path is not a socket.
    """
    with _held_lock:
        fd = _lock(path, endpoint)
        _held.add(fd)
    claim = SocketClaim(path, fd)
    try:
        _clear_leftover(path, endpoint)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except BaseException:
        claim.release()
        raise
    return claim
