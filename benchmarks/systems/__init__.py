"""The systems compared, one module each; ``get_system(name)`` finds one by its table name."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.scenario import Started

# table name -> (module, variant, what it is)
REGISTRY: dict[str, tuple[str, str, str]] = {
    "mplog-zmq": ("mplog_runtime", "zmq", "mplog, ZeroMQ ipc transport, listener process"),
    "mplog-mp": ("mplog_runtime", "multiprocessing", "mplog, multiprocessing transport, listener process"),
    "mplog-zmq-nice": ("mplog_runtime", "zmq-nice", "mplog-zmq with mplog.nice = 19 (the listener yields CPU)"),
    "mplog-zmq-noyield": ("mplog_runtime", "zmq-noyield", "mplog-zmq with mplog.yield_to_workers = 0 (never holds)"),
    "mplog-zmq-ack": ("mplog_runtime", "zmq-ack", "mplog-zmq with acknowledged delivery (ack=True)"),
    "stdlib-thread": ("stdlib_recipe", "thread", "QueueHandler + multiprocessing.Queue + QueueListener thread"),
    "stdlib-process": ("stdlib_recipe", "process", "QueueHandler + multiprocessing.Queue + listener process"),
    "loguru": ("loguru_enqueue", "", "loguru, file sink with enqueue=True"),
    "concurrent-log-handler": ("concurrent_handler", "", "ConcurrentRotatingFileHandler in every producer"),
    "multiprocessing-logging": ("mp_logging", "", "multiprocessing-logging install_mp_handler (fork only)"),
    "ceiling-file": ("ceilings", "file", "ceiling: one process, all records, straight into a FileHandler"),
    "ceiling-null": ("ceilings", "null", "ceiling: the P producers' logging calls into a do-nothing handler"),
    "ceiling-null-1": ("ceilings", "null-1", "one process, all P x M calls into a do-nothing handler"),
    "shared-file": ("ceilings", "shared", "every producer appends to the one file with its own FileHandler (unsafe)"),
}
REFERENCE = "stdlib-thread"


@dataclass(frozen=True)
class System:
    """One benchmarked setup: how the driver starts it and how a producer joins it."""

    name: str
    description: str
    start: Callable[[Path, str], Started]  # (output file, start method) -> Started
    worker_setup: Callable[[dict[str, Any]], Callable[..., Any]]  # returns the logging call
    supports: Callable[[str], bool]  # start method -> supported
    single_process: bool  # one process logs producers * records (ceiling-file, ceiling-null-1)
    writes_file: bool


def get_system(name: str) -> System:
    module_name, variant, description = REGISTRY[name]
    module = importlib.import_module(f"benchmarks.systems.{module_name}")
    return System(
        name=name,
        description=description,
        start=partial(module.start, variant),
        worker_setup=module.worker_setup,
        supports=getattr(module, "supports", lambda method: True),
        single_process=variant in ("file", "null-1"),
        writes_file=not variant.startswith("null"),
    )
