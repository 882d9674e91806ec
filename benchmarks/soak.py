"""Soak: a steady rate from several workers into a rotating file, memory sampled throughout.

Not a CI test (RELIABILITY A9). Every record is numbered; at the end every line of every
rotated file is checked and the per-sender ledger must balance with nothing unexplained::

    python benchmarks/soak.py --duration 600 --rate 2000 --workers 4 --dir /tmp/mplog-soak

Prints one line per sample interval and a JSON summary (RSS of the listener and of each
worker at minute 1, at the end and its peak, the slope after the warm-up, fds, threads).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from helpers import check_lines, payload

import mplog

SIZE = 100  # payload body bytes; a line is about 125 bytes


def _worker(producer: int, rate: float, stop_at: float, out_dir: str, spool_dir: str | None = None) -> None:
    mplog.setup_worker(**({"spool_dir": spool_dir} if spool_dir else {}))
    log = logging.getLogger("soak")
    seq = 0
    start = time.monotonic()
    while True:
        now = time.monotonic()
        if now >= stop_at:
            break
        due = int((now - start) * rate)  # a steady rate, not bursts
        while seq < due:
            log.info("%s", payload(producer, seq, SIZE))
            seq += 1
        time.sleep(0.005)
    Path(out_dir, f"count-{producer}").write_text(str(seq))


def _sample(proc: psutil.Process) -> dict[str, float]:
    try:
        with proc.oneshot():
            if proc.status() == psutil.STATUS_ZOMBIE:
                return {}  # exited, not yet reaped: no memory to speak of
            return {"rss_mib": proc.memory_info().rss / 2**20, "fds": proc.num_fds(), "threads": proc.num_threads()}
    except psutil.Error:
        return {}


def _slope(samples: list[tuple[float, float]], after: float) -> float:
    """Least-squares slope of RSS over time (MiB per 10 minutes) for samples after ``after`` s."""
    pts = [(t, v) for t, v in samples if t >= after]
    if len(pts) < 3:
        return 0.0
    n = len(pts)
    mt = sum(t for t, _ in pts) / n
    mv = sum(v for _, v in pts) / n
    den = sum((t - mt) ** 2 for t, _ in pts) or 1.0
    return sum((t - mt) * (v - mv) for t, v in pts) / den * 600


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of steady logging")
    parser.add_argument("--rate", type=float, default=2000.0, help="records per second, all workers together")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--dir", default="/tmp/mplog-soak", help="where the rotated files go (emptied first)")
    parser.add_argument("--max-bytes", type=int, default=1 << 20, help="rotate at this size")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between memory samples")
    parser.add_argument("--warmup", type=float, default=60.0, help="slope is measured after this many seconds")
    parser.add_argument("--ack", action="store_true", help="acknowledged delivery (mplog.ack)")
    parser.add_argument("--spool", action="store_true", help="with --ack: workers also keep a spool file")
    args = parser.parse_args()

    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        old.unlink()
    config = {
        "version": 1,
        "formatters": {"f": {"format": "%(message)s"}},
        "handlers": {
            "file": {
                "class": "logging.handlers.RotatingFileHandler",
                "filename": str(out / "soak.log"),
                "maxBytes": args.max_bytes,
                "backupCount": 100_000,
                "formatter": "f",
                "encoding": "utf-8",
            }
        },
        "root": {"level": "INFO", "handlers": ["file"]},
    }
    ctx = mp.get_context("spawn")
    started = time.monotonic()
    samples: dict[str, list[tuple[float, float]]] = {}
    extra: dict[str, list[dict[str, float]]] = {}
    if args.spool and not args.ack:
        parser.error("--spool needs --ack")
    spool = str(Path(args.dir).with_name(Path(args.dir).name + "-spool")) if args.spool else None
    with mplog.start_listener(config, route_parent=False, ack=args.ack) as listener:
        stop_at = time.monotonic() + args.duration
        procs = [
            ctx.Process(
                target=_worker,
                args=(i, args.rate / args.workers, stop_at, str(out), spool),
                name=f"soak-{i}",
            )
            for i in range(args.workers)
        ]
        for p in procs:
            p.start()
        watched = {"listener": psutil.Process(listener.pid)} | {
            f"worker{i}": psutil.Process(p.pid) for i, p in enumerate(procs)
        }
        while any(p.is_alive() for p in procs):
            t = time.monotonic() - started
            line = [f"t={t:6.0f}s"]
            for name, proc in watched.items():
                s = _sample(proc)
                if s:
                    samples.setdefault(name, []).append((t, s["rss_mib"]))
                    extra.setdefault(name, []).append(s)
                    line.append(f"{name} {s['rss_mib']:.1f}MiB/{s['fds']:.0f}fd/{s['threads']:.0f}thr")
            stats = listener.stats()
            line.append(f"received {stats['received']} gaps {stats['gaps']} dropped {stats['dropped']}")
            print("  ".join(line), flush=True)
            for p in procs:
                p.join(timeout=args.interval / len(procs))
        for p in procs:
            p.join()
    final = listener.stats()
    logged = {i: int((out / f"count-{i}").read_text()) for i in range(args.workers)}
    files = sorted(out.glob("soak.log*"))
    lines: list[str] = []
    for f in files:
        lines.extend(f.read_text(encoding="utf-8").splitlines())
    check = check_lines(lines, logged)
    summary: dict[str, Any] = {
        "duration_s": args.duration,
        "rate": args.rate,
        "workers": args.workers,
        "ack": args.ack,
        "spool": bool(spool),
        "logged": sum(logged.values()),
        "lines": len(lines),
        "files": len(files),
        "missing": sum(len(v) for v in check.missing.values()),
        "duplicates": check.duplicates,
        "truncated": check.truncated,
        "received": final.get("received"),
        "gaps": final.get("gaps"),
        "dropped": final.get("dropped"),
        "unexplained": sum(logged.values()) - final.get("received", 0) - final.get("dropped", 0) - final.get("gaps", 0),
        "memory": {},
    }
    for name, pts in samples.items():
        after = [v for t, v in pts if t >= args.warmup] or [v for _, v in pts]
        summary["memory"][name] = {
            "rss_first_mib": round(pts[0][1], 1),
            "rss_after_warmup_mib": round(after[0], 1),
            "rss_end_mib": round(pts[-1][1], 1),
            "rss_max_mib": round(max(v for _, v in pts), 1),
            "slope_mib_per_10min": round(_slope(pts, args.warmup), 2),
            "fds": sorted({int(s["fds"]) for s in extra[name]}),
            "threads": sorted({int(s["threads"]) for s in extra[name]}),
        }
    print(json.dumps(summary, indent=2))
    return 0 if check.ok and summary["unexplained"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
