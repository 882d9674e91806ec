"""What the costliest frames a sender may send cost the listener: the longest any other sender waits.

``python -m benchmarks.frame_costs`` hands each kind of frame to a listener's receive path
(``mplog.listener.loop.Server.handle_frame``, in this process, a FileHandler writing to a
temporary file) and prints, per frame, the seconds it took (the median of ``--repeats``)
and the peak of Python's allocations while it was handled (tracemalloc, in one more round). The receive
loop takes a frame per connection in turn, so these are the longest turns another
sender waits for (docs/security.md, Bounds). Compare two checkouts in one sitting:
``PYTHONPATH=OLD python -m benchmarks.frame_costs``.
"""

from __future__ import annotations

import argparse
import logging.config
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from mplog.listener.loop import Server
from mplog.wire import Limits

SENDER = ["bench-host", 1, 1.0, 1]
MiB = 1024 * 1024


def _record(name: str, message: str) -> list[Any]:
    return [name, 20, "INFO", message, 1.7e9, 0.0, 0.0, "/p.py", "p.py", "p", 1, "f", 1, "T", 1, "P", None, None, None]


def _frame(records: list[Any], seq: int) -> bytes:
    data: bytes = msgpack.packb([1, SENDER, seq, 0, 0, records], use_bin_type=True)
    return data


def _kinds() -> dict[str, Callable[[int], bytes]]:
    """Frame makers by name (the same frames whatever the checkout's limits); each takes the sequence number."""
    common = 11_914  # records of 22 values: as many as fit in the default max_items (262,144)
    nils = [[None] * 100_000] * 40  # 4 million nils: a frame of 3.8 MiB
    wide = {f"k{i}": None for i in range(50_000)}  # 50,000 distinct keys: 340 KiB
    return {
        "4 records of 1 MiB (4 MiB)": lambda seq: _frame([[*_record("a", "y" * (MiB - 256)), {}]] * 4, seq),
        "4 records of 4 MiB (16 MiB)": lambda seq: _frame([[*_record("a", "y" * (4 * MiB - 256)), {}]] * 4, seq),
        f"{common:,} common records": lambda seq: _frame(
            [[*_record("a", f"record {i}"), {}] for i in range(common)], seq
        ),
        "10,000 records of 20 nils": lambda seq: _frame([[None] * 20] * 10_000, seq),
        "100,000 records of 20 nils": lambda seq: _frame([[None] * 20] * 100_000, seq),
        "4 million nils in one extra": lambda seq: _frame([[*_record("a", "m"), {"x": nils}]], seq),
        # Maps are not preallocated by msgpack: up to 50,000 entries each decode since the map
        # limit is max_records // 2 (it was max_extra_fields, 256).
        "5 maps of 50,000 keys in one extra": lambda seq: _frame([[*_record("a", "m"), {"x": [wide] * 5}]], seq),
        "200 distinct logger names": lambda seq: _frame([[*_record(f"n{seq}.{i}", "m"), {}] for i in range(200)], seq),
    }


class _NoReceiver:
    endpoint = "none://"

    def __init__(self) -> None:
        self.events: dict[str, int] = {}

    def recv(self, timeout: float) -> None:
        return None

    def close(self) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    limits = Limits()
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / "out.log"
        logging.config.dictConfig(
            {
                "version": 1,
                "formatters": {"f": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
                "handlers": {"file": {"class": "logging.FileHandler", "filename": str(out), "formatter": "f"}},
                "root": {"level": "DEBUG", "handlers": ["file"]},
            }
        )
        server = Server(_NoReceiver(), limits=limits)  # type: ignore[arg-type]  # frames are handed in directly
        print(f"max_frame_bytes {limits.max_frame_bytes:,}, max_items {getattr(limits, 'max_items', '-')}")
        seq = 0
        for name, make in _kinds().items():
            times, peaks, size = [], [], 0
            for repeat in range(args.repeats + 1):  # the last round measures memory (tracemalloc slows it)
                data = make(seq)
                size = len(data)
                seq += 1_000_000
                if repeat == args.repeats:
                    tracemalloc.start()
                    server.handle_frame(data)
                    peaks.append(tracemalloc.get_traced_memory()[1])
                    tracemalloc.stop()
                else:
                    start = time.perf_counter()
                    server.handle_frame(data)
                    times.append(time.perf_counter() - start)
                del data
                out.write_bytes(b"")
            print(
                f"{name:48s} {size / MiB:6.2f} MiB on the wire: {statistics.median(times) * 1000:8.1f} ms, "
                f"peak +{statistics.median(peaks) / MiB:7.1f} MiB"
            )
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
