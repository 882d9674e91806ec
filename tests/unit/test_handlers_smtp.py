"""BatchingSMTPHandler without a server: subjects, batching, bounds, retry schedule, close."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from email.message import EmailMessage

import pytest

from mplog import ConfigError
from mplog.handlers import BatchingSMTPHandler, batch_subject

ORDER = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}


class Recording(BatchingSMTPHandler):
    """Keeps the messages instead of mailing them; fails the first ``failures`` sends."""

    def __init__(self, failures: int = 0, **options) -> None:
        super().__init__(("127.0.0.1", 1), "from@x", ["to@x"], "[app]", **options)
        self.sent: list[EmailMessage] = []
        self.attempts: list[float] = []
        self.failures_left = failures
        self.errors = 0
        self.event = threading.Event()

    def send_mail(self, message: EmailMessage) -> None:
        self.attempts.append(time.monotonic())
        if self.failures_left:
            self.failures_left -= 1
            raise ConnectionRefusedError("no server")
        self.sent.append(message)
        self.event.set()

    def handleError(self, record: logging.LogRecord) -> None:
        self.errors += 1


def _record(level: int, text: str) -> logging.LogRecord:
    return logging.LogRecord("app", level, __file__, 1, "%s", (text,), None)


def test_subject_counts_records_and_levels_from_the_most_severe():
    assert batch_subject("[app]", Counter(INFO=54, ERROR=3), ORDER) == "[app] 57 records: 3 ERROR, 54 INFO"
    assert batch_subject("[app]", Counter(WARNING=1), ORDER) == "[app] 1 record: 1 WARNING"
    assert batch_subject("", Counter(INFO=2, CRITICAL=1, DEBUG=4), ORDER) == "7 records: 1 CRITICAL, 2 INFO, 4 DEBUG"


def test_unknown_and_invalid_options_are_refused_with_their_name():
    with pytest.raises(ConfigError, match="unknown option 'capacit'"):
        BatchingSMTPHandler("h", "f", "t", capacit=5)
    with pytest.raises(ConfigError, match="capacity must be a positive int"):
        BatchingSMTPHandler("h", "f", "t", capacity=0)
    with pytest.raises(ConfigError, match="urgent_level must be a level"):
        BatchingSMTPHandler("h", "f", "t", urgent_level="LOUD")


def test_a_full_batch_is_one_mail_with_one_line_per_record():
    handler = Recording(capacity=5, interval=60)
    for i in range(5):
        handler.handle(_record(logging.INFO, f"r{i}"))
    assert handler.event.wait(5)
    handler.close()
    (message,) = handler.sent
    assert message["Subject"] == "[app] 5 records: 5 INFO"
    assert str(message.get_content()).splitlines() == [f"r{i}" for i in range(5)]


def test_records_past_the_buffer_bound_are_dropped_and_counted():
    handler = Recording(capacity=100, interval=60, max_buffer=10)
    for i in range(25):
        handler.handle(_record(logging.INFO, f"r{i}"))
    assert handler.dropped == 15
    handler.close()
    assert [len(str(m.get_content()).splitlines()) for m in handler.sent] == [10]


def test_failed_sends_are_retried_with_growing_jittered_delays_up_to_the_cap():
    handler = Recording(failures=4, capacity=1, retry_base=0.05, retry_max=0.2)
    handler.handle(_record(logging.INFO, "r"))
    assert handler.event.wait(10)
    handler.close()
    gaps = [b - a for a, b in zip(handler.attempts, handler.attempts[1:], strict=False)]
    assert len(gaps) == 4 and handler.errors == handler.failures == 4
    for attempt, gap in enumerate(gaps):
        delay = min(0.2, 0.05 * 2**attempt)
        assert gap >= delay * 0.5 - 0.005  # jitter picks between half and all of the delay
    assert handler.records_sent == 1 and handler.dropped == 0


def test_close_gives_up_after_close_timeout_and_counts_what_it_could_not_send():
    handler = Recording(failures=10**6, capacity=100, interval=60, retry_base=0.05, close_timeout=0.3)
    for i in range(7):
        handler.handle(_record(logging.INFO, f"r{i}"))
    started = time.monotonic()
    handler.close()
    assert time.monotonic() - started < 2.0
    assert handler.dropped == 7 and handler.sent == []
    handler.handle(_record(logging.INFO, "after close"))
    assert handler.dropped == 8
