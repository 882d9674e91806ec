"""What a sender chose (its host name, up to 255 characters on the wire) is shown escaped.

An outsider's sender named its host ``"web1\\nweb9 …"`` with ANSI and OSC escapes: ``mplog
status`` printed a fake row under it and sent control sequences to the operator's terminal,
and the listener's stop line did the same on its stderr. Every such string now goes through
``mplog.listener.stats_view.printable``: one sender is one row, and no raw ESC, BEL or
newline of a sender's reaches the terminal.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_for
from hostile import RawPush, frame, record
from lifecycle_helpers import cli_env, listen_argv, running, short_dir, wait_listening

from mplog.listener.stats_view import SenderCounts
from mplog.listener.status_channel import format_status, request_stats

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

FORGED_HOST = "web1\nweb9   6666   999999   0.0   0   0  0.1 s ago  closed\x1b]0;owned\x07\x1b[2K\x1b[31mFAKE"
SHOWN_HOST = r"web1\nweb9   6666   999999   0.0   0   0  0.1 s ago  closed\x1b]0;owned\x07\x1b[2K\x1b[31mFAKE"
RAW = ("\x1b", "\x07", "\r")


@pytest.fixture
def sockets() -> Iterator[Path]:
    with short_dir() as path:
        yield path


def _sender(host: str, pid: int) -> dict[str, object]:
    now = time.time()
    return {
        "host": host, "pid": pid, "stream": 7, "records": 1, "dropped": 0, "gaps": 0, "duplicates": 0,
        "first_seen": now, "last_seen": now, "closed": False, "unclosed": "",
    }  # fmt: skip


def test_format_status_puts_a_forged_host_on_one_row_escaped():
    stats = {"pid": 1, "endpoint": "ipc:///x", "senders": {"a": _sender(FORGED_HOST, 4242), "b": _sender("vm", 1)}}
    lines = format_status(stats).split("\n")
    assert len(lines) == 4  # head, column names, one row per sender
    assert lines[2].startswith("vm ")  # sorted by host
    assert lines[3].startswith(SHOWN_HOST + " ") and lines[3].split()[-1] == "open"
    assert not any(ch in line for line in lines for ch in RAW)
    assert str(SenderCounts(_sender(FORGED_HOST, 4242))).startswith(SHOWN_HOST + "/4242: 1 records")


def test_mplog_status_and_the_stop_line_show_a_forged_host_escaped(tmp_path, sockets):
    endpoint = f"ipc://{sockets}/c.sock"
    config = tmp_path / "collector.json"
    config.write_text(json.dumps({"version": 1, "root": {"level": "DEBUG", "handlers": []}}))
    err = tmp_path / "listen.err"
    with running(listen_argv(config, endpoint), err) as listener:
        wait_listening(err)
        push = RawPush(endpoint)
        try:
            assert push.send(frame([FORGED_HOST, 4242, 0.0, 7], 0, [record()]))
            wait_for(lambda: request_stats(endpoint)["received"] == 1)
        finally:
            push.close()
        status = _cli("status", endpoint)
        lines = status.split("\n")
        assert len(lines) == 4 and lines[3] == "", lines  # head, column names, its one row
        assert lines[2].startswith(SHOWN_HOST + " ") and lines[2][len(SHOWN_HOST) :].split()[:2] == ["4242", "1"]
        assert not any(ch in status for ch in RAW)
        as_json = _cli("status", endpoint, "--json")
        assert not any(ch in as_json for ch in RAW)
        (sender,) = json.loads(as_json)["senders"].values()
        assert sender["host"] == FORGED_HOST  # the JSON keeps the exact string, escaped by JSON
        listener.send_signal(signal.SIGTERM)
        assert listener.wait(20) == 0
    stderr = err.read_text()
    assert not any(ch in stderr for ch in RAW)
    (goodbye,) = [line for line in stderr.splitlines() if "without a goodbye" in line]
    assert goodbye.endswith(f": {SHOWN_HOST}/4242 (open at stop)"), goodbye


def _cli(*argv: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "mplog", *argv], capture_output=True, text=True, env=cli_env(), timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
