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

import re
import select
import socket
import ssl
import time

__all__ = ["MAX_TXNR", "ProtocolError", "RELPSession", "Response"]

MAX_TXNR = 999_999_999
MAX_RESPONSE = 64 * 1024  # the longest DATA this client accepts from a server (a rsp is a few bytes)
SOFTWARE = "mplog"
_OK_TAIL = b" rsp 6 200 OK"
_OK_TAIL_LEN = len(_OK_TAIL)
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux
_ALL_OK = re.compile(rb"(?:\d{1,9} rsp 6 200 OK\n)+")
_OK_NUMBER = re.compile(rb"(\d{1,9}) rsp")
_HEADER = re.compile(rb"(\d{1,9}) ([a-z]{1,32}) (\d{1,10})([ \n])")


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
        self._quickack = _QUICKACK

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
            for number, command, data in self.receive(max(deadline - time.monotonic(), 0.0)):
                if number == txnr and command == b"rsp":
                    return Response(number, command, data)
            if self.closed_by_server or time.monotonic() >= deadline:
                raise ProtocolError(f"no RELP response to transaction {txnr} within {timeout} s")

    # ------------------------------------------------------------ syslog commands

    def syslog(self, messages: list[bytes]) -> list[int]:
        """Send one ``syslog`` command per message, in one write; their transaction numbers."""
        first = self._next
        if first + len(messages) - 1 <= MAX_TXNR:
            numbers = list(range(first, first + len(messages)))
            self._next = first + len(messages) if first + len(messages) <= MAX_TXNR else 1
        else:  # the numbers wrap around to 1 inside this batch
            numbers = [self.next_txnr() for _ in messages]
        data = b"".join([b"%d syslog %d %b\n" % (n, len(m), m) for n, m in zip(numbers, messages, strict=True)])
        self.sock.sendall(data)
        return numbers

    def receive(self, timeout: float) -> list[tuple[int, bytes, bytes]]:
        """The frames (txnr, command, data) that arrive within ``timeout`` seconds (one read at most).

        Raises OSError when the connection ended (EOF after the last complete frame).
        """
        oks, others = self.receive_answers(timeout)
        return sorted([(txnr, b"rsp", b"200 OK") for txnr in oks] + others)

    def receive_answers(self, timeout: float) -> tuple[list[int], list[tuple[int, bytes, bytes]]]:
        """What arrives within ``timeout`` seconds (one read): the numbers answered ``200 OK``, and other frames.

        Raises OSError when the connection ended (EOF after the last complete frame).
        """
        sock = self.sock
        pending = sock.pending() if isinstance(sock, ssl.SSLSocket) else 0
        if not pending:
            readable, _, _ = select.select([sock], [], [], timeout)
            if not readable:
                return [], []
        try:
            data = sock.recv(262144)
        except (ssl.SSLWantReadError, BlockingIOError):
            return [], []
        if not data:
            self.closed_by_server = True
            raise ConnectionResetError("the RELP server closed the connection")
        if self._quickack:
            # The server writes each answer in a small segment of its own; with Nagle's algorithm
            # on its side, the next one waits for our ACK, which Linux delays by up to 40 ms.
            # Acknowledging at once took 128-message windows from 44 ms to well under 1 ms.
            try:
                sock.setsockopt(socket.IPPROTO_TCP, self._quickack, 1)
            except OSError:  # not a TCP socket
                self._quickack = None
        self._buffer += data
        return self._parse()

    def _parse(self) -> tuple[list[int], list[tuple[int, bytes, bytes]]]:
        """Take every complete frame off the buffer.

        Almost every frame from the server is ``TXNR rsp 6 200 OK``: when the complete part of
        the buffer is nothing else, one regular expression takes all their numbers; otherwise
        each line is looked at, and anything but such a line goes through :meth:`_parse_one`.
        """
        buffer = self._buffer
        complete = buffer.rfind(b"\n") + 1
        if complete and _ALL_OK.fullmatch(buffer, 0, complete):
            oks = list(map(int, _OK_NUMBER.findall(buffer, 0, complete)))
            del buffer[:complete]
            return oks, []
        oks, others = [], []
        start, size = 0, len(buffer)
        while start < size:
            line_end = buffer.find(b"\n", start)
            if line_end < 0:
                break
            head = line_end - _OK_TAIL_LEN
            if head > start and buffer[head:line_end] == _OK_TAIL and line_end - start <= _OK_TAIL_LEN + 10:
                digits = buffer[start:head]
                if digits.isdigit():
                    oks.append(int(digits))
                    start = line_end + 1
                    continue
            parsed = self._parse_one(start)
            if parsed is None:
                break
            frame_, start = parsed
            others.append(frame_)
            if frame_[1] == b"serverclose":
                self.closed_by_server = True
        del buffer[:start]
        return oks, others

    def _parse_one(self, start: int) -> tuple[tuple[int, bytes, bytes], int] | None:
        """The frame at ``start`` and where the next one starts; None when it is not complete yet."""
        buffer = self._buffer
        match = _HEADER.match(buffer, start)
        if match is None:
            if len(buffer) - start > 64 or b"\n" in buffer[start : start + 64]:
                raise ProtocolError(f"not a RELP frame: {bytes(buffer[start : start + 60])!r}")
            return None  # a header cut short by the read
        txnr, command, length = int(match[1]), bytes(match[2]), int(match[3])
        if length > MAX_RESPONSE:
            raise ProtocolError(f"RELP frame of {length} bytes from the server: more than a response needs")
        if length == 0:
            if match[4] != b"\n":
                raise ProtocolError(f"not a RELP frame: {bytes(buffer[start : start + 60])!r}")
            return (txnr, command, b""), match.end()
        if match[4] != b" ":
            raise ProtocolError(f"not a RELP frame: {bytes(buffer[start : start + 60])!r}")
        after = match.end() + length + 1
        if after > len(buffer):
            return None
        if buffer[after - 1] != 0x0A:
            raise ProtocolError(f"RELP frame without its trailer: {bytes(buffer[start : start + 60])!r}")
        return (txnr, command, bytes(buffer[match.end() : after - 1])), after


def frame(txnr: int, command: bytes, data: bytes) -> bytes:
    if not data:
        return b"%d %b 0\n" % (txnr, command)
    return b"%d %b %d %b\n" % (txnr, command, len(data), data)
