"""A multiprocessing.Pool whose workers log through one listener into one file.

    python examples/pool.py [OUTPUT_DIR]

``initializer=mplog.setup_worker`` configures each worker: with no argument it finds
the listener through ``MPLOG_ENDPOINT``, which ``start_listener`` exports. Leaving the
``with Pool`` block terminates the workers with SIGTERM; mplog sends what they still
buffer first, and leaving the listener's ``with`` block returns once all of it is written.
Prints one summary line; exits 0 only if every record arrived exactly once.
"""

from __future__ import annotations

import logging
import multiprocessing
import re
import sys
import tempfile
from pathlib import Path

import mplog

JOBS = 4_000
log = logging.getLogger("example.pool")


def work(job: int) -> int:
    log.info("job %05d done", job)  # plain logging: nothing mplog-specific in the task
    return job


def main(directory: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "pool.log"
    config = {  # the dictConfig schema, applied in the listener process
        "formatters": {"line": {"format": "%(asctime)s %(processName)s %(levelname)s %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(path), "mode": "w", "formatter": "line"}},
        "root": {"level": "INFO", "handlers": ["file"]},
    }
    # The pool is left first (its workers flush as they are terminated), then the listener
    # (stop() drains and returns once every record is written).
    with mplog.start_listener(config) as listener, multiprocessing.Pool(4, initializer=mplog.setup_worker) as pool:
        pool.map(work, range(JOBS), chunksize=100)
    jobs = [int(m[1]) for m in re.finditer(r"job (\d+) done", path.read_text(encoding="utf-8"))]
    ok = sorted(jobs) == list(range(JOBS))
    stats = listener.stats()
    print(
        f"pool example: {len(jobs)}/{JOBS} records arrived in {path} "
        f"(received {stats['received']}, gaps {stats['gaps']})"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="mplog-pool-"))))
