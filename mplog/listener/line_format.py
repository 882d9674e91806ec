"""One handler's line, as ``Formatter.format`` would write it, for the listener's fast path.

:class:`LineFormat` wraps a stock ``logging.Formatter``: ``format(record)`` inlines what
the formatter does not override and caches the time text per second; for a format that
names only fields the wire carries, ``line(fields)`` and ``lines(run)`` build the text
straight from the decoded wire fields with one positional ``%`` (:func:`compile_format`),
with no LogRecord. :mod:`mplog.listener.fast_guard` decides which handlers, formatters and
records may use it (``mplog.listener.dispatch`` asks it);
``tests/unit/test_fastpath.py`` compares its bytes with the generic path's.
"""

from __future__ import annotations

import logging
import operator
import re
import time
from collections.abc import Callable
from typing import Any

from mplog.listener.fast_guard import caches_time, formatter_refusal, inlines_message, inlines_stack
from mplog.wire import RECORD_FIELDS
from mplog.wire.schema import F_CREATED, F_EXC_TEXT, F_MSECS, F_STACK_INFO

__all__ = ["LineFormat", "compile_format"]

# Record attributes a line can be built from straight out of the wire fields (no LogRecord):
# the wire's fields, plus the two names LogRecord spells differently from the wire.
_FIELD_INDEX = {name: i for i, name in enumerate(RECORD_FIELDS) if name != "extra"} | {"msg": 3}
_MAPPING_KEY = re.compile(r"%%|%\(([^)]*)\)")
_ASCTIME = -1
_compiled: dict[str, tuple[str, tuple[int, ...]] | None] = {}


def compile_format(fmt: str) -> tuple[str, tuple[int, ...]] | None:
    """``fmt`` with every ``%(key)`` made positional, and the field index of each key.

    ``"%(asctime)s %(levelname)s"`` becomes ``("%s %s", (-1, 2))``: the line is then
    ``positional % values`` with no LogRecord and no dict. None when a key is not a wire
    field (an extra, ``hostname``), ``asctime`` appears twice, or anything else makes the
    two spellings differ; such a format takes the LogRecord path.
    """
    if fmt in _compiled:
        return _compiled[fmt]
    keys: list[int] = []
    unknown = False

    def positional(match: re.Match[str]) -> str:
        nonlocal unknown
        key = match.group(1)
        if key is None:
            return "%%"
        if key == "asctime":
            keys.append(_ASCTIME)
        elif key in _FIELD_INDEX:
            keys.append(_FIELD_INDEX[key])
        else:
            unknown = True
        return "%"

    text = _MAPPING_KEY.sub(positional, fmt)
    result = None
    if not unknown and keys and keys.count(_ASCTIME) <= 1 and text.count("%") - 2 * text.count("%%") == len(keys):
        result = (text, tuple(keys))
    if len(_compiled) < 256:  # formats are few; a bound in case something makes them per record
        _compiled[fmt] = result
    return result


class LineFormat:
    """Formatter.format for one formatter, with the per-second time text cached."""

    def __init__(self, formatter: logging.Formatter) -> None:
        self.formatter = formatter
        style = formatter._style
        self.uses_time = formatter.usesTime()
        # Inline only what the formatter does not override; call everything else. Shortcuts
        # (conditions in mplog.listener.fast_guard): formatMessage as "fmt % record.__dict__"
        # (stock method, % style, no defaults); formatStack as the stack text itself; formatTime's
        # text cached per second (stock method, a converter that depends on the second only).
        self.inline_message = inlines_message(formatter)
        self.fmt: str = style._fmt
        self.inline_stack = inlines_stack(formatter)
        self.cache_time = caches_time(formatter)
        self.datefmt = formatter.datefmt
        self._second = -1
        self._second_text = ""
        # The line straight from the wire fields when every key the format uses is one. With
        # the stock time format, asctime's milliseconds join the line's own format, so the
        # time costs a cache check: "%(asctime)s" is the second's text + ",%(msecs)03d".
        fmt = self.fmt
        self.second_only = (
            self.cache_time
            and not self.datefmt
            and formatter.default_msec_format == "%s,%03d"
            and fmt.count("%(asctime)s") == 1
            and "%%" not in fmt
        )
        if self.second_only:
            fmt = fmt.replace("%(asctime)s", "%(asctime)s,%(msecs)03d")
        # Shortcut: lines straight from the wire fields skip makeRecord, the record factory
        # (logging.setLogRecordFactory) and LogRecord construction. fast_guard.formatter_refusal
        # names what forbids it (a record factory installed in this process must see every
        # record); compile_format then refuses a format naming a key the wire does not carry.
        compiled = compile_format(fmt) if formatter_refusal(formatter) is None else None
        self.compiled = compiled is not None
        if compiled is not None:
            self.positional, keys = compiled
            self.asctime_at = keys.index(_ASCTIME) if _ASCTIME in keys else -1
            indices = [k for k in keys if k != _ASCTIME]
            self.values: Callable[[list[Any]], tuple[Any, ...]] = (
                operator.itemgetter(*indices) if len(indices) > 1 else _one(indices[0]) if indices else _none
            )

    def asctime(self, record: logging.LogRecord) -> str:
        formatter = self.formatter
        if not self.cache_time:
            return formatter.formatTime(record, formatter.datefmt)
        return self.time_text(record.created, record.msecs)

    def time_text(self, created: float, msecs: float) -> str:
        """Formatter.formatTime for the stock formatTime and converters (cached per second)."""
        formatter = self.formatter
        if int(created) != self._second:
            self._new_second(created)
        if self.datefmt or not formatter.default_msec_format:
            return self._second_text
        return formatter.default_msec_format % (self._second_text, msecs)

    def _new_second(self, created: float) -> None:
        # converter(created) depends only on the whole second, so neither does the text
        formatter = self.formatter
        converted = formatter.converter(created)
        self._second_text = time.strftime(self.datefmt or formatter.default_time_format, converted)
        self._second = int(created)

    def line(self, fields: list[Any]) -> str:
        """What :meth:`format` returns for the record of ``fields`` (compiled formats only)."""
        values = self.values(fields)
        at = self.asctime_at
        if at >= 0:
            created = fields[F_CREATED]
            if not self.second_only:
                stamp = self.time_text(created, fields[F_MSECS])
            else:
                if int(created) != self._second:
                    self._new_second(created)
                stamp = self._second_text
            values = (*values[:at], stamp, *values[at:])
        text: str = self.positional % values
        exc_text = fields[F_EXC_TEXT]
        if exc_text:
            if text[-1:] != "\n":
                text += "\n"
            text += exc_text
        stack_info = fields[F_STACK_INFO]
        if stack_info:
            if text[-1:] != "\n":
                text += "\n"
            text += stack_info if self.inline_stack else self.formatter.formatStack(stack_info)
        return text

    def lines(self, run: list[list[Any]]) -> list[str]:
        """:meth:`line` of every record of ``run`` (records without exception text or stack)."""
        values, positional = self.values, self.positional
        if self.asctime_at < 0:
            return [positional % values(fields) for fields in run]
        if self.asctime_at or not self.second_only:
            return [self.line(fields) for fields in run]
        out = []
        second, stamp = self._second, (self._second_text,)
        for fields in run:  # the usual "%(asctime)s ..." line: the cached second, then the rest
            created = fields[F_CREATED]
            if int(created) != second:
                self._new_second(created)
                second, stamp = self._second, (self._second_text,)
            out.append(positional % (stamp + values(fields)))
        return out

    def format(self, record: logging.LogRecord) -> str:
        """What ``Formatter.format(record)`` returns for a record built by the wire codec."""
        attrs = record.__dict__
        attrs["message"] = record.getMessage()
        if self.uses_time:
            attrs["asctime"] = self.asctime(record)
        if self.inline_message:
            try:
                text: str = self.fmt % attrs
            except Exception:
                text = self.formatter.formatMessage(record)  # raises what the generic path raises
        else:
            text = self.formatter.formatMessage(record)
        exc_text = attrs["exc_text"]  # the wire codec never sets exc_info, only exc_text
        if exc_text:
            if text[-1:] != "\n":
                text += "\n"
            text += exc_text
        stack_info = attrs["stack_info"]
        if stack_info:
            if text[-1:] != "\n":
                text += "\n"
            text += stack_info if self.inline_stack else self.formatter.formatStack(stack_info)
        return text


def _one(index: int) -> Callable[[list[Any]], tuple[Any, ...]]:
    return lambda fields: (fields[index],)


def _none(fields: list[Any]) -> tuple[Any, ...]:
    return ()
