"""Several collectors: a worker with several endpoints spreads its frames; the merged ledger balances."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import check_lines, file_config, read_lines, wait_for

import mplog
from mplog.listener.stats import merge_snapshots

pytestmark = pytest.mark.integration

# Logs in small bursts so that many frames are sent (a frame per flush), then waits for
# a line on stdin (if asked) before logging a second part, and closes.
WORKER = """
import json, logging, sys, time
import mplog
endpoint, producer, first, second = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
handler = mplog.setup_worker(endpoint, close_timeout=20, batch_records=100)
log = logging.getLogger("spread")
def part(start, stop):
    for seq in range(start, stop):
        log.info("P%d:%08d:00000:", producer, seq)
        if seq % 100 == 99:
            time.sleep(0.002)
part(0, first)
handler.flush_within(10)
print("half", flush=True)
if second:
    sys.stdin.readline()
    part(first, first + second)
handler.close()
print(json.dumps(handler.counters), flush=True)
"""


def start_worker(endpoint: str, producer: int, first: int, second: int = 0) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPLOG_")}
    args = [sys.executable, "-c", WORKER, endpoint, str(producer), str(first), str(second)]
    return subprocess.Popen(
        args, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def collector(path) -> mplog.Listener:
    return mplog.start_listener(file_config(path), endpoint="tcp://127.0.0.1:0", route_parent=False, export_env=False)


@pytest.mark.timeout(60)
def test_frames_spread_across_two_collectors_and_the_merged_ledger_balances_exactly(tmp_path):
    outs = [tmp_path / "a.log", tmp_path / "b.log"]
    with collector(outs[0]) as a, collector(outs[1]) as b:
        workers = [start_worker(f"{a.endpoint},{b.endpoint}", p, 6000) for p in range(2)]
        results = [finish(w) for w in workers]
        wait_for(lambda: sum(len(s.stats()["senders"]) for s in (a, b)) == 4, timeout=20)
        wait_for(lambda: merge_snapshots([a.stats(), b.stats()])["received"] == 12_000, timeout=20)
        snaps = [a.stats(), b.stats()]
    assert [r["dropped"] for r in results] == [0, 0]
    # Each collector got a share; on its own, each sees the other's frames as gaps.
    assert all(s["received"] > 1000 for s in snaps), [s["received"] for s in snaps]
    assert sum(s["gaps"] for s in snaps) > 0
    merged = merge_snapshots(snaps)
    assert merged["collectors"] == 2
    assert merged["received"] == 12_000
    assert merged["gaps"] == merged["dropped"] == merged["duplicates"] == 0
    assert len(merged["senders"]) == 2
    assert all(s["next_seq"] == 6000 and s["records"] == 6000 for s in merged["senders"].values())
    check_lines(read_lines(*outs), {0: 6000, 1: 6000}).assert_exact()


@pytest.mark.timeout(60)
def test_a_collector_stopped_mid_run_leaves_the_merged_ledger_exact(tmp_path):
    outs = [tmp_path / "a.log", tmp_path / "b.log"]
    with collector(outs[0]) as a:
        b = collector(outs[1])
        worker = start_worker(f"{a.endpoint},{b.endpoint}", 0, 4000, 4000)
        assert worker.stdout.readline().strip() == "half"
        final_b = b.stop()  # one collector goes away for good; the worker keeps logging
        worker.stdin.write("go\n")
        worker.stdin.flush()
        result = finish(worker)
        wait_for(lambda: any(s["closed"] for s in a.stats()["senders"].values()), timeout=20)
        final_a = a.stats()
    merged = merge_snapshots([final_a, final_b])
    sender = next(iter(merged["senders"].values()))
    assert final_b["received"] > 0 and final_a["received"] > 4000
    assert sender["next_seq"] == result["sent"]
    print(f"collector b stopped: a {final_a['received']}, b {final_b['received']}, lost {merged['gaps']}")
    # received + dropped + lost == logged, and what is lost is exactly what no file holds.
    assert merged["received"] + merged["dropped"] + merged["gaps"] == 8000
    check = check_lines(read_lines(*outs), {0: 8000})
    assert check.duplicates == check.truncated == check.garbage == 0
    assert sum(len(m) for m in check.missing.values()) == merged["gaps"] + merged["dropped"]
