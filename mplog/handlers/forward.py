"""Forward records from one listener to another as msgpack frames: listeners can be chained.

The stdlib's ``SocketHandler`` and ``DatagramHandler`` send pickles, which the
receiving side must unpickle -- unsafe from any peer it does not trust. A
:class:`ForwardHandler` sends the same frames a worker sends, so the next listener
decodes them with the same bounded, non-executing decoder, counts gaps and drops per
sender, and dispatches them to its own handlers.
"""

from __future__ import annotations

import logging
from typing import Any

from mplog.exceptions import ConfigError
from mplog.worker import MplogHandler, WorkerOptions

__all__ = ["ForwardHandler"]


class ForwardHandler(MplogHandler):
    """Sends every record it handles to the mplog listener at ``endpoint``.

    Args:
        endpoint: the next listener, e.g. ``tcp://127.0.0.1:5140`` or ``ipc:///run/mplog/collector.sock``.
        **options: fields of :class:`mplog.WorkerOptions` (batching, buffer bound, policy) or of
            its limits and transport options. The policy defaults to ``drop_oldest``: a listener
            must keep receiving while the next one is away, so an outage longer than
            ``max_buffer_bytes`` drops the oldest records and counts them (the next listener
            sees the count in its ``dropped`` stats).
    """

    def __init__(self, endpoint: str, **options: Any) -> None:
        options.setdefault("policy", "drop_oldest")
        options.setdefault("flush_on_sigterm", False)
        for key in ("flush_level", "level"):
            value = options.get(key)
            if isinstance(value, str):
                level = logging.getLevelName(value.upper())
                if not isinstance(level, int):
                    raise ConfigError(f"ForwardHandler {key} must be a level name or number, got {value!r}")
                options[key] = level
        super().__init__(endpoint, WorkerOptions.from_kwargs(**options))

    @property
    def dropped(self) -> int:
        """Records dropped by the buffer policy while the next listener could not take them."""
        return int(self.counters["dropped"])
