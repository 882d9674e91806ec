"""The multiprocessing transport: one ``multiprocessing.connection`` channel per producer.

A single shared ``multiprocessing.Queue`` can be wedged by a producer killed while it
holds the queue's write lock or has written half a message, so every producer gets its
own unix-socket connection to the listener instead. Only ``send_bytes``/``recv_bytes``
are used: nothing on this path unpickles. A connection that ends inside a message is
counted as ``truncated`` and closed; the other producers never notice.
"""

from __future__ import annotations

import itertools
import os
import select
import socket
import struct
import time
from collections import Counter, deque
from multiprocessing import connection as mpc
from typing import Any

from mplog.exceptions import TransportError
from mplog.transports.base import Origin, TransportOptions, ensure_private_dir
from mplog.transports.claim import claim_socket_path

__all__ = ["MpReceiver", "MpSender"]

_RETRY_CONNECT = 0.1  # seconds between connection attempts to an absent listener


def _path_of(endpoint: str) -> str:
    if not endpoint.startswith("mp://"):
        raise TransportError(f"not a multiprocessing endpoint: {endpoint!r}")
    return endpoint[len("mp://") :]


def _set_timeout(fd: int, option: int, seconds: float) -> None:
    sock = socket.socket(fileno=os.dup(fd))
    try:
        whole = int(seconds)
        sock.setsockopt(socket.SOL_SOCKET, option, struct.pack("ll", whole, int((seconds - whole) * 1e6)))
    finally:
        sock.close()


class MpSender:
    """This process's own connection to the listener; reopened after fork."""

    def __init__(self, endpoint: str, options: TransportOptions) -> None:
        self.endpoint = endpoint
        self._path = _path_of(endpoint)
        self._options = options
        self._pid = os.getpid()
        self._conn: mpc.Connection | None = None
        self._next_try = 0.0
        self._closed = False

    def _connect(self) -> mpc.Connection | None:
        now = time.monotonic()
        if now < self._next_try:
            return None
        try:
            conn = mpc.Client(self._path, family="AF_UNIX")
        except OSError:
            self._next_try = now + _RETRY_CONNECT
            return None
        _set_timeout(conn.fileno(), socket.SO_SNDTIMEO, self._options.write_timeout)
        self._conn = conn
        return conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
            self._conn = None

    def send(self, frame: bytes, timeout: float = 0.0) -> bool:
        if self._closed:
            return False
        if self._pid != os.getpid():  # forked: the inherited connection belongs to the parent
            if self._conn is not None:
                self._conn.close()  # closes only this process's copy of the descriptor
            self._conn, self._pid, self._next_try = None, os.getpid(), 0.0
        conn = self._conn or self._connect()
        if conn is None:
            return False
        try:
            _, writable, _ = select.select([], [conn.fileno()], [], max(timeout, 0.0))
            if not writable:
                return False
            conn.send_bytes(frame)
            return True
        except (OSError, ValueError):
            # The listener went away, or a write timed out part-way: that frame is
            # incomplete on the wire (the listener counts it as truncated), so the
            # caller keeps it and resends on a fresh connection.
            self._drop_connection()
            return False

    def close(self, linger: float | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pid == os.getpid():
            self._drop_connection()


class MpReceiver:
    """A unix-socket ``multiprocessing.connection.Listener`` multiplexing every producer."""

    def __init__(self, endpoint: str, options: TransportOptions) -> None:
        self.events: Counter[str] = Counter()
        self._options = options
        self._path = _path_of(endpoint)
        ensure_private_dir(self._path)
        # Refused while a live listener serves the path; a socket left by a dead one is replaced.
        self._claim = claim_socket_path(self._path, endpoint)
        old_umask = os.umask(0o077)
        try:
            self._listener = mpc.Listener(self._path, family="AF_UNIX", backlog=512)
            # multiprocessing unlinks the path at close whatever file is there by then;
            # the claim unlinks it only if it is still the socket this bind created.
            unlink = getattr(self._listener._listener, "_unlink", None)  # type: ignore[attr-defined]  # SocketListener's finalizer
            if unlink is not None:
                unlink.cancel()
                self._listener._listener._unlink = None  # type: ignore[attr-defined]  # cancelled above
            self._claim.bound()
        except OSError as exc:
            self._claim.release()
            raise TransportError(f"cannot bind {endpoint!r}: {exc}") from exc
        finally:
            os.umask(old_umask)
        self.endpoint = endpoint
        self._lsock: socket.socket = self._listener._listener._socket  # type: ignore[attr-defined]  # the listening socket, to multiplex accept() with reads
        # Each open connection and the origin of its frames: a number never reused while
        # this receiver lives, so a connection that ended is never mistaken for a new one.
        self._conns: dict[mpc.Connection, Origin] = {}
        self._open: set[bytes] = set()
        self._numbers = itertools.count(1)
        self._ready: deque[tuple[bytes, Origin]] = deque()
        self._closed = False

    def _accept(self) -> None:
        try:
            conn = self._listener.accept()
        except OSError:
            return
        _set_timeout(conn.fileno(), socket.SO_RCVTIMEO, self._options.write_timeout * 2)
        origin = Origin(next(self._numbers).to_bytes(8, "big"), "")
        self._conns[conn] = origin
        self._open.add(origin.connection)

    def _read(self, conn: mpc.Connection) -> None:
        try:
            self._ready.append((conn.recv_bytes(self._options.max_frame_bytes), self._conns[conn]))
            return
        except EOFError:
            pass  # a clean end between two frames
        except OSError as exc:
            text = str(exc)
            if "bad message length" in text:
                self.events["oversized"] += 1
            else:
                self.events["truncated"] += 1  # the writer died or stalled inside a frame
        self._open.discard(self._conns.pop(conn).connection)
        try:
            conn.close()
        except OSError:
            pass

    def connected(self, connection: bytes) -> bool:
        """Whether the connection numbered ``connection`` is still open (it ends at EOF or a cut frame)."""
        return connection in self._open

    def recv(self, timeout: float) -> tuple[bytes, Origin] | None:
        if self._ready:
            return self._ready.popleft()
        waitables: list[Any] = [self._lsock, *self._conns]
        for obj in mpc.wait(waitables, timeout):
            if obj is self._lsock:
                self._accept()
            else:
                self._read(obj)  # type: ignore[arg-type]  # wait() returns the connections it was given
        return self._ready.popleft() if self._ready else None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for conn in self._conns:
            try:
                conn.close()
            except OSError:  # noqa: PERF203  # each connection is closed whatever the others do
                pass
        self._conns.clear()
        self._open.clear()
        self._listener.close()
        self._claim.release()
