"""The one scenario every system runs: what a producer logs and how the line looks.

Each producer process logs ``records`` calls of ``logger.info(TEMPLATE, i, 1.234, "alice")``
(loguru's own API with the same arguments for loguru); every record must end up as one
line of ``FORMAT`` in one file. Producers wait on a shared start event so process
start-up is not measured; each writes its own timings to a small JSON file.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEMPLATE = "request %d handled in %.3f ms user=%s"
LOGGER = "bench"
FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s %(message)s"


def file_config(path: Path) -> dict[str, Any]:
    """The listener/recipe configuration: one FileHandler writing FORMAT lines."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"line": {"format": FORMAT}},
        "handlers": {
            "file": {"class": "logging.FileHandler", "filename": str(path), "formatter": "line", "encoding": "utf-8"}
        },
        "root": {"level": "INFO", "handlers": ["file"]},
    }


@dataclass
class Started:
    """What a system's ``start()`` hands back to the driver."""

    params: dict[str, Any]  # picklable: sent to every producer (spawn included)
    stop: Callable[[], None]  # called once every producer has exited
    consumer_pid: int = field(default_factory=os.getpid)  # the process that writes the file (0: producers do)
    extra: dict[str, Any] = field(default_factory=dict)  # filled by stop(), e.g. the listener's final stats


def producer_main(
    system: str, params: dict[str, Any], index: int, records: int, ready: Any, start: Any, result_dir: str
) -> None:
    """Body of one producer process: set up, say ready, wait for the start signal, log, report."""
    from benchmarks.systems import get_system

    info = get_system(system).worker_setup(params)
    template = params.get("template", TEMPLATE)
    ready.release()
    start.wait()
    c0, h0, t0 = time.process_time(), time.thread_time(), time.perf_counter()
    for i in range(records):
        info(template, i, 1.234, "alice")
    t1, h1, c1 = time.perf_counter(), time.thread_time(), time.process_time()
    report = {
        "index": index,
        "pid": os.getpid(),
        "records": records,
        "seconds": t1 - t0,
        "cpu": c1 - c0,  # the whole producer process: its background threads too
        "thread_cpu": h1 - h0,  # the thread that logs: the logging calls alone
    }
    Path(result_dir, f"producer-{index}.json").write_text(json.dumps(report))
