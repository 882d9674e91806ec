"""A whole frame's lines from its columns, for the listener's fast path (issue 17, lever P3).

When the record check passed a frame by its columns (:mod:`mplog.wire.column_check`), the
frame's records all name one logger, carry no exception text or stack, and every handler
on that logger's route takes the batch path with a format built from the wire fields
(:class:`mplog.listener.line_format.LineFormat` ``compiled``), :func:`add_frame` hands each handler
the frame's lines built a frame at a time instead of a record at a time:

- a column that holds one value all along the frame (the level, the process, the logger
  name, most often) is formatted once and folded into the format string;
- the time text (``%(asctime)s`` cached per second) is one value when the frame's records
  fall within one second;
- ``%(message)s`` alone is the message column itself; otherwise one ``%`` per record over
  the columns that vary.

Whether the frame's records may go to their sinks at once is :mod:`mplog.listener.fast_guard`'s
call (``frame_refusal``, ``batch_refusal``), as for a run of the record path. Anything
else (two seconds, a format this module cannot split, a value a conversion refuses) returns False and
the record path of :class:`mplog.listener.dispatch.BatchDispatcher` takes the frame, exactly as
before. The bytes are the generic path's (``tests/unit/test_frame_format.py`` compares
them for every format the generic path supports).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from mplog.listener.fast_guard import batch_refusal, frame_refusal
from mplog.listener.line_format import _ASCTIME, LineFormat, compile_format
from mplog.wire.schema import (
    F_CREATED,
    F_EXC_TEXT,
    F_FILENAME,
    F_LEVELNAME,
    F_LEVELNO,
    F_LINENO,
    F_MESSAGE,
    F_MODULE,
    F_NAME,
    F_PATHNAME,
    F_PROCESS,
    F_STACK_INFO,
    F_THREAD,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from mplog.listener.dispatch import BatchDispatcher, _Sink

__all__ = ["add_frame", "frame_lines"]

# A conversion of a positional format: "%%", or flags, width, precision, length, type.
_CONVERSION = re.compile(r"%(?:%|[#0\- +]*\d*(?:\.\d+)?[hlL]?[diouxXeEfFgGcrsa])")
_STR_FIELDS = frozenset((F_NAME, F_LEVELNAME, F_MESSAGE, F_PATHNAME, F_FILENAME, F_MODULE))  # str only
# Fields whose values are int (or bool) or None: a value equal to one other than 0 and 1 is
# that same int (True == 1 but writes "True"), so its text is the same under any conversion.
_INT_FIELDS = frozenset((F_LEVELNO, F_LINENO, F_THREAD, F_PROCESS))
_EXC_TEXT, _STACK_INFO = F_EXC_TEXT, F_STACK_INFO


class _Template:
    """A compiled format split at its conversions, with the field each conversion takes."""

    __slots__ = ("conversions", "keys", "literals", "one_str_field")

    def __init__(self, literals: list[str], conversions: list[str], keys: tuple[int, ...]) -> None:
        self.literals = literals
        self.conversions = conversions  # one per key, "%%" left in the literals
        self.keys = keys
        # "%(message)s" alone (or another str-only field): the lines are that column itself
        self.one_str_field = (
            keys[0]
            if len(keys) == 1 and keys[0] in _STR_FIELDS and conversions == ["%s"] and literals == ["", ""]
            else -1
        )


_templates: dict[tuple[str, bool], _Template | None] = {}


def _template(lf: LineFormat) -> _Template | None:
    """The template of ``lf``'s compiled format (cached per format); None: not one this module handles."""
    cache_key = (lf.fmt, lf.second_only)
    if cache_key in _templates:
        return _templates[cache_key]
    template = None
    fmt = lf.fmt.replace("%(asctime)s", "%(asctime)s,%(msecs)03d") if lf.second_only else lf.fmt
    compiled = compile_format(fmt)
    if compiled is not None:
        positional, keys = compiled
        parts = _CONVERSION.split(positional)
        found = _CONVERSION.findall(positional)
        # "%%" stays literal text; every other conversion takes one key, in order.
        literals, conversions = [parts[0]], []
        for conversion, after in zip(found, parts[1:], strict=True):
            if conversion == "%%":
                literals[-1] += "%%" + after
            else:
                conversions.append(conversion)
                literals.append(after)
        if len(conversions) == len(keys) and "".join(_interleave(literals, conversions)) == positional:
            template = _Template(literals, conversions, keys)
    if len(_templates) < 256:  # formats are few; a bound in case something makes them per frame
        _templates[cache_key] = template
    return template


def _interleave(literals: list[str], conversions: list[str]) -> list[str]:
    out = [literals[0]]
    for conversion, literal in zip(conversions, literals[1:], strict=True):
        out += (conversion, literal)
    return out


def _is_constant(key: int, column: list[Any], n: int) -> bool:
    """Whether every value of ``column`` writes as its first one does, under any conversion.

    Shortcut: a folded column is converted once (``conversion % value``) instead of once per
    record. Safe only when every value is the same object's text under any conversion: all
    None, the same str, or the same int of a field that carries only ints (not 0 or 1, equal
    to False and True, which write differently). A float column never folds (1 == 1.0).
    """
    first = column[0]
    if first is None:
        return column.count(None) == n
    kind = type(first)
    if kind is str or (kind is int and key in _INT_FIELDS and first not in (0, 1)):
        return column.count(first) == n
    return False


def _stamp(lf: LineFormat, created: list[Any]) -> str | None:
    """The time text of every record of the frame when it is one text (one second); else None.

    Shortcut: ``Formatter.formatTime`` (converter, ``strftime``) once for the frame instead of
    once per record. Safe because ``lf.cache_time`` (fast_guard.caches_time: stock formatTime,
    localtime or gmtime) makes the text a function of the whole second, and every record's
    ``created`` falls in that one second; the milliseconds stay a column of their own
    (``second_only``) or are not part of the text (a ``datefmt``, no ``default_msec_format``).
    """
    if not (lf.second_only or lf.datefmt or not lf.formatter.default_msec_format):
        return None  # the milliseconds are part of asctime itself
    second = int(min(created))
    if second != int(max(created)):
        return None
    if second != lf._second:
        lf._new_second(created[0])
    return lf._second_text


def frame_lines(lf: LineFormat, columns: list[list[Any]], n: int, constant: dict[int, bool]) -> Sequence[str] | None:
    """:meth:`LineFormat.lines` of the frame whose columns are ``columns``, or None for that path.

    Args:
        lf: a compiled LineFormat.
        columns: the frame's columns (no exception text, no stack).
        n: the number of records.
        constant: per field, whether its column is constant (filled in as fields are met;
            shared by the sinks of one frame).

    Raises:
        Exception: whatever a conversion raises for a value (the record path then reports it).
    """
    template = _template(lf)
    if template is None:
        return None
    if template.one_str_field >= 0:  # "%(message)s": "%s" % text is text itself (a str column only)
        return columns[template.one_str_field]
    pieces = [template.literals[0]]
    varying: list[list[Any]] = []
    for key, conversion, literal in zip(template.keys, template.conversions, template.literals[1:], strict=True):
        if key == _ASCTIME:
            stamp = _stamp(lf, columns[F_CREATED])
            if stamp is None:
                return None
            pieces.append((conversion % (stamp,)).replace("%", "%%"))
        else:
            folded = constant.get(key)
            if folded is None:
                folded = constant[key] = _is_constant(key, columns[key], n)
            if folded:
                pieces.append((conversion % (columns[key][0],)).replace("%", "%%"))
            else:
                pieces.append(conversion)
                varying.append(columns[key])
        pieces.append(literal)
    fmt = "".join(pieces)
    if not varying:
        return [fmt % ()] * n
    return list(map(fmt.__mod__, zip(*varying, strict=True)))


def add_frame(
    dispatcher: BatchDispatcher,
    records: list[list[Any]],
    columns: list[list[Any]],
    *,
    routes: dict[str, list[_Sink] | None],
    sinks: dict[int, _Sink],
    make: Callable[[list[Any]], Any],
) -> bool:
    """Hand the whole frame to its logger's sinks, its lines built from ``columns``; False: the record path.

    Only when every record names one logger, every level is enabled and at or above every
    sink's level, every sink's format is compiled, and no record has exception text or a
    stack: what ``BatchDispatcher._add_run`` asks of a run, for the frame at once.
    """
    n = len(records)
    route = _frame_route(dispatcher, columns, n, routes=routes, sinks=sinks, make=make)
    if route is None:
        return False
    constant: dict[int, bool] = {}
    built = []
    for sink in route:
        try:
            lines = frame_lines(sink.format, columns, n, constant)
        except Exception:  # a value a conversion refuses: the record path reports it per record
            return False
        if lines is None:
            return False
        built.append(lines)
    for sink, lines in zip(route, built, strict=True):
        sink.lines.extend(lines)
        sink.records.extend(records)
    return True


def _frame_route(
    dispatcher: BatchDispatcher,
    columns: list[list[Any]],
    n: int,
    *,
    routes: dict[str, list[_Sink] | None],
    sinks: dict[int, _Sink],
    make: Callable[[list[Any]], Any],
) -> list[_Sink] | None:
    """The sinks of the frame's one logger when the whole frame may go to them at once, else None.

    Shortcut: as ``BatchDispatcher._add_run`` for a run, for the whole frame (no per-record
    ``isEnabledFor``, handler level, LogRecord); fast_guard decides (``frame_refusal``: one
    logger; ``batch_refusal``: levels, exception text or stack, the route and its sinks).
    """
    names = columns[F_NAME]
    if frame_refusal(names, n) is not None:
        return None
    name = names[0]
    logger = dispatcher.logger(name)
    try:
        route = routes[name] = dispatcher._route(logger, sinks, make)
    except Exception:  # the record-at-a-time path meets it again and counts it per record
        return None
    marked = any(columns[_EXC_TEXT]) or any(columns[_STACK_INFO])
    if route is None or batch_refusal(logger, set(columns[F_LEVELNO]), marked, route) is not None:
        return None
    return route
