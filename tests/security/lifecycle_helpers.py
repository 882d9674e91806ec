"""Helpers for the lifecycle tests of tests/security: CLI processes, short socket paths, phased workers.

Importable from the listener and worker processes these tests start (their PYTHONPATH
holds tests/ and tests/security/).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from helpers import payload, wait_for

HERE = str(Path(__file__).resolve().parent)
TESTS = str(Path(__file__).resolve().parents[1])

# A worker that knows nothing but the environment (MPLOG_ENDPOINT, MPLOG_ACK): it logs
# records [0, first) of producer argv[1], waits for a line on stdin, then logs [first, total).
PHASED_WORKER = """
import sys, mplog, lifecycle_helpers
mplog.setup_worker()
lifecycle_helpers.log_range(int(sys.argv[1]), 0, int(sys.argv[2]))
sys.stdin.readline()
lifecycle_helpers.log_range(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
"""


def log_range(producer: int, start: int, end: int) -> None:
    """Log the numbered payloads ``start`` .. ``end - 1`` of ``producer``."""
    log = logging.getLogger("test")
    for seq in range(start, end):
        log.info("%s", payload(producer, seq))


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for an ``mplog`` or worker process: no inherited MPLOG_*, these helpers importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPLOG_")}
    env["PYTHONPATH"] = os.pathsep.join([HERE, TESTS, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


@contextlib.contextmanager
def running(
    argv: list[str], stderr: Path, *, stdin: int | None = subprocess.DEVNULL, **env: str
) -> Iterator[subprocess.Popen[bytes]]:
    """A process whose stderr goes to a file; killed and reaped at the end, whatever the test did."""
    with stderr.open("wb") as err:
        proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.DEVNULL, stderr=err, env=cli_env(**env))
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stdin is not None:
            proc.stdin.close()


def listen_argv(config: Path, endpoint: str) -> list[str]:
    return [sys.executable, "-m", "mplog", "listen", "--config", str(config), "--bind", endpoint]


def wait_listening(stderr: Path, timeout: float = 30.0) -> None:
    """Until ``mplog listen`` says it is listening (fails after ``timeout``)."""
    wait_for(lambda: "listening on" in stderr.read_text(), timeout=timeout)


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(json.dumps(config))
    return path


@contextlib.contextmanager
def short_dir() -> Iterator[Path]:
    """A private directory with a short path (unix socket paths are limited to ~107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="mplog-sec-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def release(proc: subprocess.Popen[bytes]) -> None:
    """Let a :data:`PHASED_WORKER` go on to its second phase."""
    stdin: IO[bytes] | None = proc.stdin
    assert stdin is not None
    stdin.write(b"go\n")
    stdin.flush()
