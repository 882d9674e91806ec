"""The one place that decides whether the listener's fast path may take a shortcut.

The fast path (:mod:`mplog.listener.dispatch`, :mod:`mplog.listener.frame_lines`,
:mod:`mplog.listener.line_format`) writes the bytes the generic path would write
(``logger.handle(record)`` for every record: ``Logger.handle`` -> filters ->
``callHandlers`` -> ``Handler.handle`` -> its filters, its lock, ``emit`` -> ``format`` ->
``Formatter.format`` -> ``stream.write`` -> ``flush``) while skipping steps of it. Each step
it skips is safe only when that step could not change the bytes, and this module is where
that is checked. Every condition has a name (the ``REFUSED_*`` constants); a guard returns
the name of the first condition that refuses, or None when the shortcut may be taken:

- :func:`logger_refusal`: a logger whose records skip ``Logger.handle`` (its filters and
  ``disabled``) and ``callHandlers`` (the walk up the parents, propagation);
- :func:`handler_refusal`: a handler whose records skip ``Handler.handle`` (filters, one
  lock per record), ``emit``, ``Handler.format`` and ``Formatter.format`` and one
  ``flush`` per record: the batch path writes its lines at once;
- :func:`formatter_refusal`: a formatter whose lines may be built from the wire fields
  with no ``LogRecord`` at all (no ``makeRecord``, no ``logging.setLogRecordFactory``);
- :func:`batch_refusal`: records (a run of one logger, or a whole frame) that may go to
  their sinks at once, with no level or record checked one by one.

What the guards do not decide, they leave to checks that cost nothing: a format key that
is not a wire field (``compile_format`` returns None), a format ``frame_lines`` cannot
split, two seconds in one frame, a value a conversion refuses: each falls back to the
record path, whose lines are ``Formatter.format``'s (``tests/unit/test_fastpath.py``,
``test_frame_format.py``, ``test_fast_guard.py`` compare the bytes). ``logging.disable``
and each logger's level are honoured on both paths by ``Logger.isEnabledFor``, the check
``Logger.info`` itself makes before it builds a record.

Called per frame (a route, a formatter, a batch), never per record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

__all__ = [
    "REFUSALS",
    "batch_refusal",
    "caches_time",
    "default_formatter",
    "formatter_refusal",
    "frame_refusal",
    "handler_refusal",
    "inlines_message",
    "inlines_stack",
    "logger_refusal",
]

# A logger (logger_refusal)
REFUSED_LOGGER_DISABLED = "logger disabled"  # Logger.handle drops every record of a disabled logger
REFUSED_LOGGER_FILTER = "logger filter"  # Logger.handle runs its filters (they may drop or change a record)
REFUSED_LOGGER_HANDLE = "logger handle overridden"  # a Logger subclass's handle() or callHandlers()
# A handler (handler_refusal)
REFUSED_NOT_STREAM = "not a StreamHandler"  # only a stream's write+flush is batched
REFUSED_HANDLER_FILTER = "handler filter"  # Handler.handle runs its filters per record
REFUSED_HANDLER_METHOD = "handler method overridden"  # emit/handle/format/flush of a subclass or instance
REFUSED_FORMAT_OVERRIDDEN = "Formatter.format overridden"  # by the formatter's class or instance
# A formatter, for lines built from the wire fields (formatter_refusal)
REFUSED_RECORD_FACTORY = "custom record factory"  # logging.setLogRecordFactory must see every record
REFUSED_MESSAGE_FORMAT = "formatMessage overridden"  # or a style other than %, or style defaults
REFUSED_TIME_FORMAT = "formatTime overridden"  # or a converter other than time.localtime/gmtime
# Records at once (batch_refusal)
REFUSED_LEVEL = "level disabled"  # Logger.isEnabledFor: the logger's level or logging.disable
REFUSED_EXC_OR_STACK = "exception or stack"  # such lines take LineFormat.line, one by one
REFUSED_ROUTE = "route not plain"  # a logger or handler on the route refused above, or no handler
REFUSED_NOT_COMPILED = "format not compiled"  # a sink whose lines need a LogRecord
REFUSED_HANDLER_LEVEL = "below a handler's level"  # callHandlers skips that handler for such a record
REFUSED_MIXED_LOGGERS = "several loggers"  # a frame's lines at once: one logger only

REFUSALS = (
    REFUSED_LOGGER_DISABLED,
    REFUSED_LOGGER_FILTER,
    REFUSED_LOGGER_HANDLE,
    REFUSED_NOT_STREAM,
    REFUSED_HANDLER_FILTER,
    REFUSED_HANDLER_METHOD,
    REFUSED_FORMAT_OVERRIDDEN,
    REFUSED_RECORD_FACTORY,
    REFUSED_MESSAGE_FORMAT,
    REFUSED_TIME_FORMAT,
    REFUSED_LEVEL,
    REFUSED_EXC_OR_STACK,
    REFUSED_ROUTE,
    REFUSED_NOT_COMPILED,
    REFUSED_HANDLER_LEVEL,
    REFUSED_MIXED_LOGGERS,
)

_Formatter = logging.Formatter
_STREAM_EMITS = (logging.StreamHandler.emit, logging.FileHandler.emit)
_INSTANCE_OVERRIDES = frozenset(("emit", "handle", "format", "flush"))
_CACHED_CONVERTERS = (time.localtime, time.gmtime)
_FALLBACK_FORMATTER = logging.Formatter()


class _Sink(Protocol):
    """What :func:`batch_refusal` reads of a handler's sink (mplog.listener.dispatch._Sink)."""

    compiled: bool
    level: int


def default_formatter() -> logging.Formatter:
    """What ``Handler.format`` uses when a handler has no formatter."""
    formatter: logging.Formatter = getattr(logging, "_defaultFormatter", None) or _FALLBACK_FORMATTER
    return formatter


def logger_refusal(logger: logging.Logger) -> str | None:
    """Why records of ``logger`` may not skip ``Logger.handle``/``callHandlers``; None: they may.

    Checked for the logger a record names; its parents' handlers are walked by the caller
    as ``callHandlers`` walks them (``propagate`` honoured), each through :func:`handler_refusal`.
    The parents' filters are not run by ``callHandlers`` either, so they are not asked.
    """
    cls = type(logger)
    if logger.disabled:
        return REFUSED_LOGGER_DISABLED
    if logger.filters:
        return REFUSED_LOGGER_FILTER
    if cls.handle is not logging.Logger.handle or cls.callHandlers is not logging.Logger.callHandlers:
        return REFUSED_LOGGER_HANDLE
    return None


def handler_refusal(handler: logging.Handler) -> str | None:
    """Why ``handler`` may not take lines in a batch; None: it may.

    The batch path skips ``Handler.handle`` (its filters, its lock per record), ``emit``,
    ``Handler.format`` and one ``flush`` per record: it formats with ``Formatter.format``'s
    steps (:class:`mplog.listener.line_format.LineFormat`) and writes the lines joined by
    the handler's ``terminator`` in one ``stream.write`` and one ``flush``, under the
    handler's lock. Safe when every step skipped is the stdlib's own: a StreamHandler or
    FileHandler whose emit/handle/format/flush are not overridden (by class or instance),
    with no filter, formatted by a Formatter whose ``format`` is the stock one.
    """
    cls = type(handler)
    if not isinstance(handler, logging.StreamHandler):
        return REFUSED_NOT_STREAM
    if handler.filters:
        return REFUSED_HANDLER_FILTER
    if (
        cls.emit not in _STREAM_EMITS
        or cls.handle is not logging.Handler.handle
        or cls.format is not logging.Handler.format
        or cls.flush is not logging.StreamHandler.flush
        or not _INSTANCE_OVERRIDES.isdisjoint(handler.__dict__)  # e.g. handler.emit = something_else
    ):
        return REFUSED_HANDLER_METHOD
    formatter = handler.formatter or default_formatter()
    if type(formatter).format is not _Formatter.format or "format" in formatter.__dict__:
        return REFUSED_FORMAT_OVERRIDDEN
    return None


def inlines_message(formatter: logging.Formatter) -> bool:
    """Whether ``formatMessage`` is ``fmt % record.__dict__`` (stock method, % style, no defaults)."""
    style = formatter._style
    return (
        type(formatter).formatMessage is _Formatter.formatMessage
        and type(style) is logging.PercentStyle
        and not getattr(style, "_defaults", None)
    )


def inlines_stack(formatter: logging.Formatter) -> bool:
    """Whether ``formatStack`` returns the stack text as it is (the stock method)."""
    return type(formatter).formatStack is _Formatter.formatStack


def caches_time(formatter: logging.Formatter) -> bool:
    """Whether ``formatTime``'s text may be cached per second (stock method, localtime or gmtime).

    ``converter(created)`` then depends on the whole second only, and so does the text.
    """
    return type(formatter).formatTime is _Formatter.formatTime and formatter.converter in _CACHED_CONVERTERS


def formatter_refusal(formatter: logging.Formatter) -> str | None:
    """Why lines of ``formatter`` may not be built from the wire fields; None: they may.

    Such lines skip ``makeRecord``/the record factory and ``LogRecord`` construction
    altogether: the format's keys are looked up in the decoded fields. Safe when no record
    factory is installed in this process (one installed with ``logging.setLogRecordFactory``
    must see every record, and may change any attribute), ``formatMessage`` is the stock
    ``%`` of the record's attributes, and the time (if used) is the stock ``formatTime``
    with a converter that depends on the second only. The format must then name wire fields
    only (``compile_format``, not this guard, says so).
    """
    if logging.getLogRecordFactory() is not logging.LogRecord:
        return REFUSED_RECORD_FACTORY
    if not inlines_message(formatter):
        return REFUSED_MESSAGE_FORMAT
    if formatter.usesTime() and not caches_time(formatter):
        return REFUSED_TIME_FORMAT
    return None


def batch_refusal(
    logger: logging.Logger,
    levels: Iterable[int],
    marked: bool,
    route: Sequence[_Sink] | None,
) -> str | None:
    """Why records of ``logger`` may not go to ``route``'s sinks at once; None: they may.

    At once means no check per record: ``Logger.isEnabledFor`` is asked once per level
    present (the logger's level and ``logging.disable``, as ``Logger.info`` asks), and
    every sink takes every record (``callHandlers``' ``record.levelno >= handler.level``
    holds for the lowest level present), its lines built by a compiled format.

    Args:
        logger: the records' logger.
        levels: the levels present (a set).
        marked: whether a record carries exception text or a stack.
        route: the sinks of ``logger`` (None: the generic path).
    """
    if not all(map(logger.isEnabledFor, levels)):
        return REFUSED_LEVEL
    if marked:
        return REFUSED_EXC_OR_STACK
    if route is None:
        return REFUSED_ROUTE
    low = min(levels)
    for sink in route:
        if not sink.compiled:
            return REFUSED_NOT_COMPILED
        if sink.level > low:
            return REFUSED_HANDLER_LEVEL
    return None


def frame_refusal(names: list[Any], n: int) -> str | None:
    """Why a frame's lines may not be built a frame at a time from its columns; None: they may.

    Besides :func:`batch_refusal` for the frame's records: every record names one logger,
    so one route takes them all.
    """
    if names.count(names[0]) != n:
        return REFUSED_MIXED_LOGGERS
    return None
