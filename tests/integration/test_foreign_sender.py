"""A sender in another language, written from docs/wire-format.md alone (examples/node-sender/).

The Node.js program numbers its records, batches them into msgpack frames and sends them
over the ``mp://`` framing; the listener must write every record exactly once, with the
fields the program put in it, and account for the sender like any mplog worker. Its one
npm dependency (a msgpack library) is installed from the committed package-lock.json
into a cache folder the first time (``npm ci``), so the suite needs no set-up step.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from helpers import check_lines, payload

import mplog

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "node-sender"
COUNT = 3000
PRODUCER = 7


def node_modules() -> Path:
    """``node_modules`` for the example, installed with ``npm ci`` into a cache folder once per lock file."""
    lock = (EXAMPLE / "package-lock.json").read_bytes()
    digest = hashlib.sha256(lock + (EXAMPLE / "package.json").read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mplog-tests"
    target = cache / f"node-sender-{digest}"
    done = target / ".installed"
    if done.exists():
        return target / "node_modules"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"node-sender-{digest}.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)  # pytest-xdist workers install it once
        if not done.exists():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            for name in ("package.json", "package-lock.json"):
                shutil.copy(EXAMPLE / name, target / name)
            npm = shutil.which("npm")
            assert npm is not None, "npm is needed to install examples/node-sender's msgpack library"
            result = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
                cwd=target,
                capture_output=True,
                text=True,
                timeout=240,
                check=False,
            )
            assert result.returncode == 0, f"npm ci in {target} failed:\n{result.stdout}\n{result.stderr}"
            done.touch()
    return target / "node_modules"


def test_a_node_sender_written_from_the_spec_delivers_every_record_once_with_its_fields(tmp_path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed (the sender in another language is a Node.js program)")
    modules = node_modules()
    out = tmp_path / "out.jsonl"
    config = {
        "formatters": {"json": {"()": "mplog.formatters.JSONFormatter"}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(out), "formatter": "json"}},
        "root": {"level": "DEBUG", "handlers": ["file"]},
    }
    before = time.time()
    with mplog.start_listener(config, transport="multiprocessing", route_parent=False, export_env=False) as listener:
        assert listener.endpoint.startswith("mp://")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NODE_PATH": str(modules)}
        result = subprocess.run(
            [node, str(EXAMPLE / "sender.js"), listener.endpoint, str(COUNT), str(PRODUCER)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        sent = json.loads(result.stdout)
    after = time.time()
    stats = listener.stats()

    assert sent["sent"] == COUNT and sent["dropped"] == 0 and sent["host"] == socket.gethostname()
    key = f"{sent['host']}/{sent['pid']}/{sent['stream']:08x}"
    assert list(stats["senders"]) == [key]
    sender = stats["senders"][key]
    assert (sender["records"], sender["frames"], sender["closed"]) == (COUNT, sent["frames"] + 1, True)
    assert stats["received"] == COUNT
    for name in ("rejected", "dropped", "gaps", "duplicates", "malformed_total", "repaired_total"):
        assert stats[name] == 0, (name, stats)
    assert mplog.ledger(stats, COUNT) == 0

    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    check_lines([line["message"] for line in lines], {PRODUCER: COUNT}).assert_exact()
    for line in lines:
        seq = int(line["message"].split(":")[1])
        assert line["message"] == payload(PRODUCER, seq)
        error = seq % 250 == 249
        levelname = "ERROR" if error else "WARNING" if seq % 100 == 99 else "INFO"
        assert (line["name"], line["levelname"], line["levelno"]) == (
            "node.app",
            levelname,
            {"ERROR": 40, "WARNING": 30, "INFO": 20}[levelname],
        )
        assert before - 1 <= line["created"] <= after and 0 <= line["msecs"] < 1000
        assert (line["process"], line["processName"], line["hostname"]) == (sent["pid"], "node", sent["host"])
        assert (line["pathname"], line["filename"], line["module"]) == (
            str(EXAMPLE / "sender.js"),
            "sender.js",
            "sender",
        )
        assert line["lineno"] > 0 and line["funcName"] == "main" and line["thread"] is None and line["taskName"] is None
        assert line["request_id"] == f"r-{seq}" and line["attempt"] == seq % 3 and line["ratio"] == seq / 4 + 0.125
        assert line["tags"] == ["node", "even" if seq % 2 == 0 else "odd"]
        assert line["context"] == {"ok": seq % 5 != 0, "missing": None, "depth": {"level": 2}}
        assert line["digest"] == bytes([seq & 0xFF, 0, 0xFF]).decode("utf-8", "backslashreplace")
        assert line["runtime"].startswith("node v")
        if error:
            assert line["exc_traceback"].startswith(f"Error: job {seq} failed\n    at ")
        else:
            assert "exc_traceback" not in line
    assert sum(1 for line in lines if "exc_traceback" in line) == COUNT // 250
