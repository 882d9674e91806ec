"""The collector benchmark: how fast one collector takes lines from remote senders into one file.

    python -m benchmarks.collector                 # rsyslog, mplog-tcp, mplog-curve; 2,000,000 lines, 3 repeats
    python -m benchmarks.collector --quick         # a look: 20,000 lines, one repeat
    python -m benchmarks.collector --scaling       # mplog-tcp: connections 1, 4, 16, 64 x frames of 1, 32, 512

A measurement starts the collector fresh (rsyslogd with imtcp -> omfile, or ``mplog listen``
over tcp:// plaintext or CURVE), starts the sender processes, which build their payloads,
connect and wait; the clock runs from "go" until the file holds every line (its size is
polled), then the senders disconnect, the collector is stopped and every line is checked:
each (connection, seq) exactly once. The collector's CPU time (every thread) and peak RSS
(VmHWM) are read when the file is complete. Systems are interleaved within each repeat and
the table shows medians. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.collector import collectors
from benchmarks.collector.collectors import (
    EXTRA_SYSTEMS,
    REFERENCE,
    SYSTEMS,
    Collector,
    make_keys,
    start_collector,
    wire_version,
)
from benchmarks.collector.payload import MAX_CONNECTIONS, MIN_LENGTH, check_output, split_lines
from benchmarks.collector.senders import sender_main
from benchmarks.run import machine

RESULTS = Path(__file__).resolve().parents[1] / "results"
POLL_INTERVAL = 0.002  # seconds between two looks at the file's size: the clock's resolution
STALL_TIMEOUT = 60.0  # seconds without the file growing before a run is given up
METRICS = (
    "records_per_s",
    "cpu_us_per_record",
    "collector_cpus",
    "peak_rss_mib",
    "sender_cpu_us_per_record",
    "seconds",
    "send_seconds",
)


def _wait_file(collector: Collector, expected: int, timeout: float) -> int:
    """Poll the file until it holds ``expected`` bytes; returns its size (less when it stalled)."""
    deadline = time.monotonic() + timeout
    size, grew = 0, time.monotonic()
    while size < expected:
        time.sleep(POLL_INTERVAL)
        try:
            now_size = collector.out.stat().st_size
        except FileNotFoundError:
            now_size = 0
        now = time.monotonic()
        if now_size != size:
            size, grew = now_size, now
        elif now - grew > STALL_TIMEOUT or now > deadline or collector.proc.poll() is not None:
            break
    return size


def measure(
    system: str,
    *,
    lines: int,
    connections: int,
    processes: int,
    per_frame: int,
    length: int,
    workdir: Path,
    keys: Path,
    timeout: float,
) -> dict[str, Any]:
    """One run of one system: start it, feed it, time it, stop it, check every line."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"{system}-", dir=workdir))
    counts = split_lines(lines, connections)
    processes = min(processes, connections)
    result: dict[str, Any] = {"system": system, "lines": lines, "connections": connections}
    result.update(processes=processes, per_frame=per_frame, length=length)
    try:
        collector = start_collector(system, run_dir, keys)
    except (OSError, RuntimeError) as exc:
        return {**result, "error": str(exc)}
    ctx = multiprocessing.get_context("spawn")
    ready, go, done = ctx.Semaphore(0), ctx.Event(), ctx.Event()
    procs = []
    try:
        for k in range(processes):
            spec = {
                "system": "rsyslog" if system == "rsyslog" else "mplog",
                "address": collector.address,
                "connections": [[c, counts[c]] for c in range(k, connections, processes)],
                "length": length,
                "per_frame": per_frame,
                "wire_version": wire_version(system),
                "hold": timeout,
                **collector.sender_keys,
            }
            if collector.sender_keys:
                spec["secret_key"] = str(keys / "authorized" / f"sender{k}.key_secret")
            report = run_dir / f"sender-{k}.json"
            proc = ctx.Process(target=sender_main, args=(spec, ready, go, done, str(report)), name=f"sender-{k}")
            proc.start()
            procs.append(proc)
        waiting = len(procs)
        deadline = time.monotonic() + timeout
        while waiting:
            if ready.acquire(timeout=0.5):
                waiting -= 1
            elif any(p.exitcode is not None for p in procs) or time.monotonic() > deadline:
                return {**result, "error": f"a sender failed to connect (exit codes {[p.exitcode for p in procs]})"}
        expected = lines * (length + 1)
        cpu0 = collector.cpu_seconds()
        t0 = time.perf_counter()
        go.set()
        size = _wait_file(collector, expected, timeout)
        elapsed = time.perf_counter() - t0
        died = collector.proc.poll()
        cpu = collector.cpu_seconds() - cpu0
        result.update(
            seconds=elapsed,
            records_per_s=lines / elapsed,
            cpu_s=cpu,
            cpu_us_per_record=1e6 * cpu / lines,
            collector_cpus=cpu / elapsed,  # 1.0: one CPU busy all along
            peak_rss_mib=collector.peak_rss_kib() / 1024,
            threads=collector.threads(),
            complete=size >= expected,
        )
        if size >= expected:
            try:
                result["ledger"] = collector.ledger()
            except Exception as exc:  # the figures stand without it; the line check below is the proof
                result["ledger"] = {"error": str(exc)}
    finally:
        done.set()
        for proc in procs:
            proc.join(30)
            if proc.exitcode is None:
                proc.kill()
                proc.join(10)
        exit_code = collector.stop()
    reports = [json.loads(p.read_text()) for p in sorted(run_dir.glob("sender-*.json"))]
    verdict = check_output(collector.out, counts, length) if collector.out.exists() else None
    result.update(
        collector_exit=exit_code,
        sender_exitcodes=[p.exitcode for p in procs],
        send_seconds=max((r["seconds"] for r in reports), default=0.0),
        sender_cpu_us_per_record=1e6 * sum(r["cpu"] for r in reports) / lines,
        lines_found=verdict.lines if verdict else 0,
        lost=verdict.lost if verdict else lines,
        duplicated=verdict.duplicated if verdict else 0,
        malformed=verdict.malformed if verdict else 0,
        out_of_order=verdict.out_of_order if verdict else 0,
        bad_samples=verdict.samples if verdict else [],
    )
    if not result["complete"]:
        why = f"the collector exited ({died})" if died is not None else "the file stopped growing"
        result["error"] = f"{why} at {size} of {expected} bytes: {collector.errors()[-500:]}"
    collector.out.unlink(missing_ok=True)  # up to a few hundred MB per run
    return result


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in runs if "error" not in r]
    if not good:
        return {"error": runs[0]["error"]} if runs else {}
    median: dict[str, Any] = {m: statistics.median(r[m] for r in good) for m in METRICS}
    median["records_per_s_min"] = min(r["records_per_s"] for r in good)
    median["records_per_s_max"] = max(r["records_per_s"] for r in good)
    for key in ("lost", "duplicated", "malformed"):
        median[key] = sum(r[key] for r in runs)  # totals over every run: any non-zero is a failure
    median["runs"] = len(good)
    median["failed_runs"] = len(runs) - len(good)
    return median


def _ratio(value: float, base: float | None) -> str:
    return f"{value / base:.2f}" if base else "-"


def comparison_table(section: dict[str, Any]) -> str:
    systems = section["systems"]
    ref = systems.get(REFERENCE, {}).get("median", {})
    head = (
        f"{'system':<14} {'rec/s':>9} {'x rsyslog':>9} {'cpu us/rec':>10} {'x rsyslog':>9} {'CPUs':>5} "
        f"{'peak MiB':>8} {'x rsyslog':>9} {'sender us/rec':>13} {'seconds':>7} {'lost/dup/bad':>12}"
    )
    lines = [
        f"collector ingest: {section['connections']} senders, {section['lines']} lines of {section['length']} bytes "
        f"in all, mplog frames of {section['per_frame']} records, median of {section['repeats']} runs",
        head,
        "-" * len(head),
    ]
    for name, entry in systems.items():
        med = entry["median"]
        if "error" in med:
            lines.append(f"{name:<14} {str(med['error']).splitlines()[-1][:100]}")
            continue
        checked = f"{med['lost']}/{med['duplicated']}/{med['malformed']}"
        lines.append(
            f"{name:<14} {med['records_per_s']:>9.0f} {_ratio(med['records_per_s'], ref.get('records_per_s')):>9} "
            f"{med['cpu_us_per_record']:>10.2f} {_ratio(med['cpu_us_per_record'], ref.get('cpu_us_per_record')):>9} "
            f"{med['collector_cpus']:>5.2f} {med['peak_rss_mib']:>8.1f} "
            f"{_ratio(med['peak_rss_mib'], ref.get('peak_rss_mib')):>9} {med['sender_cpu_us_per_record']:>13.2f} "
            f"{med['seconds']:>7.2f} {checked:>12}"
        )
    return "\n".join(lines)


def scaling_table(section: dict[str, Any]) -> str:
    cells = {(c["connections"], c["per_frame"]): c["median"] for c in section["cells"]}
    conns, frames = section["connections"], section["frames"]
    lines = [
        f"scaling: {section['system']}, {section['lines']} lines of {section['length']} bytes, senders in "
        f"at most {section['processes']} processes, median of {section['repeats']} runs",
        "records/s (collector CPU us per record, peak RSS MiB) by frame size (records) and connections",
    ]
    head = f"{'frame':>6} " + " ".join(f"{f'{c} conn':>24}" for c in conns)
    lines += [head, "-" * len(head)]
    for frame in frames:
        row = []
        for conn in conns:
            med = cells.get((conn, frame), {})
            if not med or "error" in med:
                row.append(f"{'error':>24}")
                continue
            bad = "" if not (med["lost"] or med["duplicated"] or med["malformed"]) else " BAD"
            row.append(f"{med['records_per_s']:>9.0f} ({med['cpu_us_per_record']:.2f}, {med['peak_rss_mib']:.0f}){bad}")
            row[-1] = f"{row[-1]:>24}"
        lines.append(f"{frame:>6} " + " ".join(row))
    return "\n".join(lines)


def _log(label: str, result: dict[str, Any]) -> None:
    rate = result.get("records_per_s")
    shown = f"{rate:>9.0f} rec/s" if "error" not in result else f"ERROR {str(result['error'])[-300:]}"
    print(f"  [{label}] {result['system']:<12} {shown}", file=sys.stderr, flush=True)


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.collector", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=2_000_000, help="lines in all, over every sender (N)")
    parser.add_argument("--senders", type=int, default=4, help="sender processes (and connections)")
    parser.add_argument("--frame", type=int, default=512, help="records per mplog frame (and per rsyslog sendall)")
    parser.add_argument("--length", type=int, default=120, help=f"bytes per line, newline excluded (>= {MIN_LENGTH})")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--systems",
        help=f"comma-separated, of {','.join(SYSTEMS + EXTRA_SYSTEMS)} (default: the first 3; --scaling: mplog-tcp)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a checkout of mplog to compare with: adds baseline-tcp and baseline-curve (its `mplog listen`, "
        "senders sending wire version 1) to the systems",
    )
    parser.add_argument("--quick", action="store_true", help="20,000 lines, one repeat")
    parser.add_argument("--scaling", action="store_true", help="records/s by connections and frame size instead")
    parser.add_argument("--connections", default="1,4,16,64", help="--scaling: connection counts")
    parser.add_argument("--frames", default="1,32,512", help="--scaling: records per frame")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one run may take")
    parser.add_argument("--dir", type=Path, help="work directory for the collectors' files (default: a temporary one)")
    parser.add_argument(
        "--output",
        type=Path,
        help=f"JSON results (default: {RESULTS}/collector.json, collector-scaling.json with --scaling)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.lines, args.repeats = 20_000, 1
    args.systems = [s for s in (args.systems or ("mplog-tcp" if args.scaling else ",".join(SYSTEMS))).split(",") if s]
    if args.baseline is not None:
        if not (args.baseline / "mplog" / "__init__.py").is_file():
            parser.error(f"--baseline must be a checkout of mplog (holding mplog/__init__.py), got {args.baseline}")
        collectors.BASELINE[:] = [str(args.baseline.resolve())]
        args.systems += [s for s in ("baseline-tcp", "baseline-curve") if s not in args.systems]
    unknown = [s for s in args.systems if s not in SYSTEMS + EXTRA_SYSTEMS]
    if unknown:
        parser.error(f"unknown system {unknown[0]!r}; known: {', '.join(SYSTEMS + EXTRA_SYSTEMS)}")
    if any(s.startswith("baseline-") for s in args.systems) and not collectors.BASELINE:
        parser.error("the baseline-* systems need --baseline PATH")
    args.connections, args.frames = _ints(args.connections), _ints(args.frames)
    if args.length < MIN_LENGTH:
        parser.error(f"--length must be at least {MIN_LENGTH}, got {args.length}")
    counts = [*args.connections, args.senders]
    if max(counts) > MAX_CONNECTIONS or min(counts) < 1:
        parser.error(f"--senders and --connections must be between 1 and {MAX_CONNECTIONS}")
    if args.lines < max(counts) or min([*args.frames, args.frame]) < 1:
        parser.error("--lines must be at least the number of connections, and frames at least 1 record")
    if args.output is None:
        args.output = RESULTS / ("collector-scaling.json" if args.scaling else "collector.json")
    return args


def run_comparison(args: argparse.Namespace, run: dict[str, Any]) -> dict[str, Any]:
    """Every system with ``--senders`` connections, repeats interleaved; prints the table."""
    by_system: dict[str, list[dict[str, Any]]] = {s: [] for s in args.systems}
    for repeat in range(args.repeats):
        for system in args.systems:
            result = measure(system, connections=args.senders, processes=args.senders, per_frame=args.frame, **run)
            by_system[system].append(result)
            _log(f"run {repeat + 1}/{args.repeats}", result)
    section = {"connections": args.senders, "per_frame": args.frame}
    section.update(lines=args.lines, length=args.length, repeats=args.repeats)
    section["systems"] = {s: {"median": summarise(r), "runs": r} for s, r in by_system.items()}
    print(comparison_table(section) + "\n", flush=True)
    return section


def run_scaling(args: argparse.Namespace, run: dict[str, Any]) -> list[dict[str, Any]]:
    """Every (frame size, connections) cell of each system, repeats interleaved; prints a table per system."""
    runs: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for repeat in range(args.repeats):
        for frame in args.frames:
            for conn in args.connections:
                for system in args.systems:
                    result = measure(system, connections=conn, processes=args.senders, per_frame=frame, **run)
                    runs.setdefault((system, conn, frame), []).append(result)
                    _log(f"{conn} conn x {frame}/frame run {repeat + 1}/{args.repeats}", result)
    sections = []
    for system in args.systems:
        section = {"system": system, "connections": args.connections, "frames": args.frames}
        section.update(lines=args.lines, length=args.length, repeats=args.repeats, processes=args.senders)
        section["cells"] = [
            {"connections": c, "per_frame": f, "median": summarise(r), "runs": r}
            for (s, c, f), r in runs.items()
            if s == system
        ]
        sections.append(section)
        print(scaling_table(section) + "\n", flush=True)
    return sections


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.collector", *(argv if argv is not None else sys.argv[1:])]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
    }
    with tempfile.TemporaryDirectory(prefix="mplog-collector-", dir=args.dir) as tmp:
        workdir = Path(tmp)
        keys = make_keys(workdir, args.senders)
        run = {"lines": args.lines, "length": args.length, "workdir": workdir, "keys": keys, "timeout": args.timeout}
        if args.scaling:
            report["scaling"] = run_scaling(args, run)
            medians = [c["median"] for s in report["scaling"] for c in s["cells"]]
        else:
            report["comparison"] = run_comparison(args, run)
            medians = [v["median"] for v in report["comparison"]["systems"].values()]
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print(f"results written to {args.output}")
    bad = ("failed_runs", "lost", "duplicated", "malformed")
    return 1 if any("error" in m or any(m.get(key) for key in bad) for m in medians) else 0
