"""Acknowledged delivery: acknowledgements, marks, the write-ahead intent, the spool.

Used by the worker (the acknowledging sender, the spool) and by the listener (the
acknowledgement format, the intent); it knows frames only through :mod:`mplog.wire`.
"""

__all__ = ["ACK_CLOSE_TIMEOUT"]

ACK_CLOSE_TIMEOUT = 10.0  # acknowledged delivery: the least an exit waits to deliver and be acknowledged
