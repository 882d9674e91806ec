"""RELPHandler into a real rsyslogd (imrelp): acknowledged delivery across restarts, TLS, the bounded buffer."""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import threading
import time

import pytest
from handler_peers import join_workers, rsyslog_snippet_file, snippet_file
from helpers import check_lines, payload, wait_for
from syslog_daemon import (
    RSYSLOGD,
    RsyslogDaemon,
    check_rich_records,
    free_port,
    have_module,
    make_certs,
    message_text,
    rich_worker,
    rsyslog_config,
    start_daemon,
)

import mplog
from mplog.handlers import RELPHandler

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        RSYSLOGD is None or not have_module("imrelp"),
        reason="needs rsyslogd with imrelp (apt-get install rsyslog rsyslog-relp; .ci/run does)",
    ),
]
HOST = socket.gethostname()


def _logger(handler: logging.Handler, name: str = "relp.test") -> logging.Logger:
    log = logging.getLogger(name)
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    return log


def _payloads(daemon: RsyslogDaemon) -> list[str]:
    return [message_text(r) for r in daemon.records()]


def test_the_documented_relp_recipe_delivers_every_record_with_its_fields(tmp_path):
    port = free_port()
    out = tmp_path / "relp-out.jsonl"
    conf = rsyslog_snippet_file("relp", tmp_path, dir=tmp_path, out=out, port=port)
    daemon = RsyslogDaemon(tmp_path / "rsyslog", conf.read_text(encoding="utf-8"), out, [port]).start()
    try:
        config = snippet_file("forward-relp", tmp_path, port=port)
        with mplog.start_listener(config, route_parent=False) as listener:
            context = multiprocessing.get_context("forkserver")
            procs = [context.Process(target=rich_worker, args=(listener.endpoint, p, 300)) for p in range(2)]
            for proc in procs:
                proc.start()
            pids = {p: proc.pid for p, proc in enumerate(procs)}
            join_workers(procs)
            daemon.wait_records(600)
        stats = listener.stats()
    finally:
        daemon.stop()
    renamed = [
        {
            "hostname": r["host"],
            "app-name": r["app"],
            "procid": r["pid"],
            "msgid": r["msgid"],
            "structured-data": r["sd"],
            "msg": r["msg"],
            "timestamp": "2026-01-01T00:00:00.000000Z",
        }
        for r in daemon.records()
    ]
    check_rich_records(renamed, {0: 300, 1: 300}, pids, HOST, "shop", escaped=True)
    assert stats["handler_errors"] == {} and stats["handler_drops"] == {"rsyslog": 0}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_nothing_is_lost_while_rsyslog_is_restarted_mid_stream_and_duplicates_stay_within_the_window(tmp_path, sig):
    daemon = start_daemon(tmp_path / "rsyslog", relp=True)
    window = 64
    handler = RELPHandler(["127.0.0.1", daemon.relp_port], window=window, max_buffer=100_000, retry_max=0.2)
    log = _logger(handler)
    total = 30_000
    logged = threading.Event()

    def produce() -> None:
        for seq in range(total):
            log.info("%s", payload(0, seq))
            if seq % 500 == 499:
                time.sleep(0.01)  # spread over the restarts
        logged.set()

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        for third in (1, 2):
            # Restart while records are flowing: some sent and unanswered, some still queued.
            wait_for(lambda third=third: handler.delivered >= third * total // 3, 60, interval=0.002)
            daemon.restart(sig)
        producer.join(60)
        assert logged.is_set()
        assert handler.wait_confirmed(60)
        records = _payloads(daemon)
    finally:
        handler.close()
        daemon.stop()
    check = check_lines(records, {0: total})
    assert check.missing == {} and check.truncated == 0 and check.garbage == 0  # nothing lost
    # Sent again after a broken session: at most the window each time; duplicates are among them.
    assert handler.broken >= 2
    assert check.duplicates <= handler.resent <= window * handler.broken
    assert handler.delivered == total  # each record answered once, on the session that got it through
    assert handler.dropped == handler.rejected == 0
    assert len(records) == total + check.duplicates


def test_records_logged_while_rsyslog_is_down_are_delivered_once_it_is_up(tmp_path):
    port = free_port()
    out = tmp_path / "out.jsonl"
    daemon = RsyslogDaemon(tmp_path / "rsyslog", rsyslog_config(tmp_path / "rsyslog", out, relp=port), out, [port])
    handler = RELPHandler(["127.0.0.1", port], retry_base=0.05, retry_max=0.2)
    log = _logger(handler)
    try:
        for seq in range(500):
            log.info("%s", payload(0, seq))
        wait_for(lambda: handler.connect_errors >= 2, 10)
        assert not handler.wait_confirmed(0.1) and handler.unconfirmed == 500
        daemon.start()
        assert handler.wait_confirmed(30)
        records = _payloads(daemon)
    finally:
        handler.close()
        daemon.stop()
    check_lines(records, {0: 500}).assert_exact()
    assert len(records) == 500 and handler.delivered == 500 and handler.resent == 0


@pytest.mark.parametrize(
    ("policy", "arrive"),
    [("drop_oldest", range(150, 250)), ("drop_newest", range(100)), ("block", range(100))],
)
def test_a_full_buffer_drops_by_its_policy_and_counts_every_record_it_dropped(tmp_path, policy, arrive):
    port = free_port()
    out = tmp_path / "out.jsonl"
    daemon = RsyslogDaemon(tmp_path / "rsyslog", rsyslog_config(tmp_path / "rsyslog", out, relp=port), out, [port])
    handler = RELPHandler(["127.0.0.1", port], max_buffer=100, policy=policy, block_timeout=0.01, retry_max=0.1)
    log = _logger(handler)
    slowest = 0.0
    try:
        for seq in range(250):
            start = time.perf_counter()
            log.info("%s", payload(0, seq))
            slowest = max(slowest, time.perf_counter() - start)
        assert handler.dropped == 150
        daemon.start()
        assert handler.wait_confirmed(30)
        records = _payloads(daemon)
    finally:
        handler.close()
        daemon.stop()
    check = check_lines(records, {0: 250})
    assert sorted(seq for _, seq in check.seen) == list(arrive)
    assert check.duplicates == 0 and handler.delivered == 100
    assert slowest < 1.0  # block waits block_timeout at most (0.01 s here), then drops


@pytest.mark.skipif(not have_module("lmnsd_gtls"), reason="needs rsyslog-gnutls (.ci/run installs it)")
def test_relp_over_tls_delivers_with_a_client_certificate_and_nothing_without_one(tmp_path):
    certs = make_certs(tmp_path / "pki")
    daemon = start_daemon(tmp_path / "rsyslog", relp=True, certs=certs)
    address = ["localhost", daemon.relp_port]
    good = RELPHandler(address, "tls", cafile=certs.ca, certfile=certs.client_cert, keyfile=certs.client_key)
    anonymous = RELPHandler(address, "tls", cafile=certs.ca, retry_max=0.2, close_timeout=0.5)
    try:
        log = _logger(good, "relp.good")
        for seq in range(1000):
            log.info("%s", payload(0, seq))
        assert good.wait_confirmed(30)
        _logger(anonymous, "relp.anonymous").info("%s", payload(1, 0))
        wait_for(lambda: anonymous.connect_errors + anonymous.broken >= 3, 20)
        assert anonymous.delivered == 0 and not anonymous.wait_confirmed(0)
    finally:
        good.close()
        anonymous.close()
        daemon.stop()
    check_lines(_payloads(daemon), {0: 1000}).assert_exact()
    assert len(daemon.records()) == 1000 and good.delivered == 1000
    assert anonymous.dropped == 1  # close() could not deliver it: counted
