"""The one benchmark command: every system, same scenario, side by side.

    python -m benchmarks.run            # the full run (see docs/benchmarks.md)
    python -m benchmarks.run --quick    # a fast look: small M, one repeat

Each measurement runs in a fresh ``benchmarks.driver`` process; systems are interleaved
within each repeat so that noise from the machine spreads over all of them, and the
table shows medians. CPU per record is the CPU of every process involved (from the
driver's reaped-children usage, minus what was spent before the start signal).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.systems import REFERENCE, REGISTRY

RESULTS = Path(__file__).parent / "results" / "latest.json"
DEFAULT_SCENARIOS = ("2:fork", "2:spawn", "4:fork")
METRICS = (
    "records_per_s",
    "call_us",
    "producer_cpu_us",
    "thread_cpu_us",
    "cpu_us_per_record",
    "consumer_peak_mib",
    "seconds",
    "producers_done_s",
    "stop_s",
)


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import msgpack
    import zmq

    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "msgpack": ".".join(map(str, msgpack.version)),
        "loadavg_at_start": os.getloadavg(),
    }


def measure(system: str, producers: int, records: int, method: str, timeout: float) -> dict[str, Any]:
    """Run one driver process; add the CPU of every process it reaped."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory(prefix="mplog-bench-") as tmp:
        cmd = [sys.executable, "-m", "benchmarks.driver", "--system", system, "--producers", str(producers)]
        cmd += ["--records", str(records), "--method", method, "--dir", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0 or not proc.stdout.strip():
        return {"system": system, "error": (proc.stderr or proc.stdout)[-2000:]}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skipped" in result:
        return result
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result["cpu_total_s"] = cpu
    result["cpu_us_per_record"] = 1e6 * max(result["cpu_run_s"], 0.0) / result["total_records"]
    if proc.stderr.strip():
        result["stderr"] = proc.stderr[-1000:]
    return result


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in runs if "error" not in r and "skipped" not in r]
    if not good:
        return {"error": runs[0].get("error") or runs[0].get("skipped")} if runs else {}
    median = {m: statistics.median(r[m] for r in good) for m in METRICS}
    median["records_per_s_min"] = min(r["records_per_s"] for r in good)
    median["records_per_s_max"] = max(r["records_per_s"] for r in good)
    for key in ("lost", "duplicated", "malformed"):
        median[key] = sum(r[key] for r in good)  # totals over every run: any non-zero is a failure
    median["runs"] = len(good)
    median["failed_runs"] = len(runs) - len(good)
    return median


def table(scenario: dict[str, Any]) -> str:
    systems = scenario["systems"]
    ref = systems.get(REFERENCE, {}).get("median", {})
    null = systems.get("ceiling-null", {}).get("median", {})
    head = (
        f"{'system':<24} {'rec/s':>9} {'x stdlib':>8} {'us/call':>8} {'x null':>7} {'cpu/call':>8} {'x null':>7} "
        f"{'thr/call':>8} {'x null':>7} "
        f"{'cpu us/rec':>10} {'x stdlib':>8} {'stop s':>6} {'consumer MiB':>12} {'lost/dup/bad':>13}"
    )
    lines = [
        f"P={scenario['producers']} producers x M={scenario['records']} records, start method {scenario['method']}, "
        f"median of {scenario['repeats']} runs",
        head,
        "-" * len(head),
    ]

    def ratio(value: float, base: float | None) -> str:
        return f"{value / base:.2f}" if base else "-"

    for name in REGISTRY:
        med = systems.get(name, {}).get("median", {})
        if not med:
            continue
        if "error" in med:
            lines.append(f"{name:<24} {str(med['error']).splitlines()[-1][:90]}")
            continue
        checked = f"{med['lost']}/{med['duplicated']}/{med['malformed']}"
        thread = med.get("thread_cpu_us", 0.0)  # absent from results written before it was measured
        lines.append(
            f"{name:<24} {med['records_per_s']:>9.0f} {ratio(med['records_per_s'], ref.get('records_per_s')):>8} "
            f"{med['call_us']:>8.2f} {ratio(med['call_us'], null.get('call_us')):>7} "
            f"{med['producer_cpu_us']:>8.2f} {ratio(med['producer_cpu_us'], null.get('producer_cpu_us')):>7} "
            f"{thread:>8.2f} {ratio(thread, null.get('thread_cpu_us')):>7} "
            f"{med['cpu_us_per_record']:>10.2f} {ratio(med['cpu_us_per_record'], ref.get('cpu_us_per_record')):>8} "
            f"{med['stop_s']:>6.2f} "
            f"{med['consumer_peak_mib']:>12.1f} {checked:>13}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=50_000, help="records per producer (M)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--scenario",
        action="append",
        help=f"PRODUCERS:METHOD, repeatable (default: {' '.join(DEFAULT_SCENARIOS)})",
    )
    parser.add_argument("--systems", default=",".join(REGISTRY), help="comma-separated subset")
    parser.add_argument("--quick", action="store_true", help="M=5000, one repeat, scenario 2:fork")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one measurement may take")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    args = parser.parse_args(argv)
    if args.quick:
        args.records, args.repeats = 5_000, 1
        args.scenario = args.scenario or ["2:fork"]
    scenarios = args.scenario or list(DEFAULT_SCENARIOS)
    systems = [s for s in args.systems.split(",") if s]
    unknown = [s for s in systems if s not in REGISTRY]
    if unknown:
        parser.error(f"unknown system {unknown[0]!r}; known: {', '.join(REGISTRY)}")
    report: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.run", *(argv if argv is not None else sys.argv[1:])]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "scenarios": [],
    }
    for spec in scenarios:
        producers_text, _, method = spec.partition(":")
        producers, method = int(producers_text), method or "fork"
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
        for repeat in range(args.repeats):
            for system in systems:
                result = measure(system, producers, args.records, method, args.timeout)
                runs[system].append(result)
                if "skipped" in result:
                    continue
                rate = result.get("records_per_s")
                shown = f"{rate:>9.0f} rec/s" if rate else f"ERROR {str(result.get('error', ''))[-300:]}"
                print(f"  [{spec} run {repeat + 1}/{args.repeats}] {system:<24} {shown}", file=sys.stderr, flush=True)
        scenario = {
            "producers": producers,
            "records": args.records,
            "method": method,
            "repeats": args.repeats,
            "systems": {s: {"median": summarise(r), "runs": r} for s, r in runs.items() if r},
        }
        # a system that does not support this start method is left out of the table
        scenario["systems"] = {
            s: v for s, v in scenario["systems"].items() if not all("skipped" in r for r in v["runs"])
        }
        report["scenarios"].append(scenario)
        print(table(scenario) + "\n", flush=True)
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print(f"results written to {args.output}")
    failures = sum(
        med.get("lost", 0) + med.get("duplicated", 0) + med.get("malformed", 0)
        for sc in report["scenarios"]
        for med in (v["median"] for v in sc["systems"].values())
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
