"""Plain multiprocessing.Process children that configure themselves with setup_worker().

    python examples/process.py [OUTPUT_DIR]

A child's target calls ``mplog.setup_worker()`` before logging. Under every start method
(fork, spawn, forkserver) it finds the listener on its own. When the target returns,
multiprocessing runs its exit finalizers and mplog delivers the last batch there.
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

RECORDS = 1_000


def child(name: str) -> None:
    mplog.setup_worker()  # first thing in the child: one mplog handler on the root logger
    log = logging.getLogger(f"example.{name}")
    for number in range(RECORDS):
        log.info("record %04d", number)


def main(directory: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "process.log"
    config = {
        "formatters": {"line": {"format": "%(name)s %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(path), "mode": "w", "formatter": "line"}},
        "root": {"level": "INFO", "handlers": ["file"]},
    }
    methods = multiprocessing.get_all_start_methods()  # e.g. fork, spawn, forkserver on Linux
    with mplog.start_listener(config, route_parent=False):
        children = [multiprocessing.get_context(m).Process(target=child, args=(m,)) for m in methods]
        for proc in children:
            proc.start()
        for proc in children:
            proc.join()
    text = path.read_text(encoding="utf-8")
    seen = sorted((m[1], int(m[2])) for m in re.finditer(r"example\.(\w+) record (\d+)", text))
    expected = sorted((m, n) for m in methods for n in range(RECORDS))
    ok = seen == expected and all(proc.exitcode == 0 for proc in children)
    print(f"process example: {len(seen)}/{len(expected)} records arrived in {path} from {', '.join(methods)} children")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="mplog-process-"))))
