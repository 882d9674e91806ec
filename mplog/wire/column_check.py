"""The listener's whole-frame record check, done a column at a time (issue 17, lever P2).

:func:`plain_columns` decides what checking each record of a frame would decide (every
field of the type the wire allows, the three time fields finite, ``created`` within
``0 <= t < 2**40``, ``msecs`` within ``0 <= msecs < 1000``) for the common frame with no
extras, in a few calls into C per field instead of work per record in Python, and hands
back the frame's columns (one list per field) so that the dispatch can format a whole
frame from them (:mod:`mplog.listener.frame_lines`):

- the transposition is one flatten and 20 strided slices;
- a ``str`` column is accepted by one ``str.join`` (TypeError for anything that is not a
  str), an ``int`` column by one ``array('q', ...)`` (TypeError for a float or a str, and
  an int past 64 bits raises OverflowError), an optional column by one ``count(None)``;
- a column that one call does not accept is checked exactly as before, by its set of types;
- the three number columns by their sums (``sum`` raises TypeError for anything but int,
  float and bool among what msgpack gives, and a NaN or an infinity makes the sum
  non-finite), then ``min``/``max`` for the bounds of ``created`` and ``msecs``.

None means "look at each record" (:func:`mplog.wire.decode.check_records` then does),
never "bad". ``tests/unit/test_wire.py`` and ``tests/unit/test_frame_columns.py`` hold it
to the record-by-record check.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from itertools import chain
from typing import Any

from mplog.wire.schema import F_CREATED, F_EXTRA, F_MSECS, F_RELATIVE_CREATED, FIELD_TYPES, MSECS_END, N_FIELDS

__all__ = ["all_int", "all_str", "columns_pass", "plain_columns", "value_passes"]

# Per field, the exact types msgpack can give that pass isinstance(value, FIELD_TYPES[i])
# (bool is an int).
COLUMN_TYPES: tuple[frozenset[type], ...] = tuple(
    frozenset(t for t in (str, int, bool, float, bytes, type(None), list, dict) if issubclass(t, kind))
    for kind in FIELD_TYPES
)
_STR = tuple(i for i, kind in enumerate(FIELD_TYPES) if kind is str)  # name, levelname, message, paths, module
_OPT_STR = tuple(i for i, kind in enumerate(FIELD_TYPES) if kind == (str, type(None)))
_INT = tuple(i for i, kind in enumerate(FIELD_TYPES) if kind is int)  # levelno, lineno
_OPT_INT = tuple(i for i, kind in enumerate(FIELD_TYPES) if kind == (int, type(None)))  # thread, process
_CREATED, _MSECS, _RELATIVE, _EXTRA = F_CREATED, F_MSECS, F_RELATIVE_CREATED, F_EXTRA
_TIME_END = float(2**40)
_flatten = chain.from_iterable
_list_len = list.__len__


def all_str(column: Sequence[Any]) -> bool:
    """Whether every item is a str (one str.join)."""
    try:
        "".join(column)
    except TypeError:
        return False
    return True


def all_int(column: Sequence[Any]) -> bool:
    """Whether every item is an int (or bool) of at most 64 bits (one array('q'))."""
    try:
        array("q", column)
    except (TypeError, OverflowError):
        return False
    return True


def _column_passes(i: int, column: list[Any], n: int) -> bool:
    """Whether every value of field ``i``'s column has a type the field allows."""
    if i in _STR:
        if all_str(column):
            return True
    elif i in _OPT_STR:
        if column.count(None) == n or all_str(column):
            return True
    elif i in _INT:
        if all_int(column):
            return True
    elif i in _OPT_INT and (column.count(None) == n or all_int(column)):
        return True
    return COLUMN_TYPES[i].issuperset(map(type, column))  # a mix one call does not accept: by type, as before


_TYPED = (*_STR, *_OPT_STR, *_INT, *_OPT_INT)


def plain_columns(records: list[Any]) -> list[list[Any]] | None:
    """The frame's columns when every record passes the record check and has no extras, else None.

    Args:
        records: the decoded records of one frame (not empty), unchecked.

    Returns:
        One list per field (``columns[i][k]`` is field ``i`` of record ``k``), or None when
        a record is not a list of 20 fields, carries extras, or any value would need a
        closer look.
    """
    try:
        if set(map(_list_len, records)) != {N_FIELDS}:  # TypeError for an item that is not a list
            return None
    except TypeError:
        return None
    flat = list(_flatten(records))
    columns = [flat[i::N_FIELDS] for i in range(N_FIELDS)]
    return columns if columns_pass(columns, len(records)) else None


def columns_pass(columns: list[list[Any]], n: int, checked: frozenset[int] = frozenset()) -> bool:
    """Whether the records whose 20 columns (of ``n`` values each) these are all pass the record check, with no extras.

    ``checked``: fields already known to pass (a column sent as one value, checked by
    :func:`value_passes`). False means "look at each record", never "bad".
    """
    try:
        return (
            (_EXTRA in checked or columns[_EXTRA].count({}) == n)  # extras: checked record by record
            and all(_column_passes(i, columns[i], n) for i in _TYPED if i not in checked)
            and _times_pass(columns, checked)
        )
    except Exception:  # a value whose type or size the calls above refuse: the record path decides
        return False


def _times_pass(columns: list[list[Any]], checked: frozenset[int]) -> bool:
    """The three number columns: numbers, finite, ``0 <= created < 2**40`` and ``0 <= msecs < 1000``.

    A non-number raises TypeError; a NaN or an infinity makes a sum non-finite (``min`` and
    ``max`` can step over a NaN, so the sum stays); a finite sum too large for a float raises
    OverflowError (then each record is looked at). ``min``/``max`` bound ``created`` and
    ``msecs``: an msecs of -1e300 or 2**64 - 1 used to pass here and be written as it came
    (test_out_of_range_msecs_is_repaired).
    """
    created, msecs = columns[_CREATED], columns[_MSECS]
    return (
        (_CREATED in checked or (math.isfinite(sum(created)) and min(created) >= 0 and max(created) < _TIME_END))
        and (_MSECS in checked or (math.isfinite(sum(msecs)) and min(msecs) >= 0 and max(msecs) < MSECS_END))
        and (_RELATIVE in checked or math.isfinite(sum(columns[_RELATIVE])))
    )


def value_passes(i: int, value: Any) -> bool:
    """Whether ``value`` passes the record check as field ``i`` (with no extras): one value standing for a column."""
    if type(value) not in COLUMN_TYPES[i]:
        return False
    if i == _EXTRA:
        return not value
    if i == _CREATED:
        return math.isfinite(value) and 0 <= value < _TIME_END
    if i == _MSECS:
        return bool(0 <= value < MSECS_END)  # False for a NaN and the infinities too
    if i == _RELATIVE:
        return math.isfinite(value)
    return True
