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
import math
import queue
import time
from typing import Any

from mplog.exceptions import ConfigError

__all__ = ["QueuedHandler", "start_queue_listeners", "stop_queue_listeners"]


def _config_handlers(names: Any) -> Any:
    """The mapping dictConfig fills with the handlers it builds, reached from the list it passed us.

    dictConfig builds handlers in the alphabetical order of their names and cannot defer a
    handler that is not a MemoryHandler, so a target may not exist yet when this handler is
    built. The list of names it passes keeps a reference to the config it came from (an
    undocumented but long-standing detail of ``logging.config``); holding that mapping keeps
    the targets alive until the first record resolves them.
    """
    configurator = getattr(getattr(names, "parent", None), "configurator", None)
    config = getattr(configurator, "config", None)
    try:
        return config["handlers"] if config is not None else None
    except (KeyError, TypeError):
        return None


class QueuedHandler(logging.Handler):
    """Feeds the named handlers from a bounded queue in a thread of its own.

    Not a ``QueueHandler`` subclass on purpose: Python 3.12's dictConfig takes over the
    ``handlers`` key of those.

    Args:
        handlers: names of handlers defined under ``handlers`` in the same config (or handler objects).
        maxsize: records held before new ones are dropped (and counted).
        respect_handler_level: as ``QueueListener``: each target applies its own level.
        close_timeout: seconds :meth:`close` waits for the targets to take what is queued (5:
            a stop's whole drain and close fit in ``Listener.stop()``'s default 10 s);
            what is still queued then is dropped and counted (a target that blocks, an SMTP
            server that never answers, would otherwise hold the listener's stop for
            ``maxsize`` times its own timeout).
    """

    check_builds = True  # building opens nothing: mplog check builds and closes it (listener.handler_check)

    def __init__(
        self,
        handlers: list[str | logging.Handler],
        maxsize: int = 10_000,
        respect_handler_level: bool = True,
        close_timeout: float = 5.0,
    ) -> None:
        if isinstance(handlers, str) or not handlers:
            raise ConfigError(f"QueuedHandler handlers must be a list of handler names, got {handlers!r}")
        if not isinstance(maxsize, int) or isinstance(maxsize, bool) or maxsize < 1:
            raise ConfigError(f"QueuedHandler maxsize must be a positive int, got {maxsize!r}")
        if isinstance(close_timeout, bool) or not isinstance(close_timeout, (int, float)) or not close_timeout >= 0:
            raise ConfigError(f"QueuedHandler close_timeout must be a number of seconds >= 0, got {close_timeout!r}")
        if math.isinf(close_timeout):
            raise ConfigError("QueuedHandler close_timeout must be finite: a stop must end")
        self.close_timeout = float(close_timeout)
        super().__init__()
        self._names = list(handlers)
        self._registry = _config_handlers(handlers)
        self.respect_handler_level = respect_handler_level
        self.queue: queue.Queue[logging.LogRecord] = queue.Queue(maxsize)
        self.targets: list[logging.Handler] = []
        self.listener: logging.handlers.QueueListener | None = None
        self.dropped = 0

    def _resolve(self, name: str | logging.Handler) -> logging.Handler:
        if isinstance(name, logging.Handler):
            return name
        found = self._registry.get(name) if self._registry is not None else None
        if not isinstance(found, logging.Handler):
            found = getattr(logging, "_handlers", {}).get(name)  # name -> handler, kept by Handler.set_name
        if not isinstance(found, logging.Handler):
            raise ConfigError(f"QueuedHandler names handler {name!r}, which is not defined under 'handlers'")
        return found

    def start(self) -> None:
        """Resolve the target handlers and start the thread that feeds them (done at the first record)."""
        self.targets = [self._resolve(name) for name in self._names]
        self._registry = None  # the targets are held now; let the rest of the config go
        self.listener = logging.handlers.QueueListener(
            self.queue, *self.targets, respect_handler_level=self.respect_handler_level
        )
        self.listener.start()
        self._close_before_targets()

    def _close_before_targets(self) -> None:
        # logging.shutdown() closes handlers newest first. Built before its targets (they
        # are resolved only now), this handler would be closed after them and drain its
        # queue into closed handlers; moving it to the newest place closes it first.
        handler_list: Any = getattr(logging, "_handlerList", None)
        lock: Any = getattr(logging, "_lock", None)
        if handler_list is None or lock is None:
            return
        with lock:
            for ref in list(handler_list):
                if ref() is self:
                    handler_list.remove(ref)
                    handler_list.append(ref)

    def emit(self, record: logging.LogRecord) -> None:
        # The record stays in this process: it is queued as it is (no copy, no pickling).
        try:
            if self.listener is None:
                self.start()
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        """Deliver what is queued to the targets within ``close_timeout``, stop the thread, close the targets.

        Records still queued when the time is up are dropped and counted; the targets of a
        thread still held in one of them are left open (closing a handler waits for its lock).
        """
        listener, self.listener = self.listener, None
        if listener is not None and not self._stop_within(listener, time.monotonic() + self.close_timeout):
            super().close()
            return
        for target in self.targets:
            target.close()
        super().close()

    def _stop_within(self, listener: logging.handlers.QueueListener, deadline: float) -> bool:
        """Let the thread drain the queue and end by ``deadline``; False (the rest counted) when it is held."""
        sentinel = listener._sentinel  # type: ignore[attr-defined]  # QueueListener's end marker
        thread = listener._thread
        try:  # the queue may be full: the end marker waits for room while the thread drains it
            self.queue.put(sentinel, timeout=max(deadline - time.monotonic(), 0.001))
        except queue.Full:
            pass
        if thread is not None:
            thread.join(max(deadline - time.monotonic(), 0.0))
            if thread.is_alive():  # held by a target: what it has not taken is dropped, counted
                self.dropped += self._take_queued(sentinel)
                self.queue.put_nowait(sentinel)  # it ends if its target ever returns
                return False
        listener._thread = None  # stopped, as QueueListener.stop() leaves it
        return True

    def _take_queued(self, sentinel: Any) -> int:
        taken = 0
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return taken
            taken += item is not sentinel


def _stdlib_queue_listeners() -> list[logging.handlers.QueueListener]:
    found = []
    for ref in list(getattr(logging, "_handlerList", [])):  # every handler of this process, by weak reference
        handler = ref()
        listener = getattr(handler, "listener", None)
        if isinstance(handler, logging.handlers.QueueHandler) and isinstance(listener, logging.handlers.QueueListener):
            found.append(listener)
    return found


def start_queue_listeners() -> int:
    """Start the listener of every stdlib ``QueueHandler`` that dictConfig built with one.

    From Python 3.12 on, dictConfig gives a ``QueueHandler`` configured with ``handlers``
    a ``QueueListener`` but leaves starting and stopping it to the program; in the
    listener process nobody else can. Returns how many were started.
    """
    started = 0
    for listener in _stdlib_queue_listeners():
        if getattr(listener, "_thread", None) is None:
            listener.start()
            started += 1
    return started


def stop_queue_listeners() -> None:
    """Deliver what the stdlib queue listeners hold and stop them (before ``logging.shutdown()``)."""
    for listener in _stdlib_queue_listeners():
        if getattr(listener, "_thread", None) is not None:
            listener.stop()
