"""What the worker handler's ``handle()`` costs the producer, per logging call, by variant.

``python -m benchmarks.handle_cost`` starts one listener (a FileHandler writing the
benchmark's format) and, in this process, logs ``--calls`` records through
``MplogHandler`` into it, measuring the calling thread's CPU time (``time.thread_time``:
the flusher thread and ZeroMQ's I/O thread are not counted). Variants, interleaved round
by round so each sees the same machine:

- ``mplog``: ``MplogHandler`` as shipped;
- ``stock``: the same handler with ``logging.Handler.handle`` (filter, the handler's lock, emit).

It prints the median microseconds per call of each variant and their ratio. This is the
figure the comment on ``MplogHandler.handle`` quotes.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import mplog
from benchmarks.scenario import LOGGER, TEMPLATE, file_config
from mplog.worker import MplogHandler


class _StockHandle(MplogHandler):
    handle = logging.Handler.handle  # type: ignore[assignment]  # the stdlib's, for comparison


VARIANTS: dict[str, type[MplogHandler]] = {"mplog": MplogHandler, "stock": _StockHandle}


def _round(cls: type[MplogHandler], endpoint: str, calls: int) -> float:
    root = logging.getLogger()
    handler = cls(endpoint)
    root.handlers[:] = [handler]
    info = logging.getLogger(LOGGER).info
    try:
        t0 = time.thread_time()
        for i in range(calls):
            info(TEMPLATE, i, 1.234, "alice")
        spent = time.thread_time() - t0
        handler.flush_within(30.0)
    finally:
        root.handlers[:] = []
        handler.close()
    return spent / calls * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200_000, help="logging calls per round")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of each variant, interleaved")
    args = parser.parse_args(argv)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    results: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="mplog-handle-") as tmp:
        config = file_config(Path(tmp, "out.log"))
        with mplog.start_listener(config, route_parent=False, export_env=False) as listener:
            root.setLevel(logging.INFO)
            try:
                for n in range(args.rounds):
                    names = list(VARIANTS)[:: 1 if n % 2 else -1]  # alternated order
                    for name in names:
                        results[name].append(_round(VARIANTS[name], listener.endpoint, args.calls))
            finally:
                root.handlers[:], level = saved
                root.setLevel(level)
    medians = {name: statistics.median(values) for name, values in results.items()}
    for name, values in results.items():
        rounds = " ".join(f"{v:.3f}" for v in values)
        print(f"{name:6} median {medians[name]:.3f} us per call (thread CPU)   rounds: {rounds}")
    print(f"stock / mplog = {medians['stock'] / medians['mplog']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
