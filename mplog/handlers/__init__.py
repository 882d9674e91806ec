"""Handlers the standard library lacks, for use in the listener's config.

Each is configured like any stdlib handler (``class = "mplog.handlers.Name"``).
See docs/handlers.md for one tested snippet per handler.
"""

from __future__ import annotations

from mplog.handlers.delivery import DeliveryOptions
from mplog.handlers.forward import ForwardHandler
from mplog.handlers.http import HTTPHandler
from mplog.handlers.queued import QueuedHandler, start_queue_listeners, stop_queue_listeners
from mplog.handlers.relp import RELPHandler
from mplog.handlers.rfc5424 import RFC5424Handler
from mplog.handlers.rfc5424_format import RFC5424Format
from mplog.handlers.rotation import Compressor, RotatingFileHandler, TimedRotatingFileHandler, gzip_namer
from mplog.handlers.smtp import BatchingSMTPHandler, SMTPBatchOptions, batch_subject
from mplog.handlers.stream import FactoryStreamHandler
from mplog.handlers.syslog import SysLogHandler

__all__ = [
    "BatchingSMTPHandler",
    "Compressor",
    "DeliveryOptions",
    "FactoryStreamHandler",
    "ForwardHandler",
    "HTTPHandler",
    "QueuedHandler",
    "RELPHandler",
    "RFC5424Format",
    "RFC5424Handler",
    "RotatingFileHandler",
    "SMTPBatchOptions",
    "SysLogHandler",
    "TimedRotatingFileHandler",
    "batch_subject",
    "gzip_namer",
    "start_queue_listeners",
    "stop_queue_listeners",
]
