"""MemoryHandler, QueuedHandler (a slow handler behind a queue) and NTEventLogHandler's clear refusal."""

from __future__ import annotations

import logging
import sys
import time

import pytest
from handler_peers import mail_lines, run_workers, snippet_file
from helpers import check_lines, read_lines, wait_for

import mplog

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_memory_handler_flushes_on_capacity_on_flush_level_and_at_shutdown(tmp_path):
    config = snippet_file("memory", tmp_path, dir=tmp_path, capacity=10)
    out = tmp_path / "app.log"
    with mplog.start_listener(config, route_parent=False) as listener:
        run_workers(listener.endpoint, 1, 25, first=0)
        wait_for(lambda: len(read_lines(out)) == 20, 5)  # two full buffers; 5 records held
        run_workers(listener.endpoint, 1, 1, levels=[logging.ERROR], first=1)
        wait_for(lambda: len(read_lines(out)) == 26, 5)  # the ERROR flushed the 5 held records and itself
        run_workers(listener.endpoint, 1, 3, first=2)
        wait_for(lambda: listener.stats()["received"] == 29, 5)
        time.sleep(0.2)  # not synchronisation: the window in which a wrong flush would show
        assert len(read_lines(out)) == 26  # 3 held below capacity and flush level
    lines = read_lines(out)
    check_lines(lines, {0: 25, 1: 1, 2: 3}).assert_exact()
    assert len(lines) == 29  # the rest at shutdown
    assert listener.stats()["handler_errors"] == {}


def test_queued_handler_keeps_a_slow_smtp_server_from_holding_back_the_file(tmp_path, smtp_server):
    smtp_server.start(delay=0.5)  # every mail takes half a second
    config = snippet_file("queued", tmp_path, dir=tmp_path, port=smtp_server.port)
    out = tmp_path / "app.log"
    workers, per_worker, errors_each = 2, 1_000, 3
    levels = [logging.ERROR] + [logging.INFO] * (per_worker // errors_each - 1)
    with mplog.start_listener(config, route_parent=False) as listener:
        started = time.monotonic()
        run_workers(listener.endpoint, workers, per_worker, levels=levels)
        wait_for(lambda: len(read_lines(out)) == workers * per_worker, 10)
        file_done = time.monotonic() - started
        mails_then = len(smtp_server.mails())
        stats = listener.stats()
    mails = smtp_server.mails()
    errors = workers * -(-per_worker // len(levels))
    # The file had every record while most mails (0.5 s each, one at a time) were still to come.
    assert mails_then < errors, (mails_then, file_done)
    assert len(mails) == errors  # the queue was delivered at shutdown
    mailed = check_lines([line.split()[1] for m in mails for line in mail_lines(m)], {})
    mailed.assert_exact()
    assert sorted(mailed.seen) == [(p, s) for p in range(workers) for s in range(0, per_worker, len(levels))]
    check_lines(read_lines(out), dict.fromkeys(range(workers), per_worker)).assert_exact()
    assert stats["handler_drops"] == {"background": 0}
    assert stats["handler_errors"] == {}


@pytest.mark.skipif(sys.version_info < (3, 12), reason="dictConfig builds a QueueHandler's listener from 3.12 on")
def test_stdlib_queue_handler_with_a_listener_from_dictconfig_on_python_3_12(tmp_path):
    config = {
        "formatters": {"plain": {"format": "%(message)s"}},
        "handlers": {
            "file": {"class": "logging.FileHandler", "filename": str(tmp_path / "app.log"), "formatter": "plain"},
            "queue": {"class": "logging.handlers.QueueHandler", "handlers": ["file"]},
        },
        "root": {"level": "INFO", "handlers": ["queue"]},
    }
    with mplog.start_listener(config, route_parent=False) as listener:
        run_workers(listener.endpoint, 2, 200)
    check_lines(read_lines(tmp_path / "app.log"), {0: 200, 1: 200}).assert_exact()


@pytest.mark.skipif(sys.platform == "win32", reason="NTEventLogHandler works on Windows")
def test_nt_event_log_handler_is_refused_with_a_clear_message_off_windows(tmp_path):
    config = snippet_file("nteventlog", tmp_path)
    with pytest.raises(mplog.ConfigError, match=r"handlers\.events: NTEventLogHandler .* only on Windows"):
        mplog.start_listener(config, route_parent=False)
