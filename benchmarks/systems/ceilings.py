"""The ceilings: one process writing every record straight into its own FileHandler, and
the bare cost of a logging call into a handler that does nothing.

The do-nothing call is measured where the systems' calls are: in ``P`` producer processes
running at once, started the same way (``ceiling-null``). Two busy processes on a small
machine each run slower than one alone, so a single process (``ceiling-null-1``, all
``P x M`` calls) understates the cost of a call in the producers' conditions; the table's
``x null`` ratios are against ``ceiling-null``.

``shared-file`` is the naive way issue 17 compares end to end against: every producer opens
the one file with its own FileHandler (``O_APPEND``: whole lines while each write is one
``write()``), no consumer, no accounting; unsafe with rotation (each process rotates on its
own) and it loses whatever a killed producer had in its stream buffer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.scenario import FORMAT, LOGGER, Started


class NullHandler(logging.Handler):
    """Accepts every record and does nothing with it (unlike logging.NullHandler, it is
    reached through Handler.handle and its lock, as every real handler is)."""

    def emit(self, record: logging.LogRecord) -> None:
        pass


def start(variant: str, out: Path, method: str) -> Started:
    return Started(params={"path": str(out), "variant": variant}, stop=lambda: None)


def worker_setup(params: dict[str, Any]) -> Callable[..., Any]:
    handler: logging.Handler
    if params["variant"] in ("file", "shared"):
        handler = logging.FileHandler(params["path"], encoding="utf-8")
        handler.setFormatter(logging.Formatter(FORMAT))
    else:
        handler = NullHandler()
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    return logging.getLogger(LOGGER).info
