"""Run inside a host whose ephemeral range is 40000-40003 with 40002 held: listeners on port 0.

Prints one JSON line: for each listener started on ``tcp://127.0.0.1:0``, its port and whether
its status channel (PORT+1) answered ``mplog status``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import mplog

HELD = 40002


def main() -> None:
    # This namespace's own ephemeral range (written here: no sysctl binary on a minimal PATH).
    with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as knob:
        knob.write("40000 40003")
    holder = socket.socket()
    holder.bind(("127.0.0.1", HELD))
    holder.listen()
    config = {"version": 1, "root": {"level": "INFO", "handlers": []}}
    seen = []
    for _ in range(int(sys.argv[1])):
        with mplog.start_listener(config, endpoint="tcp://127.0.0.1:0", route_parent=False, export_env=False) as lis:
            status = subprocess.run(
                [sys.executable, "-m", "mplog", "status", lis.endpoint, "--json", "--timeout", "2"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            seen.append({"endpoint": lis.endpoint, "status_rc": status.returncode})
    holder.close()
    print(json.dumps({"event": "done", "listeners": seen}), flush=True)


if __name__ == "__main__":
    main()
