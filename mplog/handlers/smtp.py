"""An SMTP handler that batches many records into one mail, sent from a background thread.

The stdlib ``SMTPHandler`` opens a connection and sends one mail per record inside
``emit``: a burst of errors becomes a burst of mails, and a slow or absent server
holds up every other handler of the listener. :class:`BatchingSMTPHandler` only
buffers in ``emit``; its own thread sends one mail per ``capacity`` records or per
``interval`` seconds, whichever comes first, at once for a record at or above
``urgent_level``, and whatever is left when the handler closes. A server that is
down is retried with growing, jittered delays; the buffer is bounded and every
record it cannot hold is counted in :attr:`BatchingSMTPHandler.dropped`.
"""

from __future__ import annotations

import logging
import random
import smtplib
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, fields
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from mplog.exceptions import ConfigError

__all__ = ["BatchingSMTPHandler", "SMTPBatchOptions", "batch_subject"]


@dataclass(frozen=True)
class SMTPBatchOptions:
    """When mails go out, how much is held, and how failures are retried."""

    capacity: int = 100  # records per mail: a full batch is sent at once
    interval: float = 60.0  # seconds the oldest buffered record may wait
    urgent_level: int = logging.ERROR  # a record at or above this level is mailed at once
    max_buffer: int = 10_000  # records held (sending included); past it new records are dropped and counted
    timeout: float = 10.0  # seconds for each SMTP connection and command
    retry_base: float = 1.0  # first delay after a failed send (seconds)...
    retry_max: float = 60.0  # ...doubling, with jitter, up to this cap
    close_timeout: float = 5.0  # the longest close() keeps trying to send what is buffered

    def validate(self) -> None:
        for name in ("capacity", "max_buffer"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"BatchingSMTPHandler {name} must be a positive int, got {value!r}")
        for name in ("interval", "timeout", "retry_base", "retry_max", "close_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"BatchingSMTPHandler {name} must be a number of seconds >= 0, got {value!r}")


def batch_subject(prefix: str, levels: Counter[str], order: dict[str, int]) -> str:
    """``"[app] 57 records: 3 ERROR, 54 INFO"`` -- levels from the most to the least severe."""
    total = sum(levels.values())
    noun = "record" if total == 1 else "records"
    parts = ", ".join(
        f"{count} {name}" for name, count in sorted(levels.items(), key=lambda item: (-order.get(item[0], 0), item[0]))
    )
    text = f"{total} {noun}: {parts}"
    return f"{prefix} {text}" if prefix else text


def _level(value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    level = logging.getLevelName(str(value).upper())
    if not isinstance(level, int):
        raise ConfigError(f"BatchingSMTPHandler {where} must be a level name or number, got {value!r}")
    return level


class BatchingSMTPHandler(logging.Handler):
    """Mails records in batches: per ``capacity`` records or ``interval`` seconds, at once when urgent.

    Args:
        mailhost: ``"host"``, ``[host, port]`` or ``(host, port)``.
        fromaddr: the sender address.
        toaddrs: one address or a list of them.
        subject: the prefix of every subject; the record count and levels follow it.
        credentials: ``[user, password]`` to log in with, or None.
        secure: None for plain SMTP, ``[]`` (or a list of ``starttls`` arguments) for STARTTLS.
        **options: fields of :class:`SMTPBatchOptions` (levels by name or number).
    """

    check_builds = True  # building opens nothing: mplog check builds and closes it (listener.handler_check)

    def __init__(  # mirrors logging.handlers.SMTPHandler's positional arguments
        self,
        mailhost: str | tuple[str, int] | list[Any],
        fromaddr: str,
        toaddrs: str | list[str],
        subject: str = "[mplog]",
        credentials: tuple[str, str] | list[str] | None = None,
        secure: tuple[Any, ...] | list[Any] | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        if isinstance(mailhost, (list, tuple)):
            self.mailhost, self.mailport = str(mailhost[0]), int(mailhost[1])
        else:
            self.mailhost, self.mailport = mailhost, smtplib.SMTP_PORT
        self.fromaddr = fromaddr
        self.toaddrs = [toaddrs] if isinstance(toaddrs, str) else list(toaddrs)
        self.subject = subject
        self.credentials = tuple(credentials) if credentials else None
        self.secure = tuple(secure) if secure is not None else None
        known = {f.name for f in fields(SMTPBatchOptions)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(
                f"BatchingSMTPHandler got an unknown option {unknown[0]!r}; known options: {', '.join(sorted(known))}"
            )
        if "urgent_level" in options:
            options["urgent_level"] = _level(options["urgent_level"], "urgent_level")
        self.options = SMTPBatchOptions(**options)
        self.options.validate()
        self._cond = threading.Condition(threading.Lock())
        self._buffer: deque[tuple[str, str, float]] = deque()  # (levelname, text, monotonic time buffered)
        self._in_flight = 0  # records taken out of the buffer by a send not finished yet
        self._urgent = False
        self._closing = False
        self._close_deadline = 0.0
        self._thread: threading.Thread | None = None
        self._level_order: dict[str, int] = {}
        self.dropped = 0  # records the bounded buffer could not hold, or close() could not send
        self.mails_sent = 0
        self.records_sent = 0
        self.failures = 0  # failed send attempts (each one also goes to handleError)

    # ------------------------------------------------------------ the logging call

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.enqueue(record.levelname, record.levelno, self.format(record))
        except Exception:
            self.handleError(record)

    def enqueue(self, levelname: str, levelno: int, text: str) -> None:
        """Buffer one formatted record; wake the sender when a batch is due."""
        with self._cond:
            if self._closing or len(self._buffer) + self._in_flight >= self.options.max_buffer:
                self.dropped += 1
                return
            self._level_order[levelname] = levelno
            self._buffer.append((levelname, text, time.monotonic()))
            if levelno >= self.options.urgent_level:
                self._urgent = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mplog-smtp", daemon=True)
                self._thread.start()
            if self._urgent or len(self._buffer) == 1 or len(self._buffer) >= self.options.capacity:
                self._cond.notify()

    # ------------------------------------------------------------ the sender thread

    def _due(self, now: float) -> float:
        """Seconds until the next batch is due (0: now); the lock is held."""
        if not self._buffer:
            return self.options.interval if not self._closing else 0.0
        if self._urgent or self._closing or len(self._buffer) >= self.options.capacity:
            return 0.0
        return max(self._buffer[0][2] + self.options.interval - now, 0.0)

    def _take(self) -> list[tuple[str, str, float]]:
        batch = [self._buffer.popleft() for _ in range(min(self.options.capacity, len(self._buffer)))]
        if not self._buffer:
            self._urgent = False
        self._in_flight = len(batch)
        return batch

    def _run(self) -> None:
        attempt = 0
        batch: list[tuple[str, str, float]] = []
        retry_at = 0.0
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    if self._closing and now >= self._close_deadline:
                        self.dropped += len(batch) + len(self._buffer)
                        self._buffer.clear()
                        self._in_flight = 0
                        return
                    if batch:
                        wait = retry_at - now
                    elif self._closing and not self._buffer:
                        return
                    else:
                        wait = self._due(now)
                    if wait <= 0:
                        break
                    if self._closing:
                        wait = min(wait, self._close_deadline - now)
                    self._cond.wait(wait)
                if not batch:
                    batch = self._take()
            if self._send_batch(batch):
                with self._cond:
                    self._in_flight = 0
                batch, attempt = [], 0
            else:
                attempt += 1
                delay = min(self.options.retry_max, self.options.retry_base * 2 ** (attempt - 1))
                retry_at = time.monotonic() + delay * random.uniform(0.5, 1.0)

    def _send_batch(self, batch: list[tuple[str, str, float]]) -> bool:
        try:
            self.send_mail(self.build_message(batch))
        except Exception:
            self.failures += 1
            self.handleError(_failure_record(self, len(batch)))
            return False
        self.mails_sent += 1
        self.records_sent += len(batch)
        return True

    # ------------------------------------------------------------ one mail

    def build_message(self, batch: list[tuple[str, str, float]]) -> EmailMessage:
        """The mail for ``batch``: a subject that counts records and levels, one record per body line."""
        levels: Counter[str] = Counter(levelname for levelname, _, _ in batch)
        message = EmailMessage()
        message["From"] = self.fromaddr
        message["To"] = ", ".join(self.toaddrs)
        message["Subject"] = batch_subject(self.subject, levels, self._level_order)
        message["Date"] = formatdate(localtime=True)
        message["Message-ID"] = make_msgid(domain="mplog")
        message.set_content("\n".join(text for _, text, _ in batch) + "\n")
        return message

    def send_mail(self, message: EmailMessage) -> None:
        """Deliver one message; raises on any failure (the caller retries)."""
        with smtplib.SMTP(self.mailhost, self.mailport, timeout=self.options.timeout) as smtp:
            if self.credentials:
                if self.secure is not None:
                    smtp.ehlo()
                    smtp.starttls(*self.secure)
                    smtp.ehlo()
                smtp.login(*self.credentials)
            smtp.send_message(message, self.fromaddr, self.toaddrs)

    # ------------------------------------------------------------ flush and close

    def flush(self) -> None:
        """Ask the sender thread to mail what is buffered now (does not wait)."""
        if "_cond" not in vars(self):  # __init__ refused its options: nothing to mail (logging.shutdown)
            return
        with self._cond:
            if self._buffer:
                self._urgent = True
                self._cond.notify()

    def close(self) -> None:
        """Send what is buffered (bounded by ``close_timeout``), then stop the thread."""
        if "_cond" not in vars(self):  # __init__ refused its options: nothing was started (logging.shutdown)
            logging.Handler.close(self)
            return
        with self._cond:
            if self._closing:
                thread = None
            else:
                self._closing = True
                self._close_deadline = time.monotonic() + self.options.close_timeout
                thread = self._thread
                self._cond.notify()
        if thread is not None:
            thread.join(self.options.close_timeout + self.options.timeout + 1.0)
        super().close()


def _failure_record(handler: logging.Handler, count: int) -> logging.LogRecord:
    """A stand-in record for handleError: the failure concerns a batch, not one record."""
    return logging.LogRecord(
        handler.get_name() or "mplog.smtp", logging.ERROR, __file__, 0, "could not mail %d records", (count,), None
    )
