"""``mplog listen`` as a standalone collector: unrelated processes find it through
``MPLOG_ENDPOINT`` alone, and SIGTERM or SIGINT drains it and exits 0 with every record written.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import check_lines, console_script, read_lines, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

TESTS_DIR = str(Path(__file__).resolve().parents[1])
WORKERS = 3
PER_WORKER = 5_000

# A worker that knows nothing but the environment: no endpoint in its code.
WORKER_CODE = """
import sys, mplog, helpers
mplog.setup_worker()
helpers.log_numbered(int(sys.argv[1]), int(sys.argv[2]))
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPLOG_")}
    env["PYTHONPATH"] = os.pathsep.join([TESTS_DIR, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A private directory with a short path (unix socket paths are limited to ~107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="mplog-cli-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _collector(argv: list[str]) -> Iterator[tuple[subprocess.Popen[str], list[str], str]]:
    """Start ``mplog listen`` and yield (process, its stderr lines so far, the endpoint it printed).

    Always killed and reaped at the end, whatever the test did.
    """
    collector = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
    lines: list[str] = []
    assert collector.stderr is not None
    stream = collector.stderr
    reader = threading.Thread(target=lambda: lines.extend(line.rstrip("\n") for line in stream), daemon=True)
    reader.start()
    try:
        ready = wait_for(lambda: next((x for x in lines if "listening on" in x), None), timeout=20)
        yield collector, lines, ready.rsplit(" ", 1)[1]
    finally:
        if collector.poll() is None:
            collector.kill()
            collector.wait(10)
        reader.join(5)
        stream.close()


def _run_workers(**env: str) -> None:
    """Run WORKERS unrelated worker processes to completion; each must exit 0 and print nothing."""
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER_CODE, str(producer), str(PER_WORKER)],
            env=_env(**env),
            stderr=subprocess.PIPE,
            text=True,
        )
        for producer in range(WORKERS)
    ]
    errors = [worker.communicate(timeout=30)[1] for worker in workers]
    assert [worker.returncode for worker in workers] == [0] * WORKERS, errors
    assert errors == [""] * WORKERS


CASES = [
    ("console-script", "ipc", signal.SIGTERM),
    ("console-script", "tcp", signal.SIGINT),
    ("python-m", "ipc", signal.SIGINT),
    ("python-m", "tcp", signal.SIGTERM),
    ("python-m", "mp", signal.SIGTERM),
]


@pytest.mark.parametrize(("command", "scheme", "signum"), CASES, ids=[f"{c}-{s}-{g.name}" for c, s, g in CASES])
def test_standalone_collector_receives_from_unrelated_processes_and_drains_on_signal(
    tmp_path, short_dir, command, scheme, signum
):
    argv = [console_script()] if command == "console-script" else [sys.executable, "-m", "mplog"]
    out = tmp_path / "collected.log"
    config = tmp_path / "collector.json"
    config.write_text(
        json.dumps(
            {
                "formatters": {"line": {"format": "%(message)s"}},
                "handlers": {
                    "file": {"class": "logging.FileHandler", "filename": str(out), "formatter": "line"},
                },
                "root": {"level": "DEBUG", "handlers": ["file"]},
            }
        )
    )
    bind = {
        "ipc": f"ipc://{short_dir}/collector.sock",
        "tcp": "tcp://127.0.0.1:*",
        "mp": f"mp://{short_dir}/collector.sock",
    }[scheme]
    with _collector([*argv, "listen", "--config", str(config), "--bind", bind]) as (collector, lines, endpoint):
        if scheme == "tcp":
            assert re.fullmatch(r"tcp://127\.0\.0\.1:\d+", endpoint)
        _run_workers(MPLOG_ENDPOINT=endpoint)
        # The workers are gone; whatever the collector has not written yet must be drained.
        collector.send_signal(signum)
        assert collector.wait(20) == 0
    check_lines(read_lines(out), dict.fromkeys(range(WORKERS), PER_WORKER)).assert_exact()
    summary = lines[-1]
    assert summary.startswith(f"mplog: stopped; received {WORKERS * PER_WORKER} records from {WORKERS} senders")
    assert summary.endswith("malformed 0, repaired 0, gaps 0, dropped 0")


def test_standalone_collector_in_ack_mode_acknowledges_so_workers_exit_promptly_with_nothing_resent(
    tmp_path, short_dir
):
    out = tmp_path / "collected.log"
    config = tmp_path / "collector.json"
    config.write_text(
        json.dumps(
            {
                "mplog": {"ack": True, "state_dir": str(tmp_path / "state")},
                "formatters": {"line": {"format": "%(message)s"}},
                "handlers": {"file": {"class": "logging.FileHandler", "filename": str(out), "formatter": "line"}},
                "root": {"level": "DEBUG", "handlers": ["file"]},
            }
        )
    )
    endpoint = f"ipc://{short_dir}/collector.sock"
    argv = [sys.executable, "-m", "mplog", "listen", "--config", str(config), "--bind", endpoint]
    with _collector(argv) as (collector, lines, _):
        # Without acknowledgements a worker in ack mode waits out its close_timeout (>= 10 s)
        # and reports its unacknowledged records on stderr.
        _run_workers(MPLOG_ENDPOINT=endpoint, MPLOG_ACK="1")
        collector.send_signal(signal.SIGTERM)
        assert collector.wait(20) == 0
    check_lines(read_lines(out), dict.fromkeys(range(WORKERS), PER_WORKER)).assert_exact()
    assert lines[-1].startswith(f"mplog: stopped; received {WORKERS * PER_WORKER} records from {WORKERS} senders")
