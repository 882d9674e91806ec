"""SysLogHandler to a real rsyslogd: UDP, TCP and a unix socket; priorities, ident, restarts."""

from __future__ import annotations

import logging
import re
import time
from collections import Counter

import pytest
from handler_peers import Rsyslog, run_workers, snippet_file
from helpers import check_lines, wait_for

import mplog

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

LEVELS = [logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL]
SEVERITY = {"DEBUG": "debug", "INFO": "info", "WARNING": "warning", "ERROR": "err", "CRITICAL": "crit"}
LINE = re.compile(r"^(?P<facility>\w+)\.(?P<severity>\w+) tag=(?P<tag>\S+) msg=\s?(?P<msg>.*)$")


def _syslog_config(tmp_path, rsyslog: Rsyslog, transport: str):
    if transport == "unix":
        return snippet_file("syslog-unix", tmp_path, socket=rsyslog.sock)
    socktype = {"udp": "SOCK_DGRAM", "tcp": "SOCK_STREAM"}[transport]
    return snippet_file("syslog", tmp_path, port=rsyslog.port, socktype=socktype)


@pytest.mark.parametrize("transport", ["udp", "tcp", "unix"])
def test_every_record_reaches_rsyslog_with_its_facility_severity_and_tag(tmp_path, rsyslog, transport):
    workers, per_worker = 3, 200
    with mplog.start_listener(_syslog_config(tmp_path, rsyslog, transport), route_parent=False) as listener:
        run_workers(listener.endpoint, workers, per_worker, levels=LEVELS)
        wait_for(lambda: len(rsyslog.records()) >= workers * per_worker, 15)
    stats = listener.stats()
    lines = rsyslog.records()
    check_lines(lines, dict.fromkeys(range(workers), per_worker)).assert_exact()
    assert len(lines) == workers * per_worker
    seen = Counter()
    for line in lines:
        match = LINE.match(line)
        assert match, line
        seq = int(match["msg"].split(":")[1])
        expected = logging.getLevelName(LEVELS[seq % len(LEVELS)])
        assert (match["facility"], match["severity"], match["tag"]) == ("local3", SEVERITY[expected], "mplogtest:")
        seen[match["severity"]] += 1
    assert seen == {SEVERITY[logging.getLevelName(lv)]: workers * per_worker // len(LEVELS) for lv in LEVELS}
    assert stats["received"] == workers * per_worker
    assert stats["handler_errors"] == {}


def test_tcp_delivery_resumes_after_rsyslog_restarts_without_restarting_the_listener(tmp_path, rsyslog):
    config = _syslog_config(tmp_path, rsyslog, "tcp")
    with mplog.start_listener(config, route_parent=False) as listener:
        run_workers(listener.endpoint, 1, 100, first=0)
        wait_for(lambda: len(rsyslog.records()) >= 100, 15)
        rsyslog.stop()
        # While the daemon is down every record fails, and each failure is counted.
        run_workers(listener.endpoint, 1, 50, first=1)
        wait_for(lambda: listener.stats()["handler_errors"].get("syslog", 0) >= 50, 10)
        rsyslog.start()
        run_workers(listener.endpoint, 1, 100, first=2)
        wait_for(lambda: len(rsyslog.records()) >= 200, 15)
    stats = listener.stats()
    check = check_lines(rsyslog.records(), {0: 100, 2: 100})
    check.assert_exact()
    assert not any(prod == 1 for prod, _ in check.seen)
    assert stats["handler_errors"] == {"syslog": 50}
    assert stats["received"] == 250


def test_listener_starts_while_rsyslog_is_down_and_delivers_once_it_is_up(tmp_path, rsyslog):
    config = _syslog_config(tmp_path, rsyslog, "tcp")
    rsyslog.stop()
    with mplog.start_listener(config, route_parent=False) as listener:
        run_workers(listener.endpoint, 1, 20, first=0)
        wait_for(lambda: listener.stats()["handler_errors"].get("syslog", 0) >= 20, 10)
        rsyslog.start()
        run_workers(listener.endpoint, 1, 30, first=1)
        wait_for(lambda: len(rsyslog.records()) >= 30, 15)
    time.sleep(0.2)  # not synchronisation: the window in which a duplicate would show
    check_lines(rsyslog.records(), {1: 30}).assert_exact()
    assert len(rsyslog.records()) == 30
    assert listener.stats()["handler_errors"] == {"syslog": 20}
