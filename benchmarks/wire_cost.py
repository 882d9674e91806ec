"""What wire version 2 costs the producer, per logging call, against version 1.

``python -m benchmarks.wire_cost`` starts one listener (a FileHandler writing the
benchmark's format) and, in this process, logs ``--calls`` records through a worker set up
with ``wire_version=1`` and with ``wire_version=2``, round by round, interleaved (each goes
first in every other round). For each it measures the calling thread's CPU time
(``time.thread_time``: the logging calls, and the batches they pack when one fills) and the
whole process's (``time.process_time``: the flusher thread and ZeroMQ's I/O thread too),
until the transport has taken everything (``flush_within``). It prints the medians per
call and their ratios. docs/benchmarks.md quotes it beside the listener's saving.
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


def _round(endpoint: str, version: int, calls: int) -> tuple[float, float]:
    handler = mplog.setup_worker(endpoint, wire_version=version)
    log = logging.getLogger(LOGGER)
    thread0, process0 = time.thread_time(), time.process_time()
    for seq in range(calls):
        log.info(TEMPLATE, seq, 1.234, "alice")
    thread1 = time.thread_time()
    handler.flush_within(30)
    process1 = time.process_time()
    handler.close()
    logging.getLogger().handlers.clear()
    return 1e6 * (thread1 - thread0) / calls, 1e6 * (process1 - process0) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="mplog-wire-cost-")) / "out.log"
    results: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
    with mplog.start_listener(file_config(out), route_parent=False, export_env=False) as listener:
        for number in range(args.rounds):
            for version in (1, 2) if number % 2 else (2, 1):  # each goes first in every other round
                results[version].append(_round(listener.endpoint, version, args.calls))
    medians = {v: (statistics.median(t for t, _ in r), statistics.median(p for _, p in r)) for v, r in results.items()}
    for version, (thread, process) in medians.items():
        print(f"wire {version}: calling thread {thread:.2f} us/call, whole process {process:.2f} us/call")
    print(
        f"version 2 / version 1: calling thread {medians[2][0] / medians[1][0]:.3f}, "
        f"whole process {medians[2][1] / medians[1][1]:.3f} (medians of {args.rounds} interleaved rounds)"
    )


if __name__ == "__main__":
    main()
