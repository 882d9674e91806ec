"""Test helpers: numbered payloads, file configs, the ledger checker, bounded waits.

Importable from spawn/forkserver children (tests/ is on sys.path via conftest and PYTHONPATH).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import re
import subprocess
import sys
import sysconfig
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PAYLOAD_RE = re.compile(r"P(?P<prod>\d+):(?P<seq>\d{8}):(?P<len>\d{5}):(?P<body>X*)")


def payload(producer: int, seq: int, size: int = 0) -> str:
    """A numbered payload whose length field detects truncation (rsyslog msgnum style)."""
    return f"P{producer}:{seq:08d}:{size:05d}:{'X' * size}"


def file_config(path: str | Path, fmt: str = "%(message)s", level: str = "DEBUG", **handler: Any) -> dict[str, Any]:
    """A dictConfig with one FileHandler writing ``fmt`` lines to ``path``."""
    spec = {"class": "logging.FileHandler", "filename": str(path), "formatter": "f", "encoding": "utf-8"}
    spec.update(handler)
    return {
        "version": 1,
        "formatters": {"f": {"format": fmt}},
        "handlers": {"file": spec},
        "root": {"level": level, "handlers": ["file"]},
    }


def log_numbered(producer: int, count: int, size: int = 0, logger: str = "test") -> None:
    """Log ``count`` numbered payloads (for use as a process target)."""
    log = logging.getLogger(logger)
    for seq in range(count):
        log.info("%s", payload(producer, seq, size))


@dataclass
class Check:
    """What a checker found in an output: exact sets, not estimates."""

    seen: Counter[tuple[int, int]] = field(default_factory=Counter)
    missing: dict[int, list[int]] = field(default_factory=dict)
    duplicates: int = 0
    truncated: int = 0
    garbage: int = 0

    @property
    def ok(self) -> bool:
        return not self.missing and not self.duplicates and not self.truncated and not self.garbage

    def assert_exact(self) -> None:
        summary = {p: len(s) for p, s in self.missing.items()}
        assert self.ok, (
            f"missing per producer {summary}, duplicates {self.duplicates}, "
            f"truncated {self.truncated}, garbage {self.garbage}"
        )


def check_lines(lines: Iterable[str], expected: dict[int, int]) -> Check:
    """Compare numbered payloads found in ``lines`` with ``expected`` (producer -> count)."""
    result = Check()
    for line in lines:
        match = PAYLOAD_RE.search(line)
        if match is None:
            result.garbage += 1
            continue
        if int(match["len"]) != len(match["body"]):
            result.truncated += 1
            continue
        result.seen[(int(match["prod"]), int(match["seq"]))] += 1
    result.duplicates = sum(n - 1 for n in result.seen.values() if n > 1)
    for producer, count in expected.items():
        missing = [seq for seq in range(count) if (producer, seq) not in result.seen]
        if missing:
            result.missing[producer] = missing
    return result


def read_lines(*paths: str | Path) -> list[str]:
    lines: list[str] = []
    for path in paths:
        p = Path(path)
        if p.exists():
            lines.extend(p.read_text(encoding="utf-8").splitlines())
    return lines


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> Any:
    """Poll ``predicate`` until it is truthy and return its value; fail after ``timeout`` seconds.

    The failure names what was awaited: ``what``, or else the predicate's source line.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {what or _source(predicate)}")
        time.sleep(interval)  # the poll interval of this bounded wait


def _source(predicate: Callable[[], Any]) -> str:
    try:
        return inspect.getsource(predicate).strip()
    except (OSError, TypeError):  # a builtin, or code typed into python -c
        return repr(predicate)


def mount_tmpfs(where: Path, size: str, options: str = "") -> None:
    """Mount a tmpfs of ``size`` at ``where`` (created here); skip the test where that cannot be done (not root).

    Pair with :func:`umount` in a ``finally``.
    """
    import pytest  # only tests mount; workers that import these helpers do not need pytest

    where.mkdir()
    opts = f"size={size}" + (f",{options}" if options else "")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.decode().strip()}")


def umount(where: Path) -> None:
    """Unmount what :func:`mount_tmpfs` mounted (lazily: a process that still holds a file there lets go later)."""
    subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def fill(directory: Path) -> None:
    """Fill the file system of ``directory`` until it has no data block left (one file, ``filler``)."""
    block = b"\0" * 4096
    with (directory / "filler").open("wb", buffering=0) as f:
        try:
            while f.write(block):
                pass
        except OSError:  # ENOSPC: full
            pass


def console_script(name: str = "mplog") -> str:
    """This interpreter's own ``mplog`` console script, never one found on ``PATH``.

    A bare ``mplog`` runs whatever ``PATH`` holds first: nothing on a fresh machine whose
    virtual environment is not activated (the README runs ``.venv/bin/python -m pytest``),
    or another checkout's copy on a machine used before.
    """
    for directory in (os.path.dirname(sys.executable), sysconfig.get_path("scripts")):
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK):
            return path
    raise AssertionError(
        f"no {name!r} console script beside {sys.executable} or in {sysconfig.get_path('scripts')}; "
        "install mplog into this interpreter's environment (pip install -e .)"
    )


class CaptureTransport:
    """A worker transport that keeps every frame it is given (set as a handler's ``_transport``)."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send(self, frame: bytes, timeout: float = 0.0) -> bool:
        self.frames.append(frame)
        return True

    def close(self, linger: float | None = None) -> None:
        pass


@contextlib.contextmanager
def running_listen(config: Path, endpoint: str, stderr: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """``mplog listen --config CONFIG --bind ENDPOINT`` with its stderr in a file, until it says it listens.

    Fails (naming its exit code and stderr) if it exits first; killed and reaped at the end.
    """
    argv = [sys.executable, "-m", "mplog", "listen", "--config", str(config), "--bind", endpoint]
    with stderr.open("wb") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env)
    try:
        wait_for(lambda: "listening on" in stderr.read_text() or proc.poll() is not None, timeout=30)
        assert proc.poll() is None, f"exit {proc.returncode}: {stderr.read_text()}"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
