"""SMTPHandler and mplog's BatchingSMTPHandler against a real SMTP server (aiosmtpd in a subprocess)."""

from __future__ import annotations

import logging
import re
from collections import Counter

import pytest
from handler_peers import SmtpServer, mail_lines, run_workers, snippet_file
from helpers import check_lines, wait_for

import mplog

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SUBJECT = re.compile(r"^\[app\] (?P<total>\d+) records?: (?P<levels>.+)$")


def _batching(tmp_path, server: SmtpServer, capacity: int = 1000, interval: float = 60.0, max_buffer: int = 10_000):
    return snippet_file(
        "smtp-batching", tmp_path, port=server.port, capacity=capacity, interval=interval, max_buffer=max_buffer
    )


def _account(server: SmtpServer) -> tuple[list[str], list[int]]:
    """Every record line of every mail, after checking each subject against its body; and the batch sizes."""
    lines: list[str] = []
    sizes = []
    for message in server.mails():
        match = SUBJECT.match(str(message["Subject"]))
        assert match, message["Subject"]
        body = mail_lines(message)
        levels = Counter(line.split()[0] for line in body)
        named = {name: int(count) for count, name in (part.split() for part in match["levels"].split(", "))}
        assert named == levels and int(match["total"]) == len(body), (message["Subject"], levels)
        assert message["From"] == "mplog@example.com" and message["To"] == "ops@example.com"
        lines += body
        sizes.append(len(body))
    return lines, sizes


def test_stdlib_smtp_handler_sends_one_mail_per_record(tmp_path, smtp_server):
    smtp_server.start()
    config = snippet_file("smtp", tmp_path, port=smtp_server.port)
    with mplog.start_listener(config, route_parent=False) as listener:
        run_workers(listener.endpoint, 2, 10)
    mails = smtp_server.mails()
    assert len(mails) == 20
    assert {str(m["Subject"]) for m in mails} == {"[app] error"}
    check_lines([line for m in mails for line in mail_lines(m)], {0: 10, 1: 10}).assert_exact()
    assert listener.stats()["handler_errors"] == {}


def test_batching_smtp_sends_one_mail_per_capacity_records(tmp_path, smtp_server):
    smtp_server.start()
    with mplog.start_listener(_batching(tmp_path, smtp_server, capacity=50), route_parent=False) as listener:
        run_workers(listener.endpoint, 4, 100)
        wait_for(lambda: len(smtp_server.mails()) == 8, 10)  # full batches go out without waiting
    lines, sizes = _account(smtp_server)
    assert sizes == [50] * 8
    check_lines(lines, dict.fromkeys(range(4), 100)).assert_exact()
    assert listener.stats()["handler_drops"] == {"mail": 0}


def test_batching_smtp_mails_a_partial_batch_after_the_interval(tmp_path, smtp_server):
    smtp_server.start()
    with mplog.start_listener(_batching(tmp_path, smtp_server, interval=0.5), route_parent=False) as listener:
        run_workers(listener.endpoint, 1, 30)
        wait_for(lambda: len(smtp_server.mails()) == 1, 5)  # long before shutdown
        lines, sizes = _account(smtp_server)
    assert sizes == [30]
    check_lines(lines, {0: 30}).assert_exact()


def test_batching_smtp_mails_at_once_on_an_urgent_record(tmp_path, smtp_server):
    smtp_server.start()
    with mplog.start_listener(_batching(tmp_path, smtp_server), route_parent=False) as listener:
        run_workers(listener.endpoint, 1, 12, levels=[logging.INFO] * 11 + [logging.CRITICAL])
        wait_for(lambda: len(smtp_server.mails()) == 1, 5)  # capacity 1000 and interval 60 s: urgency alone
        message = smtp_server.mails()[0]
    assert str(message["Subject"]) == "[app] 12 records: 1 CRITICAL, 11 INFO"
    check_lines(mail_lines(message), {0: 12}).assert_exact()


def test_batching_smtp_sends_what_is_buffered_when_the_listener_stops(tmp_path, smtp_server):
    smtp_server.start()
    levels = [logging.ERROR] + [logging.INFO] * 18  # 57 records: 3 ERROR, 54 INFO
    with mplog.start_listener(_batching(tmp_path, smtp_server), route_parent=False) as listener:
        run_workers(listener.endpoint, 1, 57, levels=levels)
        wait_for(lambda: listener.stats()["received"] == 57, 5)
        assert smtp_server.mails() == []
    mails = smtp_server.mails()
    assert [str(m["Subject"]) for m in mails] == ["[app] 57 records: 3 ERROR, 54 INFO"]
    check_lines(mail_lines(mails[0]), {0: 57}).assert_exact()


def test_batching_smtp_retries_a_refusing_then_absent_server_and_counts_what_its_buffer_dropped(tmp_path, smtp_server):
    smtp_server.start(reject=True)
    config = _batching(tmp_path, smtp_server, capacity=50, max_buffer=100)
    with mplog.start_listener(config, route_parent=False) as listener:
        run_workers(listener.endpoint, 1, 300)
        wait_for(lambda: listener.stats()["handler_errors"].get("mail", 0) >= 2, 10)  # 554: refused, retried
        smtp_server.stop()
        errors = listener.stats()["handler_errors"]["mail"]
        wait_for(lambda: listener.stats()["handler_errors"]["mail"] >= errors + 2, 10)  # server gone: retried
        smtp_server.start()
        wait_for(lambda: len(smtp_server.mails()) == 2, 10)  # back: delivered without a restart
        stats = listener.stats()
    lines, sizes = _account(smtp_server)
    assert sizes == [50, 50]
    # The buffer held the first 100 records; the other 200 were dropped, and counted.
    check = check_lines(lines, {0: 100})
    check.assert_exact()
    assert len(check.seen) == 100
    assert stats["handler_drops"] == {"mail": 200}
    assert len(lines) + stats["handler_drops"]["mail"] == 300
