"""concurrent-log-handler: no consumer; every producer appends to the shared file under
a file lock (ConcurrentRotatingFileHandler with rotation off)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.scenario import FORMAT, LOGGER, Started


def start(variant: str, out: Path, method: str) -> Started:
    return Started(params={"path": str(out)}, stop=lambda: None, consumer_pid=0)


def worker_setup(params: dict[str, Any]) -> Callable[..., Any]:
    from concurrent_log_handler import ConcurrentRotatingFileHandler

    handler = ConcurrentRotatingFileHandler(params["path"], "a", maxBytes=0, backupCount=0, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    return logging.getLogger(LOGGER).info
