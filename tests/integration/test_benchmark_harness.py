"""The benchmark harness runs and its checker counts exactly (figures are never asserted)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.check import check_lines  # noqa: E402  # benchmarks/ lives at the repository root
from benchmarks.collector.collectors import RSYSLOGD  # noqa: E402
from benchmarks.collector.payload import check_output, line_text  # noqa: E402

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
    "system",
    ["stdlib-thread", "mplog-zmq", "mplog-zmq-nice", "mplog-zmq-ack", "ceiling-null", "ceiling-null-1", "shared-file"],
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
    call = r"^call +\d+\.\d+ us +\(null handler \d+\.\d+ us, \d+\.\d+x\); "
    call += r"thread CPU \d+\.\d+ us \(null \d+\.\d+ us, \d+\.\d+x\)$"
    assert re.search(call, proc.stdout, re.M)
    paired = r"^ +median of 1 paired rounds: \d+\.\d+x wall-clock, \d+\.\d+x thread CPU$"
    assert re.search(paired, proc.stdout, re.M)
    assert re.search(r"^listener +\d+\.\d+ us per record", proc.stdout, re.M)


@pytest.mark.timeout(300)  # four interpreter start-ups under valgrind: ~45 s idle, slower on a busy CI machine
def test_the_micro_benchmark_counts_the_calls_instructions_under_callgrind() -> None:
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed (apt-get install valgrind); .ci/run installs it")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "benchmarks.micro", "--repeats", "1", "--records", "500", "--frames", "1"]
    cmd.append("--instructions")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=280, check=False)
    assert proc.returncode == 0, proc.stderr
    found = re.search(r"^instructions +(\d+) per call \(null handler (\d+), (\d+\.\d+)x\)$", proc.stdout, re.M)
    assert found, proc.stdout
    call, null, ratio = int(found[1]), int(found[2]), float(found[3])
    # A logging call is tens of thousands of instructions; mplog's handler adds to it, never removes.
    assert 10_000 < null < call < 3 * null
    assert ratio == pytest.approx(call / null, abs=0.001)


def test_collector_checker_counts_lost_duplicated_and_malformed_lines_exactly(tmp_path: Path) -> None:
    good = [line_text(c, s, 40) for c in range(2) for s in range(50)]
    lines = [line for line in good if line != line_text(1, 7, 40)]  # one lost
    lines += [line_text(0, 3, 40)] * 2  # two duplicates of one record
    lines += [line_text(0, 5, 40)[:-1], "", "garbage", line_text(0, 9, 40).replace("x", "y")]  # four malformed
    lines += [line_text(2, 1, 40), line_text(0, 50, 40)]  # two nobody sent: malformed as well
    lines += [line_text(1, 0, 40)]  # (1, 0) again, after (1, 49): a duplicate, out of order
    path = tmp_path / "out.log"
    path.write_text("".join(f"{line}\n" for line in lines))
    verdict = check_output(path, [50, 50], 40)
    assert (verdict.lines, verdict.lost, verdict.duplicated, verdict.malformed) == (len(lines), 1, 3, 6)
    assert verdict.out_of_order == 2  # (0, 3) after (0, 49), and (1, 0) after (1, 49)
    assert not verdict.ok
    path.write_text("".join(f"{line}\n" for line in reversed(good)))
    assert check_output(path, [50, 50], 40).ok


def _collector_benchmark(args: list[str], output: Path) -> tuple[str, dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "benchmarks.collector", *args, "--repeats", "1", "--output", str(output)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=200, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout, json.loads(output.read_text())


def _assert_exact(run: dict[str, Any], lines: int, senders: int) -> None:
    assert run["complete"], run.get("error")
    assert (run["lines_found"], run["lost"], run["duplicated"], run["malformed"]) == (lines, 0, 0, 0)
    assert run["sender_exitcodes"] == [0] * senders
    assert run["collector_exit"] == 0
    assert run["cpu_s"] >= 0
    assert run["peak_rss_mib"] > 0
    if run["system"].startswith("mplog"):  # the listener's own ledger agrees with the file
        assert run["ledger"] == {
            "received": lines,
            "gaps": 0,
            "dropped": 0,
            "duplicates": 0,
            "malformed_total": 0,
            "refused": 0,
        }


@pytest.mark.timeout(240)
def test_the_collector_benchmark_accounts_for_every_line_of_rsyslog_mplog_tcp_and_curve(tmp_path: Path) -> None:
    if RSYSLOGD is None:
        pytest.skip("rsyslogd is not installed (apt-get install rsyslog); .ci/run installs it")
    stdout, report = _collector_benchmark(["--lines", "20000"], tmp_path / "collector.json")
    systems = report["comparison"]["systems"]
    assert list(systems) == ["rsyslog", "mplog-tcp", "mplog-curve"]
    for entry in systems.values():
        (run,) = entry["runs"]
        assert (run["connections"], run["per_frame"], run["length"]) == (4, 512, 120)
        _assert_exact(run, 20000, 4)
        assert entry["median"]["runs"] == 1
    for name in systems:
        assert re.search(rf"^{name} +\d+ +\d+\.\d\d +\d+\.\d\d .* 0/0/0$", stdout, re.M), stdout


@pytest.mark.timeout(240)
def test_the_collector_scaling_run_measures_every_cell_and_accounts_for_every_line(tmp_path: Path) -> None:
    args = ["--scaling", "--lines", "3000", "--connections", "1,16", "--frames", "1,32"]
    stdout, report = _collector_benchmark(args, tmp_path / "scaling.json")
    (section,) = report["scaling"]
    assert section["system"] == "mplog-tcp"
    cells = {(cell["connections"], cell["per_frame"]): cell for cell in section["cells"]}
    assert set(cells) == {(1, 1), (16, 1), (1, 32), (16, 32)}
    for (connections, _), cell in cells.items():
        (run,) = cell["runs"]
        _assert_exact(run, 3000, min(connections, 4))  # 16 connections share 4 sender processes
    assert re.search(r"^ +32 +\d+ \(\d+\.\d\d, \d+\) +\d+ \(", stdout, re.M), stdout


@pytest.mark.timeout(120)
@pytest.mark.skipif(
    RSYSLOGD is None or not Path("/usr/lib/x86_64-linux-gnu/rsyslog/imrelp.so").exists(),
    reason="needs rsyslogd with imrelp (.ci/run installs rsyslog and rsyslog-relp)",
)
def test_the_syslog_forwarding_benchmark_delivers_every_record_of_every_system(tmp_path: Path) -> None:
    output = tmp_path / "syslog.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "benchmarks.syslog_forward", "--records", "500", "--repeats", "1"]
    proc = subprocess.run(
        [*cmd, "--output", str(output)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=110, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]  # a system that lost a record fails the run
    results = json.loads(output.read_text())
    systems = {"null", "rfc5424-tcp", "relp", "stdlib-tcp"}
    assert set(results["end_to_end"]) == set(results["listener_cost_us"]) == systems
    for system in systems:
        assert re.search(rf"^{system} +[\d,]+ +\d+\.\d\d +\d+\.\d\d", proc.stdout, re.M), proc.stdout
