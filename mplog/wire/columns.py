"""Wire version 2: a frame's records sent as columns (issue 17, lever W2; docs/wire-format.md).

A version 2 frame is ``[2, sender, seq, dropped, flags, count, columns]``: the envelope
of version 1, then the number of records and their 20 fields as columns, in
``RECORD_FIELDS`` order. A column is either an array of exactly ``count`` values (field
``i`` of each record) or one value that every record has (no field's value is an array,
so the two cannot be confused). The records are the ones the version 1 frame
``[1, sender, seq, dropped, flags, rows]`` with the same rows carries, and the listener
treats them exactly so: same checks, repair, limits, accounting and acknowledgements.

Why: the listener's decode and check cost ~1 us per record on version 1 (msgpack builds
20 objects and a list per record, then the check transposes them); with columns, msgpack
builds 20 lists per frame, a column that one value fills (the logger name, level, process,
path, ...) is one object, and the check is a few calls into C per column
(:func:`mplog.wire.column_check.columns_pass`), so the frame's lines can be built from its
columns (:mod:`mplog.listener.frame_lines`). The frame is also ~60% smaller on the wire.

Worker side: :func:`pack_body` packs a batch as version 2 when every item is a plain field
list (else as version 1, exactly as before); :func:`frame_of_body` puts the envelope in
front, the version read from the body's first byte. Listener side:
:func:`columns_frame` turns a decoded version 2 frame into the :class:`Frame` the rest of
the listener knows (rows rebuilt, and the columns when they passed the check whole).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

from mplog.exceptions import FrameError
from mplog.wire.column_check import all_int, all_str, columns_pass, value_passes
from mplog.wire.encode import array_header, pack_records
from mplog.wire.envelope import check_envelope
from mplog.wire.schema import (
    F_CREATED,
    F_EXTRA,
    F_MESSAGE,
    F_MSECS,
    F_RELATIVE_CREATED,
    N_FIELDS,
    VERSION,
    VERSION_COLUMNS,
    Frame,
    Limits,
)

__all__ = ["VERSION_COLUMNS", "columns_frame", "columns_of", "frame_of_body", "is_columns_frame", "pack_body"]

_EXTRA = F_EXTRA
# Never sent as one value: they differ from record to record (message and the three times).
_VARYING = frozenset((F_MESSAGE, F_CREATED, F_MSECS, F_RELATIVE_CREATED))
_FOLDABLE = tuple(i for i in range(N_FIELDS) if i not in _VARYING)
# A decoded record of version 1 costs at least 21 values of the item budget (its 20 fields
# and its array) and its extras map one more: the same budget bounds a version 2 frame,
# whose values are fewer than the records they stand for.
_ITEMS_PER_RECORD = N_FIELDS + 2
_V1_HEAD = b"\x96\x01"  # fixarray of 6, version 1
_V2_HEAD = b"\x97\x02"  # fixarray of 7, version 2
# A version 1 body starts with its records' array header (fixarray, array 16, array 32); a
# version 2 body with its count, an int (whichever of msgpack's int encodings the packer picks).
_ARRAY_FIRST_BYTES = frozenset((*range(0x90, 0xA0), 0xDC, 0xDD))


# ---------------------------------------------------------------- worker side


def _one_value(column: tuple[Any, ...], n: int) -> bool:
    """Whether every item of ``column`` packs exactly as its first does (then it is sent once).

    Equal is not enough: ``1 == True == 1.0`` pack differently, so an int column is
    folded only for an int other than 0 and 1, and ``array('q')`` refuses a float; a str
    column's ``str.join`` refuses anything but str.
    """
    first = column[0]
    if first is None:
        return column.count(None) == n
    kind = type(first)
    if kind is str:
        return column.count(first) == n and all_str(column)
    if kind is int and first not in (0, 1):
        return column.count(first) == n and all_int(column)
    # The worker's extras column: the one empty dict of every plain record (plain_fields).
    return kind is dict and not first and column.count(first) == n


def columns_of(batch: list[list[Any]]) -> list[Any]:
    """The 20 columns of ``batch`` (field lists), each a tuple, or its one value when every record has it."""
    n = len(batch)
    columns: list[Any] = list(zip(*batch, strict=True))
    for i in _FOLDABLE:
        if _one_value(columns[i], n):
            columns[i] = columns[i][0]
    return columns


_pack_batch: Callable[[Any], bytes] | None
try:  # the same packer as pack_records' batches (pyproject.toml says why)
    from ormsgpack import packb as _ormsgpack_packb

    _pack_batch = _ormsgpack_packb
except ImportError:  # pragma: no cover  # installed without its dependencies: version 1 frames
    _pack_batch = None


def pack_body(packer: msgpack.Packer, items: list[Any], limits: Limits, *, columns: bool = True) -> bytes:
    """A batch as the part of a frame after ``flags``; never raises.

    A batch of field lists (the usual one) is packed as version 2: its count, then its
    columns. Anything else (a record already packed, a value the batch packer refuses), or
    any batch when ``columns`` is false (a worker's ``wire_version = 1``), is packed as
    version 1's records array, by :func:`mplog.wire.encode.pack_records`.
    """
    if columns and items and _pack_batch is not None and bytes not in set(map(type, items)):
        try:
            packed: bytes = _pack_batch((len(items), columns_of(items)))
            return packed[1:]  # the count and the columns, without the fixarray(2) byte
        except Exception:  # an odd value somewhere: version 1, record by record where needed
            pass
    return array_header(len(items)) + pack_records(packer, items, limits)


def frame_of_body(sender_bytes: bytes, seq: int, dropped: int, flags: int, body: bytes) -> bytes:
    """A frame around a body from :func:`pack_body`: version 1 when the body starts with an array, else version 2."""
    head: bytes = msgpack.packb([seq, dropped, flags], use_bin_type=True)[1:]  # drop the fixarray byte
    return (_V1_HEAD if body[0] in _ARRAY_FIRST_BYTES else _V2_HEAD) + sender_bytes + head + body


# ---------------------------------------------------------------- listener side


def is_columns_frame(obj: Any) -> bool:
    """Whether a decoded frame is a version 2 frame (an array of 7 items starting with the int 2)."""
    return type(obj) is list and len(obj) == 7 and type(obj[0]) is int and obj[0] == VERSION_COLUMNS


def columns_frame(obj: list[Any], limits: Limits) -> Frame:
    """The :class:`Frame` of a decoded version 2 frame: its rows, and its columns when they passed whole.

    The envelope is version 1's, checked as such (:func:`mplog.wire.envelope.check_envelope`).
    A column that does not pass the whole-frame check leaves
    ``columns`` None: the listener then checks, repairs and counts each record as it
    would those of a version 1 frame.

    Raises:
        FrameError: ``bad_header`` for a count or columns of the wrong shape,
            ``over_limit`` for more records than the limits allow.
    """
    _, sender, seq, dropped, flags, count, columns = obj
    if type(count) is not int or count < 0:
        check_envelope([VERSION, sender, seq, dropped, flags, None], 0)  # a bad sender is named first
        raise FrameError("bad_header", "count must be a non-negative int")
    identity = check_envelope([VERSION, sender, seq, dropped, flags, None], count)
    if count > limits.max_records or count * _ITEMS_PER_RECORD > limits.max_items:
        raise FrameError("over_limit", f"{count} records: more than max_records or max_items allow")
    if type(columns) is not list or len(columns) != N_FIELDS:
        raise FrameError("bad_header", f"columns must be an array of {N_FIELDS} items")
    full: list[list[Any]] = []
    given_once = []  # fields sent as one value: checked once, not per record
    for i, column in enumerate(columns):
        if type(column) is list:
            if len(column) != count:
                raise FrameError("bad_header", f"column {i} has {len(column)} values for {count} records")
            full.append(column)
            continue
        given_once.append(i)
        if i == _EXTRA and type(column) is dict and column:
            full.append([dict(column) for _ in range(count)])  # each record's own extras, as version 1 has
        else:
            full.append([column] * count)
    if not count:
        return Frame(identity, seq, dropped, flags, [])
    rows = list(map(list, zip(*full, strict=True)))
    passed = all(value_passes(i, columns[i]) for i in given_once) and columns_pass(full, count, frozenset(given_once))
    return Frame(identity, seq, dropped, flags, rows, full if passed else None)
