"""``mplog listen`` as a standalone collector: unrelated processes find it through
``MPLOG_ENDPOINT`` alone, and SIGTERM or SIGINT drains it and exits 0 with every record written.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import check_lines, console_script, read_lines, wait_for

from mplog.cli import build_parser

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
def _collector(argv: list[str], **env: str) -> Iterator[tuple[subprocess.Popen[str], list[str], str]]:
    """Start ``mplog listen`` and yield (process, its stderr lines so far, the endpoint it printed).

    Always killed and reaped at the end, whatever the test did.
    """
    collector = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(**env))
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


# ---------------------------------------------------------------- setup_worker() finds this user's collector


def _line_config(tmp_path: Path, out: Path) -> Path:
    config = tmp_path / "collector.json"
    config.write_text(
        json.dumps(
            {
                "formatters": {"line": {"format": "%(message)s"}},
                "handlers": {"file": {"class": "logging.FileHandler", "filename": str(out), "formatter": "line"}},
                "root": {"level": "DEBUG", "handlers": ["file"]},
            }
        )
    )
    return config


def _setup_worker_error(**env: str) -> str:
    code = "import mplog\ntry:\n    mplog.setup_worker()\nexcept mplog.ConfigError as exc:\n    print(exc)\n"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(**env), timeout=30, check=False
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return result.stdout.strip()


def test_setup_worker_with_no_endpoint_delivers_to_this_users_collector_at_its_default_socket(tmp_path, short_dir):
    # TMPDIR moves the default socket (TMPDIR/mplog-UID/collector.sock) into this test's own folder.
    out = tmp_path / "collected.log"
    argv = [sys.executable, "-m", "mplog", "listen", "--config", str(_line_config(tmp_path, out))]
    with _collector(argv, TMPDIR=str(short_dir)) as (collector, lines, endpoint):
        assert endpoint == f"ipc://{short_dir}/mplog-{os.getuid()}/collector.sock"
        _run_workers(TMPDIR=str(short_dir))  # no MPLOG_ENDPOINT: the workers find the collector
        collector.send_signal(signal.SIGTERM)
        assert collector.wait(20) == 0
    check_lines(read_lines(out), dict.fromkeys(range(WORKERS), PER_WORKER)).assert_exact()
    assert lines[-1].startswith(f"mplog: stopped; received {WORKERS * PER_WORKER} records from {WORKERS} senders")
    assert lines[-1].endswith("malformed 0, repaired 0, gaps 0, dropped 0")


def test_setup_worker_with_no_endpoint_and_no_live_collector_says_where_it_looked(tmp_path, short_dir):
    socket_path = f"{short_dir}/mplog-{os.getuid()}/collector.sock"
    message = (
        "setup_worker() has no endpoint: pass one, or set MPLOG_ENDPOINT (mplog.start_listener() sets it for "
        "the processes it starts); no local collector (mplog listen) was found at its default endpoint "
        f"ipc://{socket_path}"
    )
    assert _setup_worker_error(TMPDIR=str(short_dir)) == message  # nothing there
    argv = [sys.executable, "-m", "mplog", "listen", "--config", str(_line_config(tmp_path, tmp_path / "out.log"))]
    with _collector(argv, TMPDIR=str(short_dir)) as (collector, _, _):
        collector.kill()  # leaves its socket file behind, with no one listening on it
        collector.wait(10)
    assert stat.S_ISSOCK(os.stat(socket_path).st_mode)
    assert _setup_worker_error(TMPDIR=str(short_dir)) == message


# ---------------------------------------------------------------- a service manager (sd_notify)


@pytest.mark.parametrize("namespace", ["path", "abstract"])
def test_listen_tells_the_service_manager_when_it_is_ready_and_when_it_stops(tmp_path, short_dir, namespace):
    # What systemd does for Type=notify: a datagram socket in $NOTIFY_SOCKET ('@' = abstract name).
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if namespace == "path":
        address = str(short_dir / "notify")
        notify.bind(address)
    else:
        address = f"@mplog-test-{secrets.token_hex(8)}"
        notify.bind("\0" + address[1:])
    notify.settimeout(20)
    out = tmp_path / "collected.log"
    endpoint = f"ipc://{short_dir}/collector.sock"
    argv = [sys.executable, "-m", "mplog", "listen", "--config", str(_line_config(tmp_path, out)), "--bind", endpoint]
    env = _env(NOTIFY_SOCKET=address)
    collector = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        ready = notify.recv(4096).decode().split("\n")
        assert ready == ["READY=1", f"STATUS=listening on {endpoint}", f"MAINPID={collector.pid}"]
        # Ready means ready: workers started on that word deliver everything.
        _run_workers(MPLOG_ENDPOINT=endpoint)
        collector.send_signal(signal.SIGTERM)
        assert notify.recv(4096).decode().split("\n") == ["STOPPING=1", "STATUS=draining"]
        assert collector.wait(20) == 0
    finally:
        if collector.poll() is None:
            collector.kill()
            collector.wait(10)
        notify.close()
    check_lines(read_lines(out), dict.fromkeys(range(WORKERS), PER_WORKER)).assert_exact()


def test_listen_runs_the_same_when_the_notify_socket_is_absent(tmp_path, short_dir):
    endpoint = f"ipc://{short_dir}/collector.sock"
    out = tmp_path / "collected.log"
    argv = [sys.executable, "-m", "mplog", "listen", "--config", str(_line_config(tmp_path, out)), "--bind", endpoint]
    with _collector(argv, NOTIFY_SOCKET=str(short_dir / "nobody-listens")) as (collector, lines, _):
        _run_workers(MPLOG_ENDPOINT=endpoint)
        collector.send_signal(signal.SIGTERM)
        assert collector.wait(20) == 0
    check_lines(read_lines(out), dict.fromkeys(range(WORKERS), PER_WORKER)).assert_exact()
    assert not any("Traceback" in line for line in lines)


def test_the_systemd_unit_in_deployment_md_names_flags_that_exist_and_waits_for_ready():
    page = (Path(TESTS_DIR).parent / "docs" / "deployment.md").read_text()
    unit = page.split("<!-- file: mplog-collector.service -->\n```ini\n", 1)[1].split("```", 1)[0]
    settings = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    assert settings["Type"] == "notify" and settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    program, *argv = shlex.split(settings["ExecStart"])
    assert program.endswith("/mplog")
    args = build_parser().parse_args(argv)
    assert (args.command, args.bind, args.metrics) == ("listen", "tcp://127.0.0.1:5140", "127.0.0.1:9464")
