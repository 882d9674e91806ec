"""Put a slow handler behind a bounded queue and its own thread, configured from dictConfig.

Python 3.12's dictConfig builds a ``QueueHandler`` with a ``QueueListener`` from a
``handlers`` list; on 3.10 and 3.11 it cannot. :class:`QueuedHandler` works on every
supported version: it names the handlers it feeds (defined in the same config), holds
at most ``maxsize`` records, and counts every record it had to drop in
:attr:`QueuedHandler.dropped` instead of blocking the listener's receive loop.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
from typing import Any

from mplog.exceptions import ConfigError

__all__ = ["QueuedHandler"]

# dictConfig retries a handler once, after the others, when the cause of its failure
# says this (it is the wording its own MemoryHandler support uses).
_DEFER = "target not configured yet"


def _configured_handler(name: str) -> logging.Handler | None:
    handlers: Any = getattr(logging, "_handlers", {})  # name -> handler, kept by Handler.set_name
    handler = handlers.get(name)
    return handler if isinstance(handler, logging.Handler) else None


class QueuedHandler(logging.Handler):
    """Feeds the named handlers from a bounded queue in a thread of its own.

    Not a ``QueueHandler`` subclass on purpose: Python 3.12's dictConfig takes over the
    ``handlers`` key of those.

    Args:
        handlers: names of handlers defined under ``handlers`` in the same config.
        maxsize: records held before new ones are dropped (and counted).
        respect_handler_level: as ``QueueListener``: each target applies its own level.
    """

    def __init__(self, handlers: list[str], maxsize: int = 10_000, respect_handler_level: bool = True) -> None:
        if isinstance(handlers, str) or not handlers:
            raise ConfigError(f"QueuedHandler handlers must be a list of handler names, got {handlers!r}")
        if not isinstance(maxsize, int) or isinstance(maxsize, bool) or maxsize < 1:
            raise ConfigError(f"QueuedHandler maxsize must be a positive int, got {maxsize!r}")
        targets = []
        for name in handlers:
            target = _configured_handler(name)
            if target is None:
                raise ConfigError(f"QueuedHandler names handler {name!r}, which is not defined") from ValueError(
                    f"{name!r}: {_DEFER}"
                )
            targets.append(target)
        super().__init__()
        self.queue: queue.Queue[logging.LogRecord] = queue.Queue(maxsize)
        self.targets = targets
        self.dropped = 0
        self.listener = logging.handlers.QueueListener(
            self.queue, *targets, respect_handler_level=respect_handler_level
        )
        self.listener.start()

    def emit(self, record: logging.LogRecord) -> None:
        # The record stays in this process: it is queued as it is (no copy, no pickling).
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def close(self) -> None:
        """Deliver what is queued to the targets, stop the thread, then close the targets."""
        listener = getattr(self, "listener", None)
        if listener is not None and listener._thread is not None:
            self._put_sentinel()
            thread = listener._thread
            thread.join()
            listener._thread = None
        for target in self.targets:
            target.close()
        super().close()

    def _put_sentinel(self) -> None:
        # The queue may be full: the sentinel waits for room (the thread is draining it).
        self.queue.put(self.listener._sentinel)  # type: ignore[attr-defined]  # QueueListener's end marker
