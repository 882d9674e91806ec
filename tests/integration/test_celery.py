"""A real Celery prefork worker (Redis broker) logging through mplog: task ids travel, nothing doubles."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import payload, wait_for

import mplog

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(90)]

celery = pytest.importorskip("celery", reason="celery is in the test extra: pip install -e '.[test]'")
redis = pytest.importorskip("redis", reason="the redis client is in the test extra: pip install -e '.[test]'")

TESTS_DIR = str(Path(__file__).resolve().parents[1])
TASKS = 8

TASKS_MODULE = """
import logging, os
from celery import Celery
import mplog.integrations.celery
from helpers import payload

app = Celery("shop_tasks", broker=os.environ["BROKER_URL"])
app.conf.update(worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True)
mplog.integrations.celery.install(app)
log = logging.getLogger("shop.tasks")


@app.task(name="shop.work")
def work(n):
    log.info("%s", payload(1, n))
    print(payload(2, n))
    return n
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def broker_url(tmp_path: Path) -> Iterator[str]:
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    port = _free_port()
    proc = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    try:

        def ping() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_for(ping, timeout=10)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


def test_every_task_record_and_print_arrives_exactly_once_with_its_task_id(tmp_path, broker_url):
    (tmp_path / "shop_tasks.py").write_text(TASKS_MODULE, encoding="utf-8")
    out = tmp_path / "out.jsonl"
    config = {
        "formatters": {"json": {"()": "mplog.formatters.JSONFormatter"}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(out), "formatter": "json"}},
        "root": {"level": "INFO", "handlers": ["file"]},
    }
    with mplog.start_listener(config, route_parent=False) as listener:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MPLOG_", "CELERY_"))}
        env.update(
            MPLOG_ENDPOINT=listener.endpoint,
            BROKER_URL=broker_url,
            PYTHONPATH=os.pathsep.join([str(tmp_path), TESTS_DIR]),
        )
        worker_out = tmp_path / "worker.stdout"
        with worker_out.open("wb") as stdout, (tmp_path / "worker.stderr").open("wb") as stderr:
            worker = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "shop_tasks", "worker", "--pool=prefork", "--concurrency=2",
                 "--max-tasks-per-child=1", "--loglevel=INFO", "--without-gossip", "--without-mingle",
                 "--without-heartbeat", "-n", f"w{os.getpid()}@localhost"],
                cwd=tmp_path, env=env, stdout=stdout, stderr=stderr,
            )  # fmt: skip
        try:
            client = celery.Celery("client", broker=broker_url)
            try:
                ids = {client.send_task("shop.work", args=[n]).id: n for n in range(TASKS)}
            finally:
                client.close()

            def task_records() -> list[dict[str, object]]:
                lines = out.read_text(encoding="utf-8").splitlines() if out.exists() else []
                mine = ("shop.tasks", "celery.redirected")
                return [r for r in map(json.loads, lines) if r.get("task_id") in ids and r["name"] in mine]

            wait_for(lambda: len(task_records()) >= 2 * TASKS, timeout=60)
            worker.send_signal(signal.SIGTERM)  # warm shutdown
            assert worker.wait(30) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait(10)
        wait_for(
            lambda: all(s["closed"] for s in listener.stats()["senders"].values()),
            what="a goodbye from every Celery process",
        )
    stats = listener.stats()

    records = task_records()
    logged = [r for r in records if r["name"] == "shop.tasks"]
    printed = [r for r in records if r["name"] == "celery.redirected"]
    # Each task's own record, exactly once, carrying that task's id and name.
    assert sorted((r["task_id"], r["message"]) for r in logged) == sorted(
        (task_id, payload(1, n)) for task_id, n in ids.items()
    )
    assert {r["task_name"] for r in records} == {"shop.work"}
    # print() inside a task: exactly one record (WARNING, Celery's redirect level), none on stdout.
    assert sorted((r["task_id"], r["message"], r["levelname"]) for r in printed) == sorted(
        (task_id, payload(2, n), "WARNING") for task_id, n in ids.items()
    )
    assert "P2:" not in worker_out.read_text(encoding="utf-8", errors="replace")
    # max_tasks_per_child=1: every task ran in a fresh prefork child, and each child's last records arrived.
    assert len({r["process"] for r in logged}) == TASKS
    assert Counter(r["process"] for r in records) == Counter(dict.fromkeys({r["process"] for r in logged}, 2))
    assert stats["gaps"] == stats["dropped"] == stats["malformed_total"] == stats["duplicates"] == 0
    # Celery's own records came through too: outside a task with task_id null, inside with the task's.
    everything = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    # The workers asked the listener for its level (INFO): they shipped no record that it then threw away.
    assert stats["received"] == len(everything)
    assert any(r["name"].startswith("celery") and r["task_id"] is None for r in everything)
    succeeded = [r for r in everything if r["name"] == "celery.app.trace" and r["task_id"] in ids]
    assert sorted(r["task_id"] for r in succeeded) == sorted(ids)
