"""Workers of a collector learn its level: ``mplog listen`` tells the workers that ask what its
handlers accept, so a DEBUG record that no handler takes is never shipped.

Every worker here is a separate process that knows nothing but ``MPLOG_ENDPOINT``; its own
counters say how many records it numbered and sent, the collector's stats how many arrived,
and the output file which were written, each exactly once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import check_lines, read_lines, wait_for

from mplog.listener.status_channel import request_stats

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

TESTS_DIR = str(Path(__file__).resolve().parents[1])
DEBUG_RECORDS, INFO_RECORDS = 300, 200

# producer 0: DEBUG records (no handler of the collector takes them); producer 1: INFO.
WORKER_CODE = """
import json, logging, sys, mplog, helpers
handler = mplog.setup_worker(**json.loads(sys.argv[1]))
log = logging.getLogger("app.jobs")
for seq in range(int(sys.argv[2])):
    log.debug("%s", helpers.payload(0, seq))
for seq in range(int(sys.argv[3])):
    log.info("%s", helpers.payload(1, seq))
assert handler.flush_within(10.0)
print(json.dumps({"counters": handler.counters, "root": logging.getLogger().level, "handler": handler.level}))
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPLOG_")}
    env["PYTHONPATH"] = os.pathsep.join([TESTS_DIR, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mplog-lvl-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _config(path: Path, out: Path, *, root: str = "INFO", handler_level: str | None = None, **mplog: Any) -> Path:
    handler: dict[str, Any] = {"class": "logging.FileHandler", "filename": str(out), "formatter": "line"}
    if handler_level:
        handler["level"] = handler_level
    config: dict[str, Any] = {
        "formatters": {"line": {"format": "%(levelname)s %(message)s"}},
        "handlers": {"file": handler},
        "root": {"level": root, "handlers": ["file"]},
    }
    if mplog:
        config["mplog"] = mplog
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


@contextlib.contextmanager
def _collector(config: Path, bind: str) -> Iterator[tuple[subprocess.Popen[str], str, list[str]]]:
    """A real ``mplog listen``; yields (process, the endpoint it printed, its stderr lines)."""
    argv = [sys.executable, "-m", "mplog", "listen", "--config", str(config), "--bind", bind]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
    lines: list[str] = []
    assert proc.stderr is not None
    stream = proc.stderr
    reader = threading.Thread(target=lambda: lines.extend(line.rstrip("\n") for line in stream), daemon=True)
    reader.start()
    try:
        ready = wait_for(lambda: next((x for x in lines if "listening on" in x), None), timeout=20)
        yield proc, ready.rsplit(" ", 1)[1], lines
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        reader.join(5)
        stream.close()


def _run_worker(endpoint: str, options: dict[str, Any] | None = None, **env: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", WORKER_CODE, json.dumps(options or {}), str(DEBUG_RECORDS), str(INFO_RECORDS)],
        capture_output=True,
        text=True,
        env=_env(MPLOG_ENDPOINT=endpoint, **env),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


def _written(out: Path) -> list[str]:
    lines = read_lines(out)
    assert all(line.startswith("INFO ") for line in lines), lines[:3]
    return lines


SCHEMES = ["ipc", "tcp", "mp", "ack"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_workers_of_mplog_listen_ship_no_record_that_no_handler_takes(tmp_path, short_dir, scheme):
    out = tmp_path / "out.log"
    settings = {"ack": True, "state_dir": str(tmp_path / "state")} if scheme == "ack" else {}
    config = _config(tmp_path / "collector.json", out, **settings)
    bind = {
        "ipc": f"ipc://{short_dir}/c.sock",
        "ack": f"ipc://{short_dir}/c.sock",
        "mp": f"mp://{short_dir}/c.sock",
        "tcp": "tcp://127.0.0.1:*",
    }[scheme]
    with _collector(config, bind) as (collector, endpoint, _):
        env = {"MPLOG_ACK": "1"} if scheme == "ack" else {}
        report = _run_worker(endpoint, **env)
        # The worker learnt INFO from the collector: its DEBUG records were never numbered or sent.
        assert (report["root"], report["handler"]) == (logging.INFO, logging.INFO)
        assert report["counters"]["sent"] == INFO_RECORDS
        assert report["counters"]["dropped"] == 0
        stats = request_stats(endpoint)
        _stop(collector)
    assert stats["received"] == INFO_RECORDS
    assert stats["gaps"] == stats["dropped"] == stats["duplicates"] == stats["malformed_total"] == 0
    check_lines(_written(out), {1: INFO_RECORDS}).assert_exact()


def test_a_handler_level_above_the_loggers_is_the_level_workers_learn(tmp_path, short_dir):
    # root accepts DEBUG, but its only handler takes INFO and up: DEBUG records would reach no handler.
    out = tmp_path / "out.log"
    config = _config(tmp_path / "collector.json", out, root="DEBUG", handler_level="INFO")
    with _collector(config, f"ipc://{short_dir}/c.sock") as (collector, endpoint, _):
        report = _run_worker(endpoint)
        assert report["counters"]["sent"] == INFO_RECORDS
        _stop(collector)
    check_lines(_written(out), {1: INFO_RECORDS}).assert_exact()


@pytest.mark.parametrize(
    ("options", "env", "shipped"),
    [
        ({"level": logging.DEBUG}, {}, DEBUG_RECORDS + INFO_RECORDS),  # level= wins over the collector
        ({}, {"MPLOG_LEVEL": "DEBUG"}, DEBUG_RECORDS + INFO_RECORDS),  # so does $MPLOG_LEVEL
        ({}, {"MPLOG_LEVEL": "WARNING"}, 0),
    ],
    ids=["level-argument", "MPLOG_LEVEL-lower", "MPLOG_LEVEL-higher"],
)
def test_an_explicit_level_wins_over_the_collectors(tmp_path, short_dir, options, env, shipped):
    out = tmp_path / "out.log"
    with _collector(_config(tmp_path / "c.json", out), f"ipc://{short_dir}/c.sock") as (collector, endpoint, _):
        report = _run_worker(endpoint, options, **env)
        assert report["counters"]["sent"] == shipped
        # Once the collector has read the worker's goodbye (under load it may still be behind it).
        stats = wait_for(
            lambda: (
                (s := request_stats(endpoint))["received"] >= shipped
                and all(v["closed"] for v in s["senders"].values())
                and s
            ),
            timeout=15,
        )
        _stop(collector)
    assert stats["received"] == shipped
    # The collector still writes only what its handlers take: every INFO record that was sent, once.
    check_lines(_written(out), {1: INFO_RECORDS} if shipped else {}).assert_exact()
    assert len(read_lines(out)) == (INFO_RECORDS if shipped else 0)


FOLLOWER_CODE = """
import json, logging, sys, time, mplog, helpers
import mplog.worker.level
mplog.worker.level.REFRESH_INTERVAL = 0.2  # ask again often: the test has not got 30 s
handler = mplog.setup_worker()
root = logging.getLogger()
if sys.argv[2] == "one warning":
    logging.getLogger("app").warning("%s", helpers.payload(2, 0))
print(root.level, flush=True)
sys.stdin.readline()  # the test has replaced the collector
deadline = time.monotonic() + 30
while root.level != logging.DEBUG and time.monotonic() < deadline:
    time.sleep(0.02)
for seq in range(int(sys.argv[1])):
    logging.getLogger("app").debug("%s", helpers.payload(0, seq))
assert handler.flush_within(10.0)
print(json.dumps({"root": root.level, "counters": handler.counters}), flush=True)
"""


@pytest.mark.parametrize("before", ["one warning", "nothing"])
def test_a_worker_follows_a_collector_restarted_with_another_level(tmp_path, short_dir, before):
    # "nothing": every record the worker logs is below the first collector's level, so it never
    # sends one. Before, its flusher thread (which asks again) never started: the level stayed.
    bind = f"ipc://{short_dir}/c.sock"
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    worker = None
    try:
        with _collector(_config(tmp_path / "a.json", first, root="WARNING"), bind) as (collector, endpoint, _):
            worker = subprocess.Popen(
                [sys.executable, "-c", FOLLOWER_CODE, str(DEBUG_RECORDS), before],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=_env(MPLOG_ENDPOINT=endpoint),
            )
            assert worker.stdout is not None and worker.stdin is not None
            assert worker.stdout.readline().strip() == str(logging.WARNING)
            sent = 1 if before == "one warning" else 0
            wait_for(lambda: request_stats(endpoint)["received"] == sent)
            _stop(collector)
        config = _config(tmp_path / "b.json", second, root="DEBUG")
        with _collector(config, bind) as (collector, endpoint, _):
            worker.stdin.write("go\n")
            worker.stdin.flush()
            report = json.loads(worker.stdout.readline())
            assert report["root"] == logging.DEBUG
            assert report["counters"]["sent"] == sent + DEBUG_RECORDS
            assert worker.wait(30) == 0
            assert worker.stderr is not None and worker.stderr.read() == ""
            _stop(collector)
    finally:
        if worker is not None:
            if worker.poll() is None:
                worker.kill()
            worker.wait(10)
            for stream in (worker.stdin, worker.stdout, worker.stderr):
                if stream is not None:
                    stream.close()
    assert read_lines(first) == (["WARNING P2:00000000:00000:"] if sent else [])
    lines = read_lines(second)
    assert all(line.startswith("DEBUG ") for line in lines)
    check_lines(lines, {0: DEBUG_RECORDS}).assert_exact()


def test_where_a_worker_asks_and_where_it_does_not(tmp_path, monkeypatch):
    from mplog.worker.level import status_endpoint

    monkeypatch.delenv("MPLOG_CONTROL", raising=False)
    (tmp_path / "live.sock.ctl").touch()
    assert status_endpoint(f"ipc://{tmp_path}/live.sock") == f"ipc://{tmp_path}/live.sock.ctl"
    assert status_endpoint(f"mp://{tmp_path}/live.sock") == f"ipc://{tmp_path}/live.sock.ctl"
    assert status_endpoint(f"ipc://{tmp_path}/relay.sock") is None  # a relay has no status channel
    assert status_endpoint("tcp://127.0.0.1:5140") == "tcp://127.0.0.1:5141"
    assert status_endpoint("tcp://localhost:5140") == "tcp://127.0.0.1:5141"
    assert status_endpoint("tcp://[::1]:5140") == "tcp://127.0.0.1:5141"
    # Another host's status channel is loopback there: nothing to ask from here.
    assert status_endpoint("tcp://10.0.0.5:5140") is None
    assert status_endpoint("tcp://127.0.0.1:5140,tcp://127.0.0.1:5150") is None
    monkeypatch.setenv("MPLOG_CONTROL", "tcp://127.0.0.1:7001")
    assert status_endpoint("tcp://10.0.0.5:5140") == "tcp://127.0.0.1:7001"
