"""In-process costs of the two hot paths, without processes, sockets or a scheduler in the way.

``python -m benchmarks.micro`` prints, in microseconds per record:

- ``call``: a logging call of the benchmark's scenario through ``MplogHandler`` whose transport
  discards frames, next to the same call into a do-nothing handler (``null``): wall-clock time
  and the calling thread's CPU time (``time.thread_time``);
- with ``--instructions``, the same two calls counted in instructions by valgrind's callgrind
  (the difference between a run of ``--records`` calls and one of twice as many, so start-up
  does not count): the figure a busy machine does not move.
- ``listener``: decoding, validating and dispatching recorded frames of the scenario's records
  into a FileHandler with the scenario's format (``BatchDispatcher``, the listener's fast path).
- ``server``: the same frames through the whole receive path (``Server.handle_frame``: decode,
  account, dispatch), with and without the progress file (mplog.listener.progress) that a listener
  with a state directory keeps; the difference is what persisting each ledger costs per frame.

Each figure is the minimum over ``--repeats`` rounds (the least disturbed one); the call's two
handlers run in alternating rounds, and the median of the rounds' ratios is printed beside the
ratio of the minimums (on a shared machine the steadier of the two). Compare two
checkouts on the same machine in one sitting, e.g. ``PYTHONPATH=OLD python -m benchmarks.micro``.
"""

from __future__ import annotations

import argparse
import logging
import logging.config
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.scenario import LOGGER, TEMPLATE, file_config
from benchmarks.systems.ceilings import NullHandler
from mplog.listener.dispatch import BatchDispatcher
from mplog.wire import Sender, build_frame, check_records, decode_header, encode_record, encode_sender
from mplog.worker import MplogHandler


class _Discard:
    """A transport that takes every frame and keeps none."""

    def send(self, frame: bytes, timeout: float = 0.0) -> bool:
        return True

    def close(self, linger: float | None = None) -> None:
        pass


def _best(run: Callable[[], None], per_round: int, repeats: int) -> float:
    return _best_both(run, per_round, repeats)[0]


def _best_both(run: Callable[[], None], per_round: int, repeats: int) -> tuple[float, float]:
    """The least wall-clock and the least thread CPU microseconds per item over ``repeats`` rounds."""
    wall = cpu = float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.thread_time()
        run()
        c1, t1 = time.thread_time(), time.perf_counter()
        wall = min(wall, (t1 - t0) / per_round * 1e6)
        cpu = min(cpu, (c1 - c0) / per_round * 1e6)
    return wall, cpu


def _call_handler(kind: str) -> logging.Handler:
    if kind == "null":
        return NullHandler()
    handler = MplogHandler("ipc:///nonexistent/mplog-micro.sock")
    handler._transport = _Discard()  # type: ignore[assignment]  # no listener: measure the call alone
    return handler


def logging_call(records: int, repeats: int) -> dict[str, float]:
    """The logging call into the null handler and into MplogHandler, in alternating rounds.

    Each round runs both handlers, in alternating order, so both see the same machine; besides
    each handler's least time, the median of the rounds' ratios is reported (``*_median_ratio``):
    on a shared machine the ratio of two minimums taken at different moments moved from 1.25x to
    1.65x in three runs in a row, the median of paired rounds by a few percent.
    """
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    info = logging.getLogger(LOGGER).info

    def run() -> None:
        for i in range(records):
            info(TEMPLATE, i, 1.234, "alice")

    result: dict[str, float] = {}
    handlers = {kind: _call_handler(kind) for kind in ("null", "call")}
    walls: dict[str, list[float]] = {"null": [], "call": []}
    cpus: dict[str, list[float]] = {"null": [], "call": []}
    try:
        root.setLevel(logging.INFO)
        for n in range(repeats + 1):  # round 0 warms both up and is not counted
            for kind in ("null", "call")[:: 1 if n % 2 else -1]:
                root.handlers[:] = [handlers[kind]]
                wall, cpu = _best_both(run, records, 1)
                if n:
                    walls[kind].append(wall)
                    cpus[kind].append(cpu)
    finally:
        for handler in handlers.values():
            handler.close()
        root.handlers[:], level = saved
        root.setLevel(level)
    for kind in ("null", "call"):
        result[kind], result[f"{kind}_cpu"] = min(walls[kind]), min(cpus[kind])
    result["ratio"] = result["call"] / result["null"]
    result["cpu_ratio"] = result["call_cpu"] / result["null_cpu"]
    result["median_ratio"] = statistics.median(c / n for c, n in zip(walls["call"], walls["null"], strict=True))
    result["cpu_median_ratio"] = statistics.median(c / n for c, n in zip(cpus["call"], cpus["null"], strict=True))
    return result


def _calls_alone(kind: str, records: int) -> None:
    """``records`` logging calls into the ``kind`` handler after a warm-up, nothing else (run under callgrind)."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.handlers[:] = [_call_handler(kind)]
    info = logging.getLogger(LOGGER).info
    for i in range(2048 + records):
        info(TEMPLATE, i, 1.234, "alice")


def instructions(records: int) -> dict[str, float] | str:
    """Instructions per logging call (null, call) by callgrind, or why they could not be counted."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return "valgrind is not installed (apt-get install valgrind)"
    counts: dict[str, float] = {}
    for kind in ("null", "call"):
        seen = []
        for n in (records, 2 * records):
            cmd = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-m"]
            cmd += ["benchmarks.micro", "--calls-alone", kind, "--records", str(n)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            found = re.search(r"Collected : (\d+)", proc.stderr)
            if proc.returncode != 0 or found is None:
                return f"callgrind failed ({proc.returncode}): {proc.stderr.strip()[-300:]}"
            seen.append(int(found[1]))
        counts[kind] = (seen[1] - seen[0]) / records
    counts["ratio"] = counts["call"] / counts["null"]
    return counts


def listener(frames: int, repeats: int) -> dict[str, float]:
    maker = logging.getLogger(LOGGER)
    packed = [
        encode_record(maker.makeRecord(LOGGER, logging.INFO, __file__, 1, TEMPLATE, (i, 1.234, "alice"), None))
        for i in range(512)
    ]
    frame = build_frame(encode_sender(Sender("host", 1, 1.0, 1)), 0, 0, 0, packed)
    saved: Any = logging.getLogger().handlers[:]
    with tempfile.TemporaryDirectory(prefix="mplog-micro-") as tmp:
        logging.config.dictConfig(file_config(Path(tmp, "out.log")))
        dispatcher = BatchDispatcher()

        def run() -> None:
            for _ in range(frames):
                decoded = decode_header(frame)
                check_records(decoded.records)
                dispatcher.dispatch(decoded.records, "host")

        try:
            return {"listener": _best(run, frames * len(packed), repeats)}
        finally:
            logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
            logging.getLogger().handlers[:] = saved


class _NoReceiver:
    endpoint = "micro://"

    def __init__(self) -> None:
        self.events: dict[str, int] = {}


def server(frames: int, repeats: int) -> dict[str, float]:
    """Microseconds per frame of 512 records through Server.handle_frame, without and with the progress file."""
    from mplog.listener.loop import Server
    from mplog.listener.progress import ProgressFile

    maker = logging.getLogger(LOGGER)
    packed = [
        encode_record(maker.makeRecord(LOGGER, logging.INFO, __file__, 1, TEMPLATE, (i, 1.234, "alice"), None))
        for i in range(512)
    ]
    sender = encode_sender(Sender("host", 1, 1.0, 1))
    stream = [build_frame(sender, 512 * n, 0, 0, packed) for n in range(frames)]
    saved: Any = logging.getLogger().handlers[:]
    best = {"plain": float("inf"), "progress": float("inf")}
    with tempfile.TemporaryDirectory(prefix="mplog-micro-") as tmp:
        logging.config.dictConfig(file_config(Path(tmp, "out.log")))
        try:
            for n in range(repeats):
                for kind in ("plain", "progress")[:: 1 if n % 2 else -1]:  # alternated: both see the same machine
                    srv = Server(_NoReceiver())  # type: ignore[arg-type]  # frames are handed in directly
                    if kind == "progress":
                        srv.progress = ProgressFile(
                            os.path.join(tmp, "progress.slots"), srv.stats.table, srv.output_handlers()
                        )
                    handle = srv.handle_frame
                    t0 = time.perf_counter()
                    for data in stream:
                        handle(data)
                    best[kind] = min(best[kind], (time.perf_counter() - t0) / frames * 1e6)
                    if srv.progress is not None:
                        srv.progress.close()
        finally:
            logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
            logging.getLogger().handlers[:] = saved
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30, help="rounds (minimum; paired median)")
    parser.add_argument("--records", type=int, default=20_000, help="logging calls per round")
    parser.add_argument("--frames", type=int, default=20, help="frames of 512 records per round")
    parser.add_argument("--instructions", action="store_true", help="also count the call's instructions (valgrind)")
    parser.add_argument("--calls-alone", choices=("null", "call"), help=argparse.SUPPRESS)  # callgrind's child
    args = parser.parse_args(argv)
    if args.calls_alone:
        _calls_alone(args.calls_alone, args.records)
        return 0
    call = logging_call(args.records, args.repeats)
    lis = listener(args.frames, args.repeats)
    print(f"mplog {os.path.dirname(os.path.dirname(__import__('mplog').__file__))}")
    print(
        f"call      {call['call']:.2f} us   (null handler {call['null']:.2f} us, {call['ratio']:.2f}x); "
        f"thread CPU {call['call_cpu']:.2f} us (null {call['null_cpu']:.2f} us, {call['cpu_ratio']:.2f}x)"
    )
    print(
        f"          median of {args.repeats} paired rounds: {call['median_ratio']:.2f}x wall-clock, "
        f"{call['cpu_median_ratio']:.2f}x thread CPU"
    )
    if args.instructions:
        counted = instructions(min(args.records, 10_240))
        if isinstance(counted, str):
            print(f"instructions  not counted: {counted}")
        else:
            print(
                f"instructions  {counted['call']:.0f} per call (null handler {counted['null']:.0f}, "
                f"{counted['ratio']:.3f}x)"
            )
    print(f"listener  {lis['listener']:.2f} us per record (decode + validate + dispatch + write)")
    srv = server(args.frames, args.repeats)
    print(
        f"server    {srv['plain']:.1f} us per frame of 512 records; with the progress file {srv['progress']:.1f} us "
        f"(+{srv['progress'] - srv['plain']:.1f} us, +{(srv['progress'] / srv['plain'] - 1) * 100:.2f} %)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
