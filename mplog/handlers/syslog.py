"""``SysLogHandler`` that reconnects over TCP when the syslog daemon restarts.

The stdlib handler connects a TCP socket once: after the daemon restarts, every later
record fails on the dead connection until the listener is restarted. This subclass
notices a connection the peer has closed *before* writing to it (a syslog server never
sends anything, so a readable socket means end-of-stream), reconnects, and retries a
failed write once on a fresh connection. A daemon that is down at start-up does not
stop the listener from starting: the connection is made at the first record instead.
UDP and unix-socket destinations behave exactly as in the stdlib.
"""

from __future__ import annotations

import contextlib
import logging.handlers
import select
import socket

__all__ = ["SysLogHandler", "peer_closed"]


def peer_closed(sock: socket.socket) -> bool:
    """True when the other end of a connected stream socket has closed it (or it failed)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except (OSError, ValueError):
        return True


class SysLogHandler(logging.handlers.SysLogHandler):
    """``logging.handlers.SysLogHandler`` with reconnection for ``socktype = SOCK_STREAM``."""

    def __init__(
        self,
        address: tuple[str, int] | str = ("localhost", logging.handlers.SYSLOG_UDP_PORT),
        facility: str | int = logging.handlers.SysLogHandler.LOG_USER,
        socktype: int | None = None,
    ) -> None:
        self._tcp: socket.socket | None = None
        if isinstance(address, str) or socktype != socket.SOCK_STREAM:
            super().__init__(address, facility, socktype)  # type: ignore[arg-type]  # a name is accepted too
            return
        logging.Handler.__init__(self)
        self.address = (address[0], int(address[1]))
        self.facility = facility  # type: ignore[assignment]  # encodePriority accepts a name
        self.socktype = socktype  # type: ignore[assignment]  # the stdlib stores the int it was given
        self.unixsocket = False
        with contextlib.suppress(OSError):
            self._tcp = self._connect()

    def _connect(self) -> socket.socket:
        host, port = self.address[0], self.address[1]
        error: OSError = OSError(f"cannot resolve {host!r}")
        for family, kind, proto, _, addr in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
            sock = socket.socket(family, kind, proto)
            try:
                sock.connect(addr)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            return sock
        raise error

    def _drop_connection(self) -> None:
        sock, self._tcp = self._tcp, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def emit(self, record: logging.LogRecord) -> None:
        if self.socktype != socket.SOCK_STREAM or self.unixsocket:
            super().emit(record)
            return
        try:
            self.send(self.encode(record))
        except Exception:
            self._drop_connection()
            self.handleError(record)

    def send(self, data: bytes) -> None:
        """Write ``data`` on a live connection, reconnecting once if the old one is gone."""
        if self._tcp is not None and peer_closed(self._tcp):
            self._drop_connection()
        sock = self._tcp or self._connect()
        self._tcp = sock
        try:
            sock.sendall(data)
        except OSError:
            self._drop_connection()
            sock = self._tcp = self._connect()
            sock.sendall(data)

    def encode(self, record: logging.LogRecord) -> bytes:
        """The bytes sent for ``record``: ``<PRI>``, the ident, the formatted message, NUL if asked."""
        text = self.format(record)
        if self.ident:
            text = self.ident + text
        if self.append_nul:
            text += "\000"
        priority = self.encodePriority(self.facility, self.mapPriority(record.levelname))
        return f"<{priority}>{text}".encode()

    def close(self) -> None:
        if self.socktype == socket.SOCK_STREAM and not self.unixsocket:
            with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
                self._drop_connection()
            logging.Handler.close(self)
            return
        super().close()
