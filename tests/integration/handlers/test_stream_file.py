"""StreamHandler (stdout, stderr, a stream opened later), FileHandler options, NullHandler, WatchedFileHandler."""

from __future__ import annotations

import json
import logging
import multiprocessing
import subprocess
from pathlib import Path

import pytest
from handler_peers import join_workers, run_workers, snippet_file, start_workers, text_worker
from helpers import check_lines, read_lines, wait_for

import mplog

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _texts(endpoint: str, logger: str, texts: list[str]) -> None:
    proc = multiprocessing.get_context("forkserver").Process(target=text_worker, args=(endpoint, logger, texts))
    proc.start()
    join_workers([proc])


def test_stream_handlers_write_to_the_listeners_stdout_and_stderr_by_level(tmp_path, capfd):
    config = snippet_file("stream-stdout", tmp_path)
    with mplog.start_listener(config, route_parent=False) as listener:
        run_workers(listener.endpoint, 2, 100, levels=[logging.INFO, logging.WARNING])
    out, err = capfd.readouterr()
    out_lines = [line for line in out.splitlines() if "P" in line]
    err_lines = [line for line in err.splitlines() if line.startswith("WARNING P")]
    check_lines(out_lines, dict.fromkeys(range(2), 100)).assert_exact()
    assert len(out_lines) == 200
    # stderr gets the WARNING records only: odd sequence numbers.
    check = check_lines(err_lines, {})
    assert sorted(check.seen) == [(p, s) for p in range(2) for s in range(1, 100, 2)]
    assert listener.stats()["handler_errors"] == {}


def test_factory_stream_handler_opens_its_stream_in_the_listener_at_the_first_record(tmp_path):
    config = snippet_file("stream-factory", tmp_path, dir=tmp_path)
    target = tmp_path / "stream.log"
    with mplog.start_listener(config, route_parent=False) as listener:
        assert not target.exists()  # nothing opened at start-up: the stream is set later
        run_workers(listener.endpoint, 3, 500)
    check_lines(read_lines(target), dict.fromkeys(range(3), 500)).assert_exact()
    assert len(read_lines(target)) == 1500


def test_file_handler_honours_mode_encoding_errors_and_delay(tmp_path):
    config = snippet_file("file", tmp_path, dir=tmp_path)
    target = tmp_path / "app.log"
    with mplog.start_listener(config, route_parent=False) as listener:
        assert not target.exists()  # delay = true
        target.write_text("old content\n")  # mode = "w" truncates what is there at the first record
        _texts(listener.endpoint, "app", ["plain ascii", "café ☕", "last"])
    assert target.read_bytes() == b"plain ascii\ncaf\\xe9 \\u2615\nlast\n"  # encoding ascii, errors backslashreplace
    assert listener.stats()["handler_errors"] == {}


def test_null_handler_discards_a_logger_that_does_not_propagate(tmp_path):
    config = snippet_file("null", tmp_path, dir=tmp_path)
    json.loads(config.read_text())  # the snippet is plain JSON once the marker line is gone
    with mplog.start_listener(config, route_parent=False) as listener:
        run_workers(listener.endpoint, 1, 100, logger="chatty")
        run_workers(listener.endpoint, 1, 100, logger="app", first=1)
    lines = read_lines(tmp_path / "app.log")
    check_lines(lines, {1: 100}).assert_exact()
    assert len(lines) == 100
    assert listener.stats()["received"] == 200


def test_watched_file_handler_loses_nothing_when_another_process_moves_the_file(tmp_path):
    config = snippet_file("watched", tmp_path, dir=tmp_path)
    current, moved = tmp_path / "app.log", tmp_path / "app.log.1"
    workers, per_worker = 4, 20_000
    with mplog.start_listener(config, route_parent=False) as listener:
        procs = start_workers(listener.endpoint, workers, per_worker)
        try:
            wait_for(lambda: current.exists() and current.stat().st_size > 50_000, 30, 0.005)
            subprocess.run(["mv", str(current), str(moved)], check=True, timeout=10)  # as logrotate does
        finally:
            join_workers(procs)
    old, new = read_lines(moved), read_lines(current)
    assert old and new, (len(old), len(new))
    check_lines(old + new, dict.fromkeys(range(workers), per_worker)).assert_exact()
    assert len(old) + len(new) == workers * per_worker
    assert listener.stats()["handler_errors"] == {}


def test_a_failing_file_handler_is_counted_and_the_others_go_on(tmp_path):
    config = {
        "formatters": {"plain": {"format": "%(message)s"}},
        "handlers": {
            "good": {"class": "logging.FileHandler", "filename": str(tmp_path / "good.log"), "formatter": "plain"},
            "full": {"class": "logging.FileHandler", "filename": "/dev/full", "formatter": "plain"},
            "missing_dir": {
                "class": "logging.FileHandler",
                "filename": str(tmp_path / "no" / "such" / "dir.log"),
                "delay": True,
            },
        },
        "root": {"level": "INFO", "handlers": ["full", "missing_dir", "good"]},
    }
    with mplog.start_listener(config, route_parent=False) as listener:
        run_workers(listener.endpoint, 2, 300)
        assert listener.running
    stats = listener.stats()
    check_lines(read_lines(tmp_path / "good.log"), dict.fromkeys(range(2), 300)).assert_exact()
    assert stats["received"] == 600
    assert stats["handler_errors"]["missing_dir"] == 600
    assert stats["handler_errors"]["full"] >= 600  # one per record, plus the final flush at close
    assert set(stats["handler_errors"]) == {"missing_dir", "full"}


def test_a_handler_raising_on_every_tenth_record_is_counted_exactly_and_isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))  # the listener imports flaky_handler
    config = {
        "formatters": {"plain": {"format": "%(message)s"}},
        "handlers": {
            "flaky": {"class": "flaky_handler.EveryTenthFails"},
            "good": {"class": "logging.FileHandler", "filename": str(tmp_path / "good.log"), "formatter": "plain"},
        },
        "root": {"level": "INFO", "handlers": ["flaky", "good"]},
    }
    with mplog.start_listener(config, route_parent=False) as listener:
        run_workers(listener.endpoint, 2, 500)
        assert listener.running
    check_lines(read_lines(tmp_path / "good.log"), {0: 500, 1: 500}).assert_exact()
    assert listener.stats()["handler_errors"] == {"flaky": 100}
