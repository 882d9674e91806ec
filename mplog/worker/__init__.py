"""The worker side: the handler put on the root logger, its batching, options, fork/exit hooks.

The public face: :func:`setup_worker`, :class:`MplogHandler`, :class:`WorkerOptions`
(re-exported by :mod:`mplog`); the settings a listener exports are :mod:`mplog.worker.env`.
"""

from mplog.worker.handler import MplogHandler, setup_worker
from mplog.worker.options import WorkerOptions

__all__ = ["MplogHandler", "WorkerOptions", "setup_worker"]
