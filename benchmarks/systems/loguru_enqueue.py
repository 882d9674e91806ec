"""loguru with ``enqueue=True``: producers put records on loguru's multiprocessing queue;
a thread in the main process writes the file. Producers use loguru's own API with the
same arguments (``{}`` placeholders instead of ``%d``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.scenario import Started

FORMAT = "{time:YYYY-MM-DD HH:mm:ss,SSS} {process} {level} bench {message}"
TEMPLATE = "request {} handled in {:.3f} ms user={}"


def start(variant: str, out: Path, method: str) -> Started:
    from loguru import logger

    logger.remove()
    # context: loguru's queue must come from the start method the producers use (spawn included).
    sink = logger.add(str(out), format=FORMAT, level="INFO", enqueue=True, encoding="utf-8", context=method)

    def stop() -> None:
        logger.remove(sink)  # drains the queue, joins loguru's writer thread, closes the file

    # loguru's documented way to reach spawn children: pass the logger itself.
    return Started(params={"logger": logger, "template": TEMPLATE}, stop=stop)


def worker_setup(params: dict[str, Any]) -> Callable[..., Any]:
    info: Callable[..., Any] = params["logger"].info
    return info
