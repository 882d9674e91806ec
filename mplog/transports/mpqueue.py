"""The multiprocessing transport: one ``multiprocessing.connection`` channel per producer.

A single shared ``multiprocessing.Queue`` can be wedged by a producer killed while it
holds the queue's write lock or has written half a message, so every producer gets its
own unix-socket connection to the listener instead. Producers write with
``send_bytes``; the listener reads that framing itself, a connection at a time without
blocking: nothing on this path unpickles. A connection that ends inside a message is
counted as ``truncated``, one that stalls inside a message as ``stalled``, and closed;
the other producers never notice.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import select
import selectors
import socket
import struct
import time
from collections import Counter, deque
from multiprocessing import connection as mpc

from mplog.exceptions import TransportError
from mplog.transports.base import (
    Origin,
    TransportOptions,
    check_socket_dir,
    ensure_private_dir,
    transport_max_bytes,
)
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
        check_socket_dir(endpoint)  # a socket in another user's directory may be theirs (docs/security.md)
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


class _Inbound:
    """One producer's connection to the listener and the frame it is in the middle of."""

    __slots__ = ("got", "head", "origin", "parts", "size", "sock", "until")

    def __init__(self, sock: socket.socket, origin: Origin) -> None:
        self.sock = sock
        self.origin = origin  # the connection's number: the origin of each of its frames
        self.head = b""  # the length prefix read so far: 4 bytes, or 12 when they start with -1
        self.size = -1  # the frame's length, once the prefix is whole
        self.parts: list[bytes] = []  # the frame's bytes read so far
        self.got = 0
        self.until = 0.0  # monotonic time by which the frame must be whole (set at its first byte)

    @property
    def inside(self) -> bool:
        """True between a frame's first byte and its last."""
        return bool(self.head)


_CHUNK = 256 * 1024  # the most one connection gets read per turn: a flooding producer cannot take every turn
_PREFIX = struct.Struct("!i")  # multiprocessing.connection: a 4-byte big-endian signed length...
_LONG_PREFIX = struct.Struct("!Q")  # ...or -1 followed by an 8-byte length


class MpReceiver:
    """A unix-socket listener multiplexing every producer's connection, none of which can hold up another.

    Connections are read without blocking, a turn each, and each frame is assembled per
    connection (``multiprocessing.connection``'s framing: a 4-byte big-endian length, or
    -1 then an 8-byte length, then the bytes; nothing is unpickled). A frame must be
    whole within ``2 * write_timeout`` of its first byte: a producer that stalls or
    dribbles inside a frame is dropped and counted as ``stalled`` when that expires,
    while the others are read as usual. Memory is bounded twice by ``max_queued_bytes``:
    whole frames waiting for the receive loop hold at most that plus one frame (past it
    the other connections wait for their next turn), and so do frames being assembled
    (past it the connection whose frame started first is dropped, counted as ``stalled``).
    """

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
        self._lsock.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._lsock, selectors.EVENT_READ)
        # Each open connection and the origin of its frames: a number never reused while
        # this receiver lives, so a connection that ended is never mistaken for a new one.
        self._conns: dict[int, _Inbound] = {}
        self._open: set[bytes] = set()
        self._ends = 0  # connections that ended (EOF, a cut or stalled frame), for connection_ends()
        self._numbers = itertools.count(1)
        self._partial: dict[int, _Inbound] = {}  # connections inside a frame
        self._ready: deque[tuple[bytes, Origin]] = deque()
        self._ready_bytes = 0
        self._partial_bytes = 0  # bytes of the frames being assembled
        self._frame_timeout = options.write_timeout * 2
        # Up to twice max_frame_bytes is read: the decoder refuses (and counts) a frame
        # between the two, and the connection goes on; a longer one closes it.
        self._max_message = transport_max_bytes(options)
        self._closed = False

    def _accept(self) -> None:
        try:
            sock, _ = self._lsock.accept()
        except OSError:  # gone before it was accepted, or out of descriptors: it retries
            return
        sock.setblocking(False)
        conn = _Inbound(sock, Origin(next(self._numbers).to_bytes(8, "big"), ""))
        self._conns[sock.fileno()] = conn
        self._open.add(conn.origin.connection)
        self._selector.register(sock, selectors.EVENT_READ, conn)

    def _drop(self, conn: _Inbound, reason: str = "") -> None:
        """Close ``conn``; ``reason`` names the counter when it ends inside a frame."""
        fd = conn.sock.fileno()
        if fd < 0:  # closed already
            return
        if reason:
            self.events[reason] += 1
        self._partial_bytes -= conn.got
        self._partial.pop(fd, None)
        self._conns.pop(fd, None)
        self._open.discard(conn.origin.connection)
        self._ends += 1
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        conn.sock.close()

    def _read(self, conn: _Inbound, now: float) -> None:
        """Read what ``conn`` has, up to one whole frame or _CHUNK bytes, without blocking."""
        room = _CHUNK
        while room > 0:
            if conn.size < 0:
                want = (12 if conn.head[:4] == b"\xff\xff\xff\xff" else 4) - len(conn.head)
            else:
                want = min(conn.size - conn.got, room)
            try:
                data = conn.sock.recv(want)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # reset by the producer
                data = b""
            if not data:  # the producer closed: inside a frame, the frame is lost
                self._drop(conn, "truncated" if conn.inside else "")
                return
            room -= len(data)
            if conn.size < 0:
                sized = self._take_head(conn, data, now)
                if sized is None:  # refused, and the connection closed
                    return
                if not sized:
                    continue
            elif not self._take_body(conn, data):  # it was the oldest, and evicted
                return
            if conn.got >= conn.size:
                self._complete(conn)
                return

    def _take_head(self, conn: _Inbound, data: bytes, now: float) -> bool | None:
        """Add ``data`` to ``conn``'s length prefix; then as :meth:`_sized` (None: refused, and closed)."""
        if not conn.head:
            conn.until = now + self._frame_timeout
            self._partial[conn.sock.fileno()] = conn
        conn.head += data
        return self._sized(conn)

    def _take_body(self, conn: _Inbound, data: bytes) -> bool:
        """Add ``data`` to ``conn``'s frame, evicting past max_queued_bytes; False when ``conn`` itself was evicted."""
        conn.parts.append(data)
        conn.got += len(data)
        self._partial_bytes += len(data)
        if self._partial_bytes > self._options.max_queued_bytes:
            self._evict()
            return conn.sock.fileno() >= 0
        return True

    def _sized(self, conn: _Inbound) -> bool | None:
        """Read the frame's length once its prefix is whole; False while it is not, None when it is refused."""
        head = conn.head
        if len(head) < 4 or (head[:4] == b"\xff\xff\xff\xff" and len(head) < 12):
            return False
        size = _PREFIX.unpack_from(head)[0]
        if size == -1:
            size = _LONG_PREFIX.unpack_from(head, 4)[0]
        if size > self._max_message:  # refused before a byte of it is read
            self._drop(conn, "oversized")
            return None
        conn.size = max(size, 0)  # a negative length: an empty message, as recv_bytes() would return
        return True

    def _complete(self, conn: _Inbound) -> None:
        data = b"".join(conn.parts)
        self._ready.append((data, conn.origin))
        self._ready_bytes += len(data)
        self._partial_bytes -= conn.got
        conn.head, conn.size, conn.parts, conn.got = b"", -1, [], 0
        self._partial.pop(conn.sock.fileno(), None)

    def _evict(self) -> None:
        """Drop connections inside a frame, the one whose frame started first first, until the rest fit."""
        for conn in sorted(self._partial.values(), key=lambda c: c.until):
            if self._partial_bytes <= self._options.max_queued_bytes:
                return
            self._drop(conn, "stalled")

    def _expire(self, now: float) -> float:
        """Drop the connections whose frame is late; return the earliest deadline still running."""
        earliest = math.inf
        for conn in list(self._partial.values()):
            if conn.until <= now:
                self._drop(conn, "stalled")
            else:
                earliest = min(earliest, conn.until)
        return earliest

    def _pop(self) -> tuple[bytes, Origin]:
        item = self._ready.popleft()
        self._ready_bytes -= len(item[0])
        return item

    def connected(self, connection: bytes) -> bool:
        """Whether the connection numbered ``connection`` is still open (it ends at EOF or a cut frame)."""
        return connection in self._open

    def connection_ends(self) -> int:
        """How many connections have ended so far: when it moves, the listener asks :meth:`connected` again."""
        return self._ends

    def recv(self, timeout: float) -> tuple[bytes, Origin] | None:
        if self._ready:
            return self._pop()
        end = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            wait = min(end, self._expire(now)) - now
            for key, _ in self._selector.select(max(wait, 0.0)):
                if key.data is None:
                    self._accept()
                elif self._ready_bytes < self._options.max_queued_bytes:  # else: its turn comes next time
                    self._read(key.data, now)
            if self._ready:
                return self._pop()
            if time.monotonic() >= end:
                return None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for conn in list(self._conns.values()):
            self._drop(conn)
        self._open.clear()
        self._selector.close()
        self._listener.close()
        self._claim.release()
