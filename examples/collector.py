"""A standalone collector (``mplog listen``) and unrelated worker programs that reach it.

    python examples/collector.py [OUTPUT_DIR]

The collector could run on another host or under a service manager; here it is started
with subprocess. The workers are separate programs that know nothing but
``MPLOG_ENDPOINT``: ``mplog.setup_worker()`` reads it. SIGTERM makes the collector write
what it has received and exit 0. Prints one summary line; exits 0 only if every record
arrived exactly once.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

WORKERS = 3
RECORDS = 1_000

# What each worker program runs; in real life, the top of any script or service.
WORKER = """
import logging, sys
import mplog

mplog.setup_worker()  # the endpoint comes from $MPLOG_ENDPOINT
log = logging.getLogger("example.collector")
for number in range(int(sys.argv[2])):
    log.info("worker %s record %04d", sys.argv[1], number)
"""


def main(directory: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "collector.log"
    config = directory / "collector.json"  # any dictConfig file: .toml, .json or .yaml
    config.write_text(
        json.dumps(
            {
                "formatters": {"line": {"format": "%(hostname)s %(process)d %(message)s"}},
                "handlers": {"file": {"class": "logging.FileHandler", "filename": str(path), "formatter": "line"}},
                "root": {"level": "INFO", "handlers": ["file"]},
            }
        )
    )
    collector = subprocess.Popen(
        # tcp on loopback, port chosen by the system; the collector prints the one it bound
        [sys.executable, "-m", "mplog", "listen", "--config", str(config), "--bind", "tcp://127.0.0.1:*"],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert collector.stderr is not None
    try:
        endpoint = ""
        for line in collector.stderr:  # "mplog: listening on tcp://127.0.0.1:PORT"
            if "listening on" in line:
                endpoint = line.split()[-1]
                break
        env = dict(os.environ, MPLOG_ENDPOINT=endpoint)
        workers = [
            subprocess.Popen([sys.executable, "-c", WORKER, str(n), str(RECORDS)], env=env) for n in range(WORKERS)
        ]
        codes = [worker.wait(60) for worker in workers]
        collector.send_signal(signal.SIGTERM)  # drain, close the handlers, exit 0
        collector_code = collector.wait(30)
        summary = (collector.stderr.read().strip().splitlines() or [""])[-1]  # "mplog: stopped; received ..."
    finally:
        if collector.poll() is None:
            collector.kill()
            collector.wait()
    text = path.read_text(encoding="utf-8")
    seen = sorted((int(m[1]), int(m[2])) for m in re.finditer(r"worker (\d+) record (\d+)", text))
    expected = [(w, n) for w in range(WORKERS) for n in range(RECORDS)]
    ok = seen == expected and codes == [0] * WORKERS and collector_code == 0
    print(f"collector example: {len(seen)}/{len(expected)} records arrived in {path} via {endpoint} ({summary})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="mplog-collector-"))))
