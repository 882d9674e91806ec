"""Run a listener inside a test host: `host_listener.py CONFIG.json ENDPOINT`.

Prints JSON lines: {"event": "ready", "endpoint": ..., "pid": ...} (pid: the listener
process), then {"event": "stats"} for each "stats" line on stdin, and {"event":
"stopped", "stats": ...} after a "stop" line (or end of input).
"""

from __future__ import annotations

import json
import sys

import mplog


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as file:
        config = json.load(file)
    listener = mplog.start_listener(config, endpoint=sys.argv[2], route_parent=False, export_env=False)
    print(json.dumps({"event": "ready", "endpoint": listener.endpoint, "pid": listener.pid}), flush=True)
    for line in sys.stdin:
        if line.strip() == "stats":
            print(json.dumps({"event": "stats", "stats": listener.stats()}), flush=True)
        elif line.strip() == "stop":
            break
    print(json.dumps({"event": "stopped", "stats": listener.stop()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
