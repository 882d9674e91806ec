"""``mplog demo``: a listener, a spawn Pool of workers, a rotating log file, a summary."""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any, TextIO

from mplog.handle import start_listener
from mplog.worker import setup_worker

__all__ = ["run_demo"]

_log = logging.getLogger("mplog.demo")


def _job(i: int) -> int:
    _log.info("job %06d done in %.3f ms", i, (i % 97) / 10)
    if i % 5000 == 4999:
        _log.warning("job %06d was slow", i)
    return i


def _config(directory: Path) -> dict[str, Any]:
    return {
        "formatters": {
            "line": {"format": "%(asctime)s %(processName)s[%(process)d] %(levelname)s %(name)s: %(message)s"}
        },
        "handlers": {
            "file": {
                "class": "logging.handlers.RotatingFileHandler",
                "filename": str(directory / "demo.log"),
                "maxBytes": 256 * 1024,
                "backupCount": 50,
                "encoding": "utf-8",
                "formatter": "line",
            }
        },
        "root": {"level": "INFO", "handlers": ["file"]},
    }


def run_demo(directory: str = "mplog-demo", workers: int = 4, jobs: int = 20_000, out: TextIO | None = None) -> int:
    """Run the demo and print its summary; returns 0 when every record is in the files."""
    write = (out.write if out else print) if out else print
    target = Path(directory).resolve()
    target.mkdir(parents=True, exist_ok=True)
    for old in target.glob("demo.log*"):
        old.unlink()
    started = time.perf_counter()
    with start_listener(_config(target), route_parent=False) as listener:
        context = multiprocessing.get_context("spawn")
        with context.Pool(workers, initializer=setup_worker) as pool:
            pool.map(_job, range(jobs), chunksize=250)
    stats = listener.stats()
    elapsed = time.perf_counter() - started
    expected = jobs + jobs // 5000
    files = sorted(target.glob("demo.log*"), key=lambda p: (len(p.name), p.name))
    lines = 0
    write(f"mplog demo: {workers} spawn workers logged {expected} records in {elapsed:.2f} s")
    write(f"  listener endpoint: {stats.get('endpoint')}")
    write("  records received per worker process:")
    for sender in sorted(stats.get("senders", {}).values(), key=lambda s: s["pid"]):
        write(f"    pid {sender['pid']:>7}  {sender['records']:>7} records  ({sender['frames']} frames)")
    write(f"  files written under {target}{os.sep}:")
    for path in files:
        with path.open("rb") as handle:
            count = sum(1 for _ in handle)
        lines += count
        write(f"    {path.name:<14} {path.stat().st_size:>9} bytes {count:>7} lines")
    write(
        f"  received {stats.get('received', 0)}, malformed {stats.get('malformed_total', 0)}, "
        f"gaps {stats.get('gaps', 0)}, dropped {stats.get('dropped', 0)}, lines in files {lines}"
    )
    ok = lines == expected == stats.get("received")
    write("  every record arrived exactly once" if ok else f"  MISMATCH: expected {expected} lines")
    return 0 if ok else 1
