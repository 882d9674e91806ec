"""What a newcomer writes: level names in any case work everywhere; an endpoint that cannot work is named at setup."""

from __future__ import annotations

import logging
import multiprocessing
import os
import subprocess
import sys

import pytest
from helpers import file_config, read_lines, wait_for

import mplog
from mplog.exceptions import ConfigError

pytestmark = pytest.mark.integration


def _log_each_level() -> None:
    mplog.setup_worker()
    for name in ("debug", "info", "warning", "error"):
        logging.getLogger("app").log(logging.getLevelName(name.upper()), "%s", name)
        logging.getLogger("other").log(logging.getLevelName(name.upper()), "%s", f"other {name}")


@pytest.mark.timeout(60)
def test_a_listener_whose_config_names_levels_in_lower_case_starts_and_applies_them(tmp_path):
    out = tmp_path / "out.log"
    config = file_config(out, level="info")
    config["handlers"]["file"]["level"] = "Debug"
    config["loggers"] = {"app": {"level": "warning"}}
    # Before: mplog check said OK, and the start failed: "Unknown level: 'info'".
    with mplog.start_listener(config, endpoint=f"ipc://{tmp_path}/l.sock", route_parent=False) as listener:
        proc = multiprocessing.get_context("spawn").Process(target=_log_each_level)
        proc.start()
        proc.join(30)
        assert proc.exitcode == 0
        wait_for(lambda: listener.stats()["received"] == 6)  # debug stays in the worker (root: info)
    assert sorted(read_lines(out)) == sorted(["warning", "error", "other info", "other warning", "other error"])


def test_setup_worker_takes_level_names_in_any_case_and_names_a_bad_one():
    handler = mplog.setup_worker("ipc:///nonexistent/mplog-levels.sock", level="info", flush_level="Warning")
    try:
        assert logging.getLogger().level == logging.INFO
        assert handler.options.flush_level == logging.WARNING
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    # Before: a bare ValueError ("Unknown level: 'loud'") from logging.
    with pytest.raises(ConfigError, match=r"level must be a level name such as 'INFO' or a number, got 'loud'"):
        mplog.setup_worker("ipc:///nonexistent/mplog-levels.sock", level="loud")


@pytest.mark.parametrize(
    ("given", "env", "words"),
    [
        ("tcp://127.0.0.1", None, "setup_worker(endpoint=...) 'tcp://127.0.0.1': no port; add the listener's"),
        (None, "tcp://127.0.0.1", "MPLOG_ENDPOINT 'tcp://127.0.0.1': no port"),
        ("tcp://127.0.0.1:*", None, "a worker connects to the listener's port, not '*'"),
        (None, "tpc://127.0.0.1:5170", "MPLOG_ENDPOINT: endpoint 'tpc://127.0.0.1:5170' has no known scheme"),
        ("ipc:///tmp/" + "d" * 120 + "/x.sock", None, "more than the 107 a Unix socket address holds"),
    ],
)
def test_setup_worker_names_an_endpoint_it_could_never_connect_to_and_where_it_came_from(
    monkeypatch, given, env, words
):
    # Before: accepted; the records were counted "could not be delivered" at exit, the cause unsaid.
    monkeypatch.delenv("MPLOG_ENDPOINT", raising=False)
    if env is not None:
        monkeypatch.setenv("MPLOG_ENDPOINT", env)
    with pytest.raises(ConfigError) as raised:
        mplog.setup_worker(given)
    assert words in str(raised.value)


def test_setup_worker_takes_mplog_endpoint_with_spaces_around_it(monkeypatch, tmp_path):
    monkeypatch.setenv("MPLOG_ENDPOINT", f"  ipc://{tmp_path}/l.sock \n")
    handler = mplog.setup_worker()
    try:
        assert handler.endpoint == f"ipc://{tmp_path}/l.sock"
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


@pytest.mark.parametrize(("value", "ack"), [("1", True), ("yes", True), (" True ", True), ("0", False), ("off", False)])
def test_mplog_ack_takes_the_usual_spellings_of_on_and_off(value, ack):
    # In a process of its own, which leaves at once: an acknowledging handler's close waits for its goodbye.
    env = {**os.environ, "MPLOG_ACK": value}
    code = "import os, sys, mplog; print(mplog.setup_worker(sys.argv[1]).options.ack, flush=True); os._exit(0)"
    argv = [sys.executable, "-c", code, "ipc:///tmp/mplog-ack-test/l.sock"]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert result.stdout.strip() == str(ack), result.stderr


def test_mplog_ack_that_is_no_spelling_of_on_or_off_is_named():
    # Before: "sure" (or "yes") was read as off, without a word.
    env = {**os.environ, "MPLOG_ACK": "sure", "MPLOG_ENDPOINT": "ipc:///tmp/mplog-ack-test/l.sock"}
    code = "import mplog; mplog.setup_worker()"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode != 0
    assert "MPLOG_ACK must be 1 or 0 (or true/false, yes/no, on/off), got 'sure'" in result.stderr
