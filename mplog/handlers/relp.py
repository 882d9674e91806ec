"""RELP into rsyslog: a record counts as delivered only once rsyslog acknowledged it.

Plain TCP syslog cannot tell what the daemon received: records written into a socket
that the daemon then dropped are lost without a trace. RELP (``imrelp``) answers every
message; :class:`RELPHandler` keeps each message until its answer came, and after a
broken connection (rsyslog restarted, killed, or the network failed) opens a new
session and sends again every message that was not answered. So nothing is lost, and
a few messages may arrive twice: those rsyslog had taken but not yet answered when the
connection broke, at most ``window`` per broken connection (RELP documents the same).
:attr:`RELPHandler.resent` counts them, so duplicates are bounded by it.

``emit`` only encodes (an RFC 5424 message, :mod:`mplog.handlers.rfc5424_format`) and
queues; a thread of the handler's own talks to rsyslog, with at most ``window``
messages unanswered. The buffer is bounded (``max_buffer`` records, answered or not,
with the ``policy`` of mplog's other queued handlers), and everything it drops is
counted in :attr:`RELPHandler.dropped`. In acknowledged delivery (``ack=True``) the
listener acknowledges a frame to its worker only once rsyslog answered its records:
:meth:`RELPHandler.wait_confirmed`.
"""

from __future__ import annotations

import logging
import time
from itertools import repeat
from typing import Any

from mplog.exceptions import ConfigError
from mplog.handlers.delivery import backoff, close_quietly, connect
from mplog.handlers.relp_session import RELPSession
from mplog.handlers.rfc5424 import DaemonHandler

__all__ = ["RELPHandler"]

TRANSPORTS = ("tcp", "tls")
_POLL = 0.005  # seconds to wait for answers before looking for new records again
_BATCH_BYTES = 256 * 1024
_GATHER = 32  # fewer answers than this in one read: pause before the next read...
_GATHER_PAUSE = 0.0005  # ...this long (seconds)


class RELPHandler(DaemonHandler):
    """Sends every record to rsyslog's ``imrelp`` and keeps it until rsyslog acknowledged it.

    Args:
        address: ``[host, port]`` of rsyslog's ``imrelp`` input (default port 2514).
        transport: ``"tcp"``, or ``"tls"`` for an ``imrelp`` input with ``tls="on"``.
        **options: as for :class:`mplog.handlers.RFC5424Handler`; ``window`` (default 512)
            is how many messages may wait for their answer at once.
    """

    thread_name = "mplog-relp"

    def __init__(self, address: Any = ("localhost", 2514), transport: str = "tcp", **options: Any) -> None:
        owner = "RELPHandler"
        if transport not in TRANSPORTS:
            raise ConfigError(f"{owner} transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
        super().__init__(owner, address, transport, 2514, options)
        self.delivered = 0  # records rsyslog acknowledged with 200
        self.rejected = 0  # records rsyslog answered with an error code (counted in dropped too)
        self.sessions = 0  # sessions opened
        self.connect_errors = 0  # failed attempts to connect or open a session
        self.broken = 0  # sessions that ended without a close (a restart, a kill, a network failure)
        self.last_error = ""  # why the last session or attempt failed

    # ------------------------------------------------------------ the logging call

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self.outbox.put(self.encoder.encode(record, self.text(record))) and self._thread is None:
                self._start()
        except Exception:
            self.handleError(record)

    def wait_confirmed(self, timeout: float | None = None) -> bool:
        """True once rsyslog acknowledged every record emitted before the call (or it was dropped, counted)."""
        return super().wait_confirmed(timeout)

    # ------------------------------------------------------------ the session thread

    def _run(self) -> None:
        outbox = self.outbox
        attempt = 0
        while True:
            with outbox.cond:
                idle = not outbox.queued and not outbox.in_flight
                if idle and outbox.closing:
                    return
                late = outbox.closing and time.monotonic() >= self._close_deadline
                if idle and not late:
                    outbox.cond.wait(0.5)
                    continue
            if late:
                outbox.drop_all()  # close() gave up: what is left is counted as dropped
                return
            session = self._open()
            if session is None:
                attempt += 1
                self._pause(backoff(attempt, self.options))
                continue
            attempt = 0
            try:
                self._serve(session)
            except (OSError, ValueError) as exc:
                self.broken += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
            finally:
                close_quietly(session.sock)

    def _open(self) -> RELPSession | None:
        try:
            sock = connect(self.address, self.options, self._context)
        except (OSError, ValueError) as exc:
            self.connect_errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._unreachable(exc)
            return None
        session = RELPSession(sock)
        try:
            session.open(self.options.timeout)
        except (OSError, ValueError) as exc:
            self.connect_errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._unreachable(exc)
            close_quietly(sock)
            return None
        self.sessions += 1
        self._reached()
        return session

    def _serve(self, session: RELPSession) -> None:
        """Send and collect answers on one session until it breaks or the handler closes."""
        outbox, window = self.outbox, self.options.window
        waiting: dict[int, int] = {}  # transaction number -> record number
        with outbox.cond:
            again = list(outbox.in_flight.items())  # sent on an earlier session, never answered
        for start in range(0, len(again), window):
            chunk = again[start : start + window]
            self._answers(session, waiting, window - len(chunk))
            _send(session, waiting, chunk)
            self.resent += len(chunk)
        while True:
            room = window - len(waiting)
            if room > 0:
                batch = outbox.take(room, _BATCH_BYTES, None if not waiting and not outbox.closing else 0)
                if batch:
                    _send(session, waiting, batch)
            if waiting:
                # More to send: refill once half the window is answered (fewer, larger writes).
                self._answers(session, waiting, window // 2 if outbox.queued else 0)
            elif outbox.closing:
                if not outbox.queued:
                    session.close(min(1.0, self.options.timeout))
                    close_quietly(session.sock, orderly=True)
                    return
                if time.monotonic() >= self._close_deadline:
                    return

    def _answers(self, session: RELPSession, waiting: dict[int, int], until: int) -> None:
        """Collect answers until at most ``until`` messages wait for one (at least one read when any is there)."""
        first = True
        deadline = time.monotonic() + self.options.timeout
        while waiting and (first or len(waiting) > until):
            poll = _POLL if len(waiting) > until else 0.0  # the first read only takes what is there
            first = False
            self._check_time_left(deadline)
            oks, others = session.receive_answers(poll)
            if self._settle_answers(waiting, oks, others):
                deadline = time.monotonic() + self.options.timeout
            if session.closed_by_server:
                raise ConnectionResetError("rsyslog closed the session (serverclose)")
            if len(waiting) > until and len(oks) < _GATHER:
                # Answers come a few at a time; letting them gather makes one wake-up (and one
                # hand-over of the GIL by the listener's thread) serve many of them.
                time.sleep(_GATHER_PAUSE)

    def _check_time_left(self, deadline: float) -> None:
        """Raise TimeoutError past close_timeout while closing, or when nothing was answered by ``deadline``."""
        if self.outbox.closing and time.monotonic() >= self._close_deadline:
            raise TimeoutError("close_timeout passed with messages unanswered")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"rsyslog answered nothing for {self.options.timeout} s")

    def _settle_answers(self, waiting: dict[int, int], oks: list[int], others: list[tuple[int, bytes, bytes]]) -> bool:
        """Settle the messages these answers are for (``200``: delivered, else refused); True when any was."""
        pop = waiting.pop
        delivered = [number for number in map(pop, oks, repeat(None)) if number is not None]
        refused: list[int] = []
        for txnr, command, data in others:
            number = pop(txnr, None)
            if number is not None:
                (delivered if command == b"rsp" and data[:3] == b"200" else refused).append(number)
        if delivered:
            self.delivered += len(delivered)
            self.outbox.settle(delivered)
        if refused:
            self.rejected += len(refused)
            self.outbox.settle(refused, delivered=False)
        return bool(delivered or refused)


def _send(session: RELPSession, waiting: dict[int, int], items: list[tuple[int, bytes]]) -> None:
    """Send ``items`` (record number, message) as syslog commands; note each under its transaction number."""
    numbers = session.syslog([message for _, message in items])
    waiting.update(zip(numbers, (number for number, _ in items), strict=True))
