"""concurrent.futures.ProcessPoolExecutor with spawn workers logging through mplog.

    python examples/executor.py [OUTPUT_DIR]

Spawn children start from a fresh interpreter and inherit no logging setup, so the
executor's ``initializer`` calls ``mplog.setup_worker`` in each. The endpoint reaches them
through ``MPLOG_ENDPOINT`` (and multiprocessing's per-process config). Prints one summary
line; exits 0 only if every record arrived exactly once.
"""

from __future__ import annotations

import logging
import multiprocessing
import re
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import mplog

TASKS = 40
RECORDS_PER_TASK = 100
log = logging.getLogger("example.executor")


def task(number: int) -> int:
    for step in range(RECORDS_PER_TASK):
        log.info("task %03d step %03d", number, step)
    return number


def main(directory: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "executor.log"
    config = {
        "formatters": {"line": {"format": "%(process)d %(name)s %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(path), "mode": "w", "formatter": "line"}},
        "root": {"level": "INFO", "handlers": ["file"]},
    }
    spawn = multiprocessing.get_context("spawn")
    with (
        mplog.start_listener(config, route_parent=False) as listener,
        ProcessPoolExecutor(4, mp_context=spawn, initializer=mplog.setup_worker) as executor,
    ):
        done = sorted(executor.map(task, range(TASKS)))
    text = path.read_text(encoding="utf-8")
    seen = sorted((int(m[1]), int(m[2])) for m in re.finditer(r"task (\d+) step (\d+)", text))
    expected = [(t, s) for t in range(TASKS) for s in range(RECORDS_PER_TASK)]
    ok = done == list(range(TASKS)) and seen == expected
    stats = listener.stats()
    print(
        f"executor example: {len(seen)}/{len(expected)} records arrived in {path} "
        f"from {len(stats['senders'])} spawn workers"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="mplog-executor-"))))
