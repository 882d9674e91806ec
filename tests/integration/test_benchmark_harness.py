"""The benchmark harness runs and its checker counts exactly (figures are never asserted)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.check import check_lines  # noqa: E402  # benchmarks/ lives at the repository root

pytestmark = pytest.mark.integration

LINE = "2026-01-02 03:04:05,678 {pid} INFO bench request {i} handled in 1.234 ms user=alice"


def test_checker_counts_lost_duplicated_malformed_and_unexpected_lines_exactly() -> None:
    lines = [LINE.format(pid=10, i=i) for i in range(100) if i != 7]  # one lost
    lines += [LINE.format(pid=10, i=3), LINE.format(pid=10, i=3)]  # two duplicates of one record
    lines += [LINE.format(pid=10, i=5)[:-3], "", "garbage"]  # three malformed
    lines += [LINE.format(pid=99, i=1), LINE.format(pid=10, i=100)]  # two nobody logged
    verdict = check_lines(lines, {10: 100})
    assert (verdict.lost, verdict.duplicated, verdict.malformed, verdict.unexpected) == (1, 2, 3, 2)
    assert not verdict.ok
    assert check_lines([LINE.format(pid=4, i=i) for i in range(50)], {4: 50}).ok


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "system", ["stdlib-thread", "mplog-zmq", "mplog-zmq-nice", "mplog-zmq-ack", "ceiling-null", "ceiling-null-1"]
)
def test_driver_runs_a_system_end_to_end_and_checks_every_line(system: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("MPLOG_ENDPOINT", None)
    cmd = [sys.executable, "-m", "benchmarks.driver", "--system", system, "--producers", "2", "--records", "300"]
    proc = subprocess.run(
        [*cmd, "--dir", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=80, check=False
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["total_records"] == 600
    assert (result["lost"], result["duplicated"], result["malformed"]) == (0, 0, 0)
    assert result["lines"] == (0 if system.startswith("ceiling-null") else 600)
    # the one-process ceilings log all 600 records in one producer; ceiling-null runs the 2 producers
    assert result["producer_exitcodes"] == [0] * (1 if system == "ceiling-null-1" else 2)
    assert result["cpu_run_s"] >= 0  # measured before the output check, which is the harness's own work
    if system.startswith("mplog-zmq"):
        stats = dict(result["listener_stats"])
        assert stats.pop("yield")["held_frames"] == 0  # whatever was held was written before the stop returned
        assert stats == {"received": 600, "gaps": 0, "dropped": 0, "duplicates": 0, "malformed_total": 0}


@pytest.mark.timeout(60)
def test_the_in_process_micro_benchmark_runs_and_reports_both_hot_paths() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "benchmarks.micro", "--repeats", "1", "--records", "300", "--frames", "2"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=50, check=False)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^call +\d+\.\d+ us +\(null handler \d+\.\d+ us, \d+\.\d+x\)$", proc.stdout, re.M)
    assert re.search(r"^listener +\d+\.\d+ us per record", proc.stdout, re.M)
