"""multiprocessing-logging: ``install_mp_handler()`` wraps the main process's FileHandler;
forked children put records on its queue and a thread in the main process writes them.
It supports only the fork start method."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.scenario import FORMAT, LOGGER, Started


def supports(method: str) -> bool:
    return method == "fork"


def start(variant: str, out: Path, method: str) -> Started:
    import multiprocessing_logging

    handler = logging.FileHandler(out, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    multiprocessing_logging.install_mp_handler()

    def stop() -> None:
        for wrapper in list(root.handlers):
            wrapper.close()  # waits for its queue to drain, then closes the FileHandler
            root.removeHandler(wrapper)

    return Started(params={}, stop=stop)


def worker_setup(params: dict[str, Any]) -> Callable[..., Any]:
    return logging.getLogger(LOGGER).info  # configured in the parent, inherited by fork
