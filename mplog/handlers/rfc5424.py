"""RFC 5424 syslog into rsyslog or syslog-ng: UDP, TCP with octet counting (RFC 6587), TLS (RFC 5425).

The stdlib ``SysLogHandler`` writes RFC 3164-style messages with no structured data,
and over TCP ends each one with a NUL byte that a stock rsyslog ``imtcp`` does not
treat as a frame end. :class:`RFC5424Handler` writes RFC 5424 messages
(:mod:`mplog.handlers.rfc5424_format`: the worker's host and pid in the header, the
record's extras and mplog's sender and sequence number as structured data) and frames
them as RFC 6587 octet counting (``LEN SP MSG``) over TCP and TLS, which every
receiver parses without configuration and which keeps multi-line messages whole.

Over TCP and TLS, ``emit`` only encodes and queues: a thread of the handler's own
writes the queue in batches, connects at the first record, notices a connection the
daemon closed, reconnects with backoff and writes again what a failed write did not
deliver. The queue is bounded (``max_buffer``, ``policy``) and its drops are counted
in :attr:`RFC5424Handler.dropped`. What TCP promises ends at the socket: a record
written into it counts as delivered even if the daemon dies before reading it.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import sys
import threading
import time
from typing import Any

from mplog.exceptions import ConfigError
from mplog.handlers.delivery import (
    DeliveryOptions,
    Outbox,
    backoff,
    close_quietly,
    connect,
    known_options,
    tls_context,
)
from mplog.handlers.rfc5424_format import MessageText, RFC5424Encoder, RFC5424Format

__all__ = ["DaemonHandler", "RFC5424Handler", "parse_address", "peer_gone", "split_options"]

TRANSPORTS = ("udp", "tcp", "tls")
_BATCH_RECORDS = 1024
_BATCH_BYTES = 256 * 1024


def parse_address(owner: str, address: Any, default_port: int) -> tuple[str, int]:
    """``[host, port]``, ``(host, port)`` or ``"host"`` as a (host, port) pair."""
    if isinstance(address, str):
        host, colon, port = address.rpartition(":")
        if colon and port.isdigit() and ":" not in host:  # "host:514" would be looked up as a host name
            raise ConfigError(f"{owner} address {address!r} names a port: write it as [{host!r}, {port}]")
        return address, default_port
    if isinstance(address, (list, tuple)) and len(address) == 2:
        host, port = address
        if isinstance(host, str) and isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536:
            return host, port
    raise ConfigError(f"{owner} address must be [host, port] or a host name, got {address!r}")


def split_options(owner: str, options: dict[str, Any]) -> tuple[RFC5424Format, DeliveryOptions]:
    """Options by their class; an unknown key is an error that lists the known ones."""
    unknown = sorted(set(options) - known_options(RFC5424Format, DeliveryOptions))
    if unknown:
        known = ", ".join(sorted(known_options(RFC5424Format, DeliveryOptions)))
        raise ConfigError(f"{owner} got an unknown option {unknown[0]!r}; known options: {known}")
    rest = dict(options)
    delivery = DeliveryOptions.pick(owner, rest)
    fmt = RFC5424Format(**rest)
    fmt.validate(owner)
    return fmt, delivery


def peer_gone(sock: socket.socket) -> bool:
    """True when the daemon closed the connection (a syslog receiver never sends data on it)."""
    try:
        pending = sock.pending() if isinstance(sock, ssl.SSLSocket) else 0
        if not pending:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
        if isinstance(sock, ssl.SSLSocket):
            timeout = sock.gettimeout()
            sock.setblocking(False)
            try:
                return sock.recv(1) == b""
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return False
            finally:
                sock.settimeout(timeout)
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except (OSError, ValueError):
        return True


class DaemonHandler(logging.Handler):
    """What :class:`RFC5424Handler` and :class:`mplog.handlers.RELPHandler` share.

    ``emit`` encodes a record as an RFC 5424 message and queues it in a bounded
    :class:`mplog.handlers.delivery.Outbox`; a thread of the handler's own (started at the first
    record, named ``thread_name``) delivers the queue; ``close`` lets it deliver what is held
    within ``close_timeout``. Subclasses write ``_run`` (how the thread talks to the daemon) and
    say what "confirmed" means for :meth:`wait_confirmed`.
    """

    check_builds = True  # building opens nothing: mplog check builds and closes it (listener.handler_check)

    wants_positions = True  # the listener sets mplog_sender and mplog_seq on each record (mplog.listener.dispatch)
    thread_name = "mplog-daemon"

    def __init__(self, owner: str, address: Any, transport: str, default_port: int, options: dict[str, Any]) -> None:
        super().__init__()
        self.transport = transport
        self.address = parse_address(owner, address, default_port)
        fmt, self.options = split_options(owner, options)
        self.encoder = RFC5424Encoder(fmt)
        self._message_text = MessageText()
        self._context = tls_context(self.options) if transport == "tls" else None
        self.outbox = Outbox(self.options)
        self._thread: threading.Thread | None = None
        self._close_deadline = 0.0
        self.resent = 0  # records sent again after a failure (the daemon may have some of them twice)
        self._unreachable_since = 0.0  # time.monotonic() of the first failed attempt of an outage; 0.0: none

    # ------------------------------------------------------------ an outage, said once each way

    def _unreachable(self, exc: BaseException) -> None:
        """Say on stderr, once per outage, that the daemon cannot be reached (records wait, bounded, counted)."""
        if self._unreachable_since:
            return
        self._unreachable_since = time.monotonic()
        _say(
            f"mplog: handler {self.get_name() or type(self).__name__!r} cannot reach {_where(self.address)} "
            f"({type(exc).__name__}: {exc}); its records wait in its buffer (max_buffer, policy "
            f"{self.options.policy}: drops are counted in handler_drops) while it retries"
        )

    def _reached(self) -> None:
        """Say on stderr that the daemon is reached again after an outage."""
        if not self._unreachable_since:
            return
        seconds = time.monotonic() - self._unreachable_since
        self._unreachable_since = 0.0
        _say(
            f"mplog: handler {self.get_name() or type(self).__name__!r} reaches {_where(self.address)} again "
            f"after {seconds:.1f} s; {self.dropped} records dropped so far"
        )

    # ------------------------------------------------------------ counters

    @property
    def dropped(self) -> int:
        """Records lost and counted: dropped by the policy, refused by the daemon, or not delivered by close()."""
        return self.outbox.dropped

    @property
    def cut(self) -> dict[str, int]:
        """What had to be cut to stay within RFC 5424's limits, by part (header, name, value, message)."""
        return self.encoder.cut

    @property
    def unconfirmed(self) -> int:
        """Records held that are not confirmed yet (see :meth:`wait_confirmed`)."""
        return self.outbox.unsettled

    # ------------------------------------------------------------ the logging call

    def text(self, record: logging.LogRecord) -> str:
        """The text of the message: what the handler's formatter makes of the record."""
        return self._message_text(self, record)

    def wait_confirmed(self, timeout: float | None = None) -> bool:
        """True once every record emitted before the call is confirmed (or dropped, counted).

        Acknowledged delivery (:mod:`mplog.listener.ack_loop`) waits on this before it acknowledges a
        frame to its worker; ``timeout`` defaults to the ``confirm_timeout`` option.
        """
        return self.outbox.wait_settled(self.options.confirm_timeout if timeout is None else timeout)

    # ------------------------------------------------------------ the delivering thread

    def _start(self) -> None:
        with self.outbox.cond:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        raise NotImplementedError

    def _pause(self, seconds: float) -> None:
        """Wait before the next attempt; close() cuts it short at its deadline."""
        with self.outbox.cond:
            if self.outbox.closing:
                seconds = min(seconds, max(self._close_deadline - time.monotonic(), 0.0))
            if seconds > 0:
                self.outbox.cond.wait(seconds)

    def close(self) -> None:
        """Deliver what is held (bounded by ``close_timeout``); what is left is counted as dropped."""
        if "outbox" not in vars(self):  # __init__ refused its options: nothing was started (logging.shutdown)
            logging.Handler.close(self)
            return
        with self.outbox.cond:
            already = self.outbox.closing
            self.outbox.closing = True
            self._close_deadline = time.monotonic() + self.options.close_timeout
            self.outbox.cond.notify_all()
            thread = self._thread
        if thread is not None and not already:
            thread.join(self.options.close_timeout + self.options.timeout + 1.0)
        super().close()


class RFC5424Handler(DaemonHandler):
    """Sends every record as an RFC 5424 message over UDP, TCP (octet counting) or TLS.

    Args:
        address: the daemon, ``[host, port]`` (default port 514, or 6514 for TLS).
        transport: ``"udp"``, ``"tcp"`` or ``"tls"``.
        **options: fields of :class:`mplog.handlers.RFC5424Format` (facility, app_name,
            msgid, enterprise_id, utc, bom, structured_data, max_value_chars,
            max_message_bytes) and of :class:`mplog.handlers.DeliveryOptions` (the buffer,
            its policy, timeouts, retries and the TLS files).
    """

    thread_name = "mplog-rfc5424"

    def __init__(self, address: Any = ("localhost", 514), transport: str = "udp", **options: Any) -> None:
        owner = "RFC5424Handler"
        if transport not in TRANSPORTS:
            raise ConfigError(f"{owner} transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
        super().__init__(owner, address, transport, 6514 if transport == "tls" else 514, options)
        self._udp: socket.socket | None = None
        self._udp_address: Any = None
        self.sent = 0  # records written into the socket (TCP, TLS) or sent as datagrams (UDP)
        self.send_errors = 0  # failed writes (each is retried on a new connection) and failed datagrams
        self.connections = 0  # connections made (TCP, TLS)
        self.connect_errors = 0  # failed attempts to connect

    # ------------------------------------------------------------ the logging call

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.encoder.encode(record, self.text(record))
            if self.transport == "udp":
                self.send_datagram(message)
                return
            if self.outbox.put(b"%d %b" % (len(message), message)) and self._thread is None:
                self._start()
        except Exception:
            self.handleError(record)

    def send_datagram(self, message: bytes) -> None:
        """One message, one datagram (RFC 5426); an error is counted and reported, never retried."""
        if self._udp is None:
            family, kind, proto, _, addr = socket.getaddrinfo(*self.address, 0, socket.SOCK_DGRAM)[0]
            self._udp = socket.socket(family, kind, proto)
            self._udp_address = addr
        try:
            self._udp.sendto(message, self._udp_address)
        except OSError:
            self.send_errors += 1
            raise
        self.sent += 1

    def wait_confirmed(self, timeout: float | None = None) -> bool:
        """True once every record emitted before the call is in the socket (or dropped, counted); UDP: always."""
        if self.transport == "udp":
            return True
        return super().wait_confirmed(timeout)

    # ------------------------------------------------------------ the writer thread

    def _connect(self) -> socket.socket:
        sock = connect(self.address, self.options, self._context)
        self.connections += 1
        return sock

    def _run(self) -> None:
        outbox = self.outbox
        sock: socket.socket | None = None
        batch: list[tuple[int, bytes]] = []
        attempt = 0
        written_before = False  # the batch in hand went (partly) into a connection that failed
        try:
            while True:
                if not batch:
                    batch = outbox.take(_BATCH_RECORDS, _BATCH_BYTES, 0.5)
                    written_before = False
                    if not batch:
                        if outbox.closing and not outbox.queued:
                            close_quietly(sock, orderly=True)
                            sock = None
                            return
                        continue
                if outbox.closing and time.monotonic() >= self._close_deadline:
                    outbox.drop_all()
                    return
                if sock is not None and peer_gone(sock):
                    close_quietly(sock)
                    sock = None
                if sock is None:
                    try:
                        sock = self._connect()
                        attempt = 0
                        self._reached()
                    except (OSError, ValueError) as exc:
                        self.connect_errors += 1
                        attempt += 1
                        self._unreachable(exc)
                        self._pause(backoff(attempt, self.options))
                        continue
                try:
                    if written_before:
                        self.resent += len(batch)
                    sock.sendall(b"".join(message for _, message in batch))
                except (OSError, ValueError):
                    self.send_errors += 1
                    written_before = True
                    close_quietly(sock)
                    sock = None
                    continue
                self.sent += len(batch)
                outbox.settle([number for number, _ in batch])
                batch = []
        finally:
            close_quietly(sock)

    # ------------------------------------------------------------ close

    def close(self) -> None:
        """Write what is queued (bounded by ``close_timeout``), then close the connection."""
        super().close()
        if getattr(self, "_udp", None) is not None:
            close_quietly(self._udp)
            self._udp = None


def _where(address: Any) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _say(line: str) -> None:
    with contextlib.suppress(Exception):  # a closed stderr must not stop the delivering thread
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
