"""One RELP session, client side: open, syslog commands with transaction numbers, rsp, close.

RELP (rsyslog's Reliable Event Logging Protocol) frames are
``TXNR SP COMMAND SP DATALEN [SP DATA] LF``. The client opens a session with
``open`` (its offers: ``relp_version``, ``relp_software``, ``commands=syslog``), sends
each message as a ``syslog`` command with the next transaction number (1 to
999,999,999, then 1 again), and the server answers every command with ``rsp``
(``200 OK``, or an error code) under the same number. The server may send
``serverclose`` (number 0) before it goes away. No Python RELP client was fit for
use here (the one on PyPI keeps unbounded buffers and logs through ``logging`` from
its threads), so this is written from the protocol description.
"""

from __future__ import annotations

import select
import socket
import ssl
import time

__all__ = ["MAX_TXNR", "ProtocolError", "RELPSession", "Response"]

MAX_TXNR = 999_999_999
MAX_RESPONSE = 64 * 1024  # the longest DATA this client accepts from a server (a rsp is a few bytes)
SOFTWARE = "mplog"


class ProtocolError(OSError):
    """The server sent something that is not RELP, or refused the session."""


class Response:
    """A frame from the server: ``txnr``, ``command`` and ``data``; ``ok`` for a ``200`` rsp."""

    __slots__ = ("command", "data", "txnr")

    def __init__(self, txnr: int, command: bytes, data: bytes) -> None:
        self.txnr, self.command, self.data = txnr, command, data

    @property
    def code(self) -> int:
        head = self.data[:3]
        return int(head) if head.isdigit() else 0

    @property
    def ok(self) -> bool:
        return self.command == b"rsp" and self.code == 200


class RELPSession:
    """A RELP session over a connected (possibly TLS) socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._next = 1
        self._buffer = bytearray()
        self.closed_by_server = False

    def next_txnr(self) -> int:
        txnr = self._next
        self._next = txnr + 1 if txnr < MAX_TXNR else 1
        return txnr

    # ------------------------------------------------------------ opening and closing

    def open(self, timeout: float) -> dict[str, str]:
        """Send ``open`` and wait for its ``rsp``; the server's offers. Raises ProtocolError if refused."""
        offers = f"relp_version=0\nrelp_software={SOFTWARE}\ncommands=syslog".encode()
        txnr = self.next_txnr()
        self.sock.sendall(frame(txnr, b"open", offers))
        response = self.wait_for(txnr, timeout)
        if not response.ok:
            raise ProtocolError(f"RELP server refused the session: {bytes(response.data[:200])!r}")
        found: dict[str, str] = {}
        for line in bytes(response.data).split(b"\n")[1:]:
            name, _, value = line.decode("utf-8", "replace").partition("=")
            found[name] = value
        if "syslog" not in found.get("commands", "").split(","):
            raise ProtocolError(f"RELP server does not offer the syslog command (offers: {found})")
        return found

    def close(self, timeout: float) -> None:
        """Send ``close`` and wait (bounded) for its ``rsp``; the caller closes the socket."""
        txnr = self.next_txnr()
        self.sock.sendall(frame(txnr, b"close", b""))
        self.wait_for(txnr, timeout)

    def wait_for(self, txnr: int, timeout: float) -> Response:
        """Read until the response to ``txnr`` (others are ignored: there are none outstanding)."""
        deadline = time.monotonic() + timeout
        while True:
            for response in self.receive(max(deadline - time.monotonic(), 0.0)):
                if response.txnr == txnr and response.command == b"rsp":
                    return response
            if self.closed_by_server or time.monotonic() >= deadline:
                raise ProtocolError(f"no RELP response to transaction {txnr} within {timeout} s")

    # ------------------------------------------------------------ syslog commands

    def syslog(self, messages: list[bytes]) -> list[int]:
        """Send one ``syslog`` command per message, in one write; their transaction numbers."""
        numbers = [self.next_txnr() for _ in messages]
        frames = [frame(txnr, b"syslog", message) for txnr, message in zip(numbers, messages, strict=True)]
        self.sock.sendall(b"".join(frames))
        return numbers

    def receive(self, timeout: float) -> list[Response]:
        """The frames that arrive within ``timeout`` seconds (at least one read if any is waiting).

        Raises OSError when the connection ended (EOF after the last complete frame).
        """
        sock = self.sock
        pending = sock.pending() if isinstance(sock, ssl.SSLSocket) else 0
        if not pending:
            readable, _, _ = select.select([sock], [], [], timeout)
            if not readable:
                return []
        try:
            data = sock.recv(65536)
        except (ssl.SSLWantReadError, BlockingIOError):
            return []
        if not data:
            self.closed_by_server = True
            raise ConnectionResetError("the RELP server closed the connection")
        self._buffer += data
        return self._parse()

    def _parse(self) -> list[Response]:
        found = []
        buffer = self._buffer
        start = 0
        while True:
            end_txnr = buffer.find(b" ", start)
            if end_txnr < 0:
                break
            end_command = buffer.find(b" ", end_txnr + 1)
            if end_command < 0:
                break
            end_length = end_command + 1
            while end_length < len(buffer) and buffer[end_length : end_length + 1].isdigit():
                end_length += 1
            if end_length >= len(buffer):
                break
            try:
                txnr = int(buffer[start:end_txnr])
                length = int(buffer[end_command + 1 : end_length])
            except ValueError as exc:
                raise ProtocolError(f"not a RELP frame: {bytes(buffer[start : start + 60])!r}") from exc
            if length > MAX_RESPONSE or end_length - end_command > 10:
                raise ProtocolError(f"RELP frame of {length} bytes from the server: more than a response needs")
            command = bytes(buffer[end_txnr + 1 : end_command])
            if length == 0:
                if buffer[end_length : end_length + 1] != b"\n":
                    raise ProtocolError(f"not a RELP frame: {bytes(buffer[start : start + 60])!r}")
                data, after = b"", end_length + 1
            else:
                if buffer[end_length : end_length + 1] != b" ":
                    raise ProtocolError(f"not a RELP frame: {bytes(buffer[start : start + 60])!r}")
                data_start = end_length + 1
                after = data_start + length + 1
                if after > len(buffer):
                    break
                if buffer[after - 1 : after] != b"\n":
                    raise ProtocolError(f"RELP frame without its trailer: {bytes(buffer[start : start + 60])!r}")
                data = bytes(buffer[data_start : after - 1])
            found.append(Response(txnr, command, data))
            if command == b"serverclose":
                self.closed_by_server = True
            start = after
        del buffer[:start]
        return found


def frame(txnr: int, command: bytes, data: bytes) -> bytes:
    if not data:
        return b"%d %b 0\n" % (txnr, command)
    return b"%d %b %d %b\n" % (txnr, command, len(data), data)
