"""Run one system once, in this process, and print one JSON result line.

``python -m benchmarks.driver --system mplog-zmq --producers 2 --records 50000 --method fork --dir D``.
``benchmarks.run`` starts one driver per measurement, so every run begins in a fresh
process and the CPU of every process involved can be totalled from the outside.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.check import check_file
from benchmarks.scenario import producer_main
from benchmarks.systems import get_system

_IGNORED = ("resource_tracker", "forkserver")  # helpers that outlive the run; never reaped here
JOIN_TIMEOUT = 300.0
# mplog's own accounting, and how it held frames for the busy producers (mplog.listener.holding), for the record
LEDGER = ("received", "gaps", "dropped", "duplicates", "malformed_total", "yield")


def _vm_hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class PeakSampler(threading.Thread):
    """Samples the peak RSS (VmHWM) of this process and every descendant every ``interval`` s."""

    def __init__(self, interval: float = 0.1) -> None:
        super().__init__(daemon=True, name="peak-sampler")
        self.interval = interval
        self.peaks: dict[int, int] = {}
        self._done = threading.Event()
        self._me = psutil.Process()

    def sample(self) -> None:
        for pid in [self._me.pid, *(p.pid for p in self._me.children(recursive=True))]:
            peak = _vm_hwm_kib(pid)
            if peak > self.peaks.get(pid, 0):
                self.peaks[pid] = peak

    def run(self) -> None:
        while not self._done.wait(self.interval):
            with contextlib.suppress(psutil.Error):
                self.sample()

    def finish(self) -> None:
        self._done.set()
        self.join()


def _cpu_so_far() -> float:
    """CPU seconds used so far by this process, its reaped children and every live descendant."""
    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            if any(name in " ".join(proc.cmdline()) for name in _IGNORED):
                continue
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


def run_once(system_name: str, producers: int, records: int, method: str, directory: Path) -> dict[str, Any]:
    """Start the system, run the producers, stop it, check the output; return the figures."""
    system = get_system(system_name)
    if not system.supports(method):
        return {"system": system_name, "skipped": f"does not support the {method} start method"}
    ctx = multiprocessing.get_context(method)
    out = directory / "out.log"
    nprod, nrec = (1, producers * records) if system.single_process else (producers, records)
    started = system.start(out, method)
    ready, go = ctx.Semaphore(0), ctx.Event()
    procs = [
        ctx.Process(
            target=producer_main,
            args=(system_name, started.params, k, nrec, ready, go, str(directory)),
            name=f"producer-{k}",
        )
        for k in range(nprod)
    ]
    for proc in procs:
        proc.start()
    for _ in procs:
        if not ready.acquire(timeout=120):
            raise RuntimeError("a producer did not get ready within 120 s")
    sampler = PeakSampler()
    sampler.sample()
    cpu_before = _cpu_so_far()
    sampler.start()
    t0 = time.perf_counter()
    go.set()
    for proc in procs:
        proc.join(JOIN_TIMEOUT)
    t_joined = time.perf_counter()
    started.stop()
    elapsed = time.perf_counter() - t0
    sampler.finish()
    # Every process of the run has been reaped by now; measured before the output check
    # below, whose CPU is the harness's, not the system's.
    cpu_after = _cpu_so_far()
    reports = [json.loads(p.read_text()) for p in sorted(directory.glob("producer-*.json"))]
    exitcodes = [p.exitcode for p in procs]
    expected = {r["pid"]: r["records"] for r in reports}
    total = nprod * nrec
    result: dict[str, Any] = {
        "system": system_name,
        "producers": producers,
        "records": records,
        "method": method,
        "total_records": total,
        "seconds": elapsed,
        "records_per_s": total / elapsed,
        "producers_done_s": t_joined - t0,  # until every producer process had exited
        "stop_s": elapsed - (t_joined - t0),  # then: stopping the consumer, which drains what is left
        "call_us": 1e6 * sum(r["seconds"] for r in reports) / max(sum(r["records"] for r in reports), 1),
        "producer_cpu_us": 1e6 * sum(r["cpu"] for r in reports) / max(sum(r["records"] for r in reports), 1),
        "thread_cpu_us": 1e6 * sum(r["thread_cpu"] for r in reports) / max(sum(r["records"] for r in reports), 1),
        "cpu_before_s": cpu_before,
        "cpu_run_s": cpu_after - cpu_before,  # every process, from the start signal until stopped
        "producer_exitcodes": exitcodes,
        "producer_reports": len(reports),
        "consumer_pid": started.consumer_pid,
        "consumer_peak_mib": sampler.peaks.get(started.consumer_pid, 0) / 1024 if started.consumer_pid else 0.0,
        "producer_peak_mib": max((sampler.peaks.get(r["pid"], 0) for r in reports), default=0) / 1024,
        "peak_total_mib": sum(sampler.peaks.values()) / 1024,
        "listener_stats": {k: started.extra.get(k) for k in LEDGER} if started.extra else None,
    }
    if system.writes_file:
        verdict = check_file([out], expected)
        result.update(
            lines=verdict.lines,
            lost=verdict.lost + (total - sum(expected.values())),
            duplicated=verdict.duplicated,
            malformed=verdict.malformed + verdict.unexpected,
            bad_samples=verdict.samples,
        )
    else:
        result.update(lines=0, lost=0, duplicated=0, malformed=0, bad_samples=[])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--system", required=True)
    parser.add_argument("--producers", type=int, default=2)
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--method", default="fork", choices=("fork", "spawn", "forkserver"))
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a fresh temporary one)")
    args = parser.parse_args(argv)
    if args.dir is None:
        with tempfile.TemporaryDirectory(prefix="mplog-bench-") as tmp:
            result = run_once(args.system, args.producers, args.records, args.method, Path(tmp))
    else:
        args.dir.mkdir(parents=True, exist_ok=True)
        result = run_once(args.system, args.producers, args.records, args.method, args.dir)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
