"""Failures are visible where an operator looks.

The stop line, ``mplog status``, ``mplog listen``'s exit code and message, ``mplog check``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for
from lifecycle_helpers import cli_env, listen_argv, running, short_dir, wait_listening, write_config

from mplog.listener.status_channel import format_status, request_stats

EXIT_CONFIG = 2

WORKER = """
import sys, mplog, helpers
mplog.setup_worker()
helpers.log_numbered(0, int(sys.argv[1]))
"""


def _one_handler(handler: dict[str, Any], fmt: str = "%(message)s") -> dict[str, Any]:
    return {
        "version": 1,
        "formatters": {"f": {"format": fmt}},
        "handlers": {"file": {"formatter": "f", **handler}},
        "root": {"level": "DEBUG", "handlers": ["file"]},
    }


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_handler_failing_on_every_record_shows_in_the_status_head_line_and_the_stop_line(tmp_path):
    out = tmp_path / "out.log"
    # A format naming a field no record has: every record fails in the handler.
    config = _one_handler({"class": "logging.FileHandler", "filename": str(out)}, fmt="%(missing)s %(message)s")
    path = write_config(tmp_path / "collector.json", config)
    err = tmp_path / "listen.err"
    with short_dir() as sockets:
        endpoint = f"ipc://{sockets}/collector.sock"
        with running(listen_argv(path, endpoint), err) as collector:
            wait_listening(err)
            worker = subprocess.run(
                [sys.executable, "-c", WORKER, "501"], env=cli_env(MPLOG_ENDPOINT=endpoint), timeout=30, check=False
            )
            assert worker.returncode == 0
            wait_for(lambda: request_stats(endpoint)["received"] == 501)
            status = subprocess.run(
                [sys.executable, "-m", "mplog", "status", endpoint],
                capture_output=True,
                text=True,
                env=cli_env(),
                timeout=30,
                check=False,
            )
            assert status.returncode == 0, status.stderr
            head = status.stdout.splitlines()[0]
            assert "received 501" in head and head.endswith("handler errors 501 (file 501)"), head
            collector.send_signal(signal.SIGTERM)
            assert collector.wait(20) == 0
    assert out.read_text() == ""  # nothing was written, and both places said so
    stop = err.read_text().splitlines()[-1]
    assert stop.startswith("mplog: stopped; received 501 records") and stop.endswith(
        ", handler errors 501 (file 501)"
    ), stop


def test_the_status_head_line_names_handler_errors_only_when_there_are_some():
    stats: dict[str, Any] = {
        "pid": 1,
        "endpoint": "ipc:///x",
        "received": 3,
        "malformed_total": 0,
        "dropped": 0,
        "gaps": 0,
        "duplicates": 0,
        "senders": {},
        "handler_errors": {"file": 2, "mail": 1},
    }
    assert format_status(stats, now=0.0).splitlines()[0].endswith("repaired 0, handler errors 3 (file 2, mail 1)")
    stats["handler_errors"] = {}
    assert "handler errors" not in format_status(stats, now=0.0)


# (handler spec, words the one line of `mplog check` must hold, words the one line of `mplog listen` must hold)
UNBUILDABLE: dict[str, tuple[dict[str, Any], list[str], list[str]]] = {
    "missing-directory": (
        {"class": "logging.FileHandler", "filename": "@/no/such/dir/x.log"},
        ["handlers.file.filename", "no/such/dir", "does not exist"],
        ["handler 'file'", "FileNotFoundError", "No such file or directory"],
    ),
    "FileHandler-maxBytes": (
        {"class": "logging.FileHandler", "filename": "@/x.log", "maxBytes": 1000},
        ["handlers.file", "FileHandler", "maxBytes"],
        ["handler 'file'", "TypeError", "maxBytes"],
    ),
    "RotatingFileHandler-typo": (
        {"class": "logging.handlers.RotatingFileHandler", "filename": "@/x.log", "maxbytes": 1000},
        ["handlers.file", "RotatingFileHandler", "maxbytes"],
        ["handler 'file'", "TypeError", "maxbytes"],
    ),
    "filename-is-a-directory": (
        {"class": "mplog.handlers.RotatingFileHandler", "filename": "@/"},
        ["handlers.file.filename", "is a directory"],
        ["handler 'file'", "IsADirectoryError"],
    ),
}


def _unbuildable(case: str, directory: Path) -> tuple[dict[str, Any], list[str], list[str]]:
    handler, check_words, listen_words = UNBUILDABLE[case]
    filename = str(handler["filename"]).replace("@", str(directory), 1)
    return _one_handler({**handler, "filename": filename}), check_words, listen_words


@pytest.mark.integration
@pytest.mark.parametrize("case", list(UNBUILDABLE))
def test_mplog_listen_exits_2_with_one_line_naming_a_handler_that_cannot_be_built(tmp_path, case):
    logs = tmp_path / "logs"
    logs.mkdir()
    config, _, words = _unbuildable(case, logs)
    path = write_config(tmp_path / "collector.json", config)
    with short_dir() as sockets:
        result = subprocess.run(
            listen_argv(path, f"ipc://{sockets}/collector.sock"),
            capture_output=True,
            text=True,
            env=cli_env(),
            timeout=30,
            check=False,
        )
    assert result.returncode == EXIT_CONFIG, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("mplog: config error: ") and all(word in lines[0] for word in words), lines[0]


@pytest.mark.integration
@pytest.mark.parametrize("case", list(UNBUILDABLE))
def test_mplog_check_finds_a_handler_that_cannot_be_built_without_creating_anything(tmp_path, case):
    logs = tmp_path / "logs"
    logs.mkdir()
    config, words, _ = _unbuildable(case, logs)
    path = write_config(tmp_path / "collector.json", config)
    before = sorted(os.listdir(tmp_path)), sorted(os.listdir(logs))
    result = subprocess.run(
        [sys.executable, "-m", "mplog", "check", str(path)],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=30,
        check=False,
    )
    assert result.returncode == EXIT_CONFIG, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mplog: config error: handlers.file"), lines
    assert all(word in lines[0] for word in words), lines[0]
    assert (sorted(os.listdir(tmp_path)), sorted(os.listdir(logs))) == before


@pytest.mark.integration
def test_mplog_check_of_a_good_file_handler_says_ok_and_creates_no_log_file(tmp_path):
    out = tmp_path / "logs" / "new.log"
    out.parent.mkdir()
    config = _one_handler({"class": "mplog.handlers.RotatingFileHandler", "filename": str(out), "maxBytes": 10})
    path = write_config(tmp_path / "collector.json", config)
    result = subprocess.run(
        [sys.executable, "-m", "mplog", "check", str(path)],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path}: OK")
    assert not out.exists()
