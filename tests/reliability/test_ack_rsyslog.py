"""Acknowledged delivery into rsyslog over RELP: worker -> listener -> rsyslog loses nothing.

The listener acknowledges a frame to its worker only after rsyslog acknowledged the
frame's records (RELPHandler.wait_confirmed, mplog.listener.ack_loop). A listener SIGKILLed while
rsyslog is away, an rsyslogd SIGKILLed mid-stream: every number the workers logged is a
line rsyslog wrote, and each line's structured data names the same sender and number.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import check_lines, payload, wait_for
from ledger import build_ledger
from syslog_daemon import RSYSLOGD, SD_PREFIX_RE, have_module, message_text, start_daemon

import mplog

SPAWN = multiprocessing.get_context("spawn")
WINDOW = 128
BATCH = 512  # the workers' batch_records: one frame

pytestmark = [
    pytest.mark.integration,
    pytest.mark.serial,
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        RSYSLOGD is None or not have_module("imrelp"),
        reason="needs rsyslogd with imrelp (apt-get install rsyslog rsyslog-relp; .ci/run does)",
    ),
]


def _produce(producer: int, count: int, pace: float) -> None:
    mplog.setup_worker(batch_records=BATCH)  # acknowledged delivery: the listener exported MPLOG_ACK=1
    chunk = 200
    for start in range(0, count, chunk):
        log_numbered_from(producer, start, min(chunk, count - start))
        time.sleep(pace)


def log_numbered_from(producer: int, first: int, count: int) -> None:
    log = logging.getLogger("test")
    for seq in range(first, first + count):
        log.info("%s", payload(producer, seq))


def _config(port: int) -> dict[str, Any]:
    return {
        "version": 1,
        "formatters": {"plain": {"format": "%(message)s"}},
        "handlers": {
            "rsyslog": {
                "class": "mplog.handlers.RELPHandler",
                "address": ["127.0.0.1", port],
                "formatter": "plain",
                "window": WINDOW,
                "max_buffer": 200_000,
                "policy": "block",
                "confirm_timeout": 0.5,
                "retry_max": 0.2,
            }
        },
        "root": {"level": "INFO", "handlers": ["rsyslog"]},
    }


def _start(workers: int, per: int, pace: float) -> list[Any]:
    procs = [SPAWN.Process(target=_produce, args=(i, per, pace)) for i in range(workers)]
    for p in procs:
        p.start()
    return procs


def _ledger_of_rsyslog(daemon: Any, workers: int, per: int, pids: dict[int, int], stats: dict[str, Any]):
    """From the workers' numbers to rsyslog's lines: each line's payload and structured data agree."""
    records = daemon.records()
    lines = [message_text(r) for r in records]
    for record, text in zip(records, lines, strict=True):
        sd = SD_PREFIX_RE.match(record["structured-data"])
        assert sd, record
        producer, seq = int(text[1 : text.index(":")]), int(text.split(":")[1])
        assert (int(sd["pid"]), int(sd["seq"])) == (pids[producer], seq), record
    ledger = build_ledger(lines, dict.fromkeys(range(workers), per), stats, pids)
    return ledger, check_lines(lines, dict.fromkeys(range(workers), per))


def _join(procs: list[Any]) -> None:
    for p in procs:
        p.join(90)
    assert [p.exitcode for p in procs] == [0] * len(procs)


def test_a_listener_killed_mid_stream_loses_nothing_on_the_way_to_rsyslog(tmp_path: Path):
    daemon = start_daemon(tmp_path / "rsyslog", relp=True)
    workers, per = 2, 15_000
    try:
        with mplog.start_listener(_config(daemon.relp_port), ack=True, route_parent=False) as listener:
            procs = _start(workers, per, 0.01)
            wait_for(lambda: len(daemon.records()) > workers * per // 3, 60, interval=0.005)
            os.kill(listener.pid, signal.SIGKILL)
            _join(procs)
            wait_for(lambda: len(check_lines(map(message_text, daemon.records()), {}).seen) >= workers * per, 60)
            stats = listener.stats()
    finally:
        daemon.stop()
    ledger, check = _ledger_of_rsyslog(daemon, workers, per, {i: p.pid for i, p in enumerate(procs)}, stats)
    # Nothing lost. A frame rsyslog had acknowledged when the listener died, before its mark was
    # stored, is sent again by its worker: at most one frame per sender is written twice.
    ledger.assert_balanced(max_duplicates=BATCH)
    assert check.missing == {} and check.duplicates <= workers * BATCH
    assert stats["restarts"] == 1
    assert stats["gaps"] == stats["dropped"] == 0


def test_a_listener_killed_while_rsyslog_is_down_loses_nothing_once_rsyslog_is_back(tmp_path: Path):
    """The records the dead listener held for rsyslog (never acknowledged to the workers) are sent again."""
    daemon = start_daemon(tmp_path / "rsyslog", relp=True)
    workers, per = 2, 6_000
    try:
        with mplog.start_listener(_config(daemon.relp_port), ack=True, route_parent=False) as listener:
            procs = _start(workers, per, 0.02)
            wait_for(lambda: len(daemon.records()) > 1000, 60, interval=0.005)
            daemon.stop(signal.SIGKILL)
            written = len(daemon.records())
            # rsyslog is gone: the listener takes frames in (and holds their records for rsyslog).
            wait_for(lambda: listener.stats()["received"] >= written + 1500, 60, interval=0.05)
            assert listener.stats()["unconfirmed"] >= 1  # ... and acknowledges none of them
            os.kill(listener.pid, signal.SIGKILL)
            wait_for(lambda: listener.stats()["restarts"] == 1, 30)
            daemon.start()
            _join(procs)
            wait_for(lambda: len(check_lines(map(message_text, daemon.records()), {}).seen) >= workers * per, 90)
            stats = listener.stats()
    finally:
        daemon.stop()
    ledger, check = _ledger_of_rsyslog(daemon, workers, per, {i: p.pid for i, p in enumerate(procs)}, stats)
    assert check.missing == {}, {p: len(s) for p, s in check.missing.items()}
    # Twice at most: rsyslog's own unanswered window when it was killed, and one frame per
    # sender that rsyslog took from the first listener before it died.
    assert check.duplicates <= WINDOW + workers * BATCH
    ledger.assert_balanced(max_duplicates=WINDOW + BATCH)
    assert stats["gaps"] == stats["dropped"] == 0


def test_rsyslog_killed_and_restarted_mid_stream_loses_nothing_through_an_acknowledging_listener(tmp_path: Path):
    daemon = start_daemon(tmp_path / "rsyslog", relp=True)
    workers, per = 2, 10_000
    try:
        with mplog.start_listener(_config(daemon.relp_port), ack=True, route_parent=False) as listener:
            procs = _start(workers, per, 0.01)
            wait_for(lambda: len(daemon.records()) > workers * per // 3, 60, interval=0.005)
            daemon.restart(signal.SIGKILL)
            _join(procs)
            wait_for(lambda: len(check_lines(map(message_text, daemon.records()), {}).seen) >= workers * per, 60)
            stats = listener.stats()
    finally:
        daemon.stop()
    ledger, check = _ledger_of_rsyslog(daemon, workers, per, {i: p.pid for i, p in enumerate(procs)}, stats)
    assert check.missing == {}
    assert check.duplicates <= WINDOW  # what rsyslog wrote and had not answered when it was killed
    ledger.assert_balanced(max_duplicates=WINDOW)
    assert stats["restarts"] == 0 and stats["handler_drops"] == {"rsyslog": 0}
