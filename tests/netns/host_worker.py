"""Run a worker inside a test host: `host_worker.py SPEC.json`.

SPEC: endpoint, producer, count, rate (records per second; 0 = flat out), options (for
setup_worker). Logs numbered payloads, closes, prints {"event": "closed", counters}.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import mplog


def main() -> int:
    spec = json.loads(sys.argv[1])
    handler = mplog.setup_worker(spec["endpoint"], **spec.get("options", {}))
    log = logging.getLogger("host")
    producer, rate = spec["producer"], spec.get("rate", 0)
    start = time.monotonic()
    for seq in range(spec["count"]):
        log.info("P%d:%08d:00000:", producer, seq)
        if rate:
            delay = start + (seq + 1) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    handler.close()
    print(json.dumps({"event": "closed", "counters": handler.counters}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
