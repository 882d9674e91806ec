"""The standard library's recipe: QueueHandler in producers, a multiprocessing.Queue,
and a consumer that owns the FileHandler: a QueueListener thread in the main process,
or (the logging cookbook's variant) a dedicated listener process."""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.scenario import FORMAT, LOGGER, Started


def _file_handler(out: Path) -> logging.FileHandler:
    handler = logging.FileHandler(out, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    return handler


def _listen(queue: Any, out: str) -> None:
    handler = _file_handler(Path(out))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    while True:
        record = queue.get()
        if record is None:
            break
        logging.getLogger(record.name).handle(record)
    handler.close()


def start(variant: str, out: Path, method: str) -> Started:
    ctx = multiprocessing.get_context(method)
    queue = ctx.Queue(-1)
    if variant == "thread":
        handler = _file_handler(out)
        listener = logging.handlers.QueueListener(queue, handler)
        listener.start()

        def stop_thread() -> None:
            listener.stop()
            handler.close()

        return Started(params={"queue": queue}, stop=stop_thread)
    process = ctx.Process(target=_listen, args=(queue, str(out)), name="stdlib-listener")
    process.start()

    def stop_process() -> None:
        queue.put_nowait(None)
        process.join()

    return Started(params={"queue": queue}, stop=stop_process, consumer_pid=process.pid or 0)


def worker_setup(params: dict[str, Any]) -> Callable[..., Any]:
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(params["queue"])]
    root.setLevel(logging.INFO)
    return logging.getLogger(LOGGER).info
