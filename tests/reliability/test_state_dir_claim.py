"""One live listener per state directory.

One config started twice with different endpoints (a service and a hand-started copy, say)
put two listeners on one ``mplog.state_dir``: both started without a word and wrote over each
other's stats checkpoint, senders' progress and acknowledged marks, and the next restart
continued a mix of both. The second listener is now refused at start, naming the first's pid.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import check_lines, file_config, read_lines, running_listen, wait_for

import mplog
from mplog.exceptions import ConfigError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TESTS = str(Path(__file__).resolve().parent.parent)

WORKER = """
import sys, mplog, helpers
mplog.setup_worker(sys.argv[1])
helpers.log_numbered(int(sys.argv[2]), int(sys.argv[3]))
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPLOG_")}
    env["PYTHONPATH"] = os.pathsep.join([TESTS, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _log(endpoint: str, producer: int, count: int) -> None:
    done = subprocess.run(
        [sys.executable, "-c", WORKER, endpoint, str(producer), str(count)], env=_env(), timeout=60, check=False
    )
    assert done.returncode == 0


def _config(tmp_path: Path) -> tuple[dict[str, Any], Path]:
    out = tmp_path / "out.log"
    config: dict[str, Any] = file_config(out, mode="w")
    config["mplog"] = {"state_dir": str(tmp_path / "state")}
    return config, out


def test_a_second_mplog_listen_on_a_state_dir_in_use_is_refused_and_a_listener_after_a_kill_continues(tmp_path):
    config, out = _config(tmp_path)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    first_at, second_at = f"ipc://{tmp_path / 'a.sock'}", f"ipc://{tmp_path / 'b.sock'}"
    with running_listen(path, first_at, tmp_path / "first.err", _env()) as first:
        _log(first_at, 1, 500)
        second = subprocess.Popen(
            [sys.executable, "-m", "mplog", "listen", "--config", str(path), "--bind", second_at],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        try:
            _, err = second.communicate(timeout=30)  # before: it started, and ran until killed
        finally:
            if second.poll() is None:
                second.kill()
                second.wait(10)
        assert second.returncode == 2, err
        assert err == (
            f"mplog: config error: mplog.state_dir {str(tmp_path / 'state')!r} is in use by another running listener "
            f"(pid {first.pid}): two listeners on one state directory write over each other's stats checkpoint, "
            "senders' progress and acknowledged marks; give each listener its own state_dir, or stop the other "
            "one first\n"
        )
        _log(first_at, 2, 500)
        wait_for(lambda: len(read_lines(out)) == 1000, timeout=30)
        first.send_signal(signal.SIGKILL)  # the kernel drops the lock with the process
        first.wait(10)
    with running_listen(path, second_at, tmp_path / "third.err", _env()) as third:
        _log(second_at, 3, 500)
        third.send_signal(signal.SIGTERM)
        assert third.wait(20) == 0
    check_lines(read_lines(out), {1: 500, 2: 500, 3: 500}).assert_exact()
    assert "received 1500 records" in (tmp_path / "third.err").read_text()


def test_start_listener_on_a_state_dir_another_listener_holds_raises_config_error(tmp_path):
    config, _ = _config(tmp_path)
    first = mplog.start_listener(config, route_parent=False, export_env=False)
    try:
        with pytest.raises(ConfigError, match=rf"is in use by another running listener \(pid {first.pid}\)"):
            mplog.start_listener(config, route_parent=False, export_env=False)
        assert first.running and first.restarts == 0
    finally:
        first.stop()
    second = mplog.start_listener(config, route_parent=False, export_env=False)  # free once the first stopped
    second.stop()


def test_a_second_listener_writing_a_file_another_listener_writes_is_refused_naming_the_handler_and_pid(tmp_path):
    # One config started twice (no state_dir): two RotatingFileHandlers renamed the file under each
    # other (an outsider kept 3,969 of 10,000 lines), and an acknowledging listener's restart cut
    # the other's acknowledged lines off the file's end (13,122 records gone). Refused at start now.
    out = tmp_path / "logs" / "app.log"
    out.parent.mkdir()
    config: dict[str, Any] = file_config(out)
    config["handlers"]["file"]["class"] = "logging.handlers.RotatingFileHandler"
    config["handlers"]["file"]["maxBytes"] = 10_000
    config["handlers"]["file"]["backupCount"] = 50
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    first_at, second_at = f"ipc://{tmp_path / 'a.sock'}", f"ipc://{tmp_path / 'b.sock'}"
    with running_listen(path, first_at, tmp_path / "first.err", _env()) as first:
        assert (tmp_path / "logs" / ".app.log.mplog-lock").read_text() == f"{first.pid}\n"
        second = subprocess.run(
            [sys.executable, "-m", "mplog", "listen", "--config", str(path), "--bind", second_at],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=30,
            check=False,
        )
        assert second.returncode == 2, second.stderr
        assert second.stderr == (
            f"mplog: config error: handlers.file writes {str(out)!r}, which another running mplog listener "
            f"(pid {first.pid}) writes: two listeners on one file rotate it under each other, and an acknowledging "
            "one's restart cuts the other's lines off its end; give each listener its own filename, or stop the "
            "other one first\n"
        )
        _log(first_at, 1, 2000)
        first.send_signal(signal.SIGTERM)
        assert first.wait(20) == 0
    assert not (tmp_path / "logs" / ".app.log.mplog-lock").exists()  # removed by a listener that stops
    with running_listen(path, second_at, tmp_path / "second.err", _env()) as again:
        _log(second_at, 2, 2000)
        again.send_signal(signal.SIGTERM)
        assert again.wait(20) == 0
    lines = read_lines(*sorted(out.parent.glob("app.log*")))
    check_lines(lines, {1: 2000, 2: 2000}).assert_exact()
