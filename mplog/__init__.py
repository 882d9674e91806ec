"""mplog: logging for programs that run in many processes and on many hosts.

Workers keep the standard ``logging`` API; :func:`setup_worker` ships their records as
msgpack frames to one listener process (:func:`start_listener`) that owns every real
handler, configured with the ``dictConfig`` schema.
"""

from __future__ import annotations

from mplog.exceptions import ConfigError, FrameError, ListenerError, MplogError, TransportError
from mplog.handle import Listener, start_listener
from mplog.listener.stats import ledger
from mplog.listener.stats_view import ListenerStats
from mplog.worker import MplogHandler, WorkerOptions, setup_worker

__all__ = [
    "ConfigError",
    "FrameError",
    "Listener",
    "ListenerError",
    "ListenerStats",
    "MplogError",
    "MplogHandler",
    "TransportError",
    "WorkerOptions",
    "__version__",
    "ledger",
    "setup_worker",
    "start_listener",
]

__version__ = "0.2.0"
