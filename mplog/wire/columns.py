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

Worker side: :func:`pack_pending` packs a worker's pending batch (one flat list, :data:`ROW`
slots per record, :func:`flat_batch`) as version 2 when every record is a plain field list
(else as version 1, exactly as before); :func:`frame_of_body` puts the envelope in
front, the version read from the body's first byte. Listener side:
:func:`columns_frame` turns a decoded version 2 frame into the :class:`Frame` the rest of
the listener knows (rows rebuilt, and the columns when they passed the check whole).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

from mplog.exceptions import FrameError
from mplog.wire.column_check import columns_pass, value_passes
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

__all__ = [
    "PACKED",
    "PACKED_PAD",
    "MIN_COLUMNS",
    "ROW",
    "VERSION_COLUMNS",
    "columns_frame",
    "columns_of",
    "flat_batch",
    "frame_of_body",
    "is_columns_frame",
    "pack_body",
    "pack_pending",
]

_EXTRA = F_EXTRA
# Never sent as one value: they differ from record to record (message and the three times).
_VARYING = frozenset((F_MESSAGE, F_CREATED, F_MSECS, F_RELATIVE_CREATED))
_FOLDABLE_SET = frozenset(i for i in range(N_FIELDS) if i not in _VARYING)
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


# A worker's pending batch is one flat list, ROW slots per record in order (appending a
# record is one list.extend, and no list per record is kept until the flush): a common
# record's 20 fields, or a record already packed as ``(its bytes, PACKED, None, ...)``.
ROW = N_FIELDS


class _Packed:
    """The mark in a record's second slot saying its first slot holds the record already packed."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "PACKED"


PACKED = _Packed()
PACKED_PAD = (None,) * (ROW - 2)  # the rest of a packed record's slots


def flat_batch(items: list[Any]) -> list[Any]:
    """``items`` (field lists, records already packed as bytes) as a worker's pending batch."""
    flat: list[Any] = []
    for item in items:
        flat.extend((item, PACKED, *PACKED_PAD) if type(item) is bytes else item)
    return flat


def _rows(flat: list[Any]) -> list[Any]:
    """A pending batch's records: each a field list, or its packed bytes."""
    return [flat[k] if flat[k + 1] is PACKED else flat[k : k + ROW] for k in range(0, len(flat), ROW)]


def _packed_columns(flat: list[Any], n: int) -> list[tuple[Any, bytes]]:
    """Each of the 20 columns of a pending batch of ``n`` records as (its values, or its one value; those packed).

    A column goes as one value when every item packs to exactly the bytes its first does
    (equal is not enough: ``1``, ``True`` and ``1.0`` are equal and pack differently), and
    that value is no array (a column of arrays stays a column: the listener tells the two
    forms apart by the array). The bytes decide, so the records the listener reads back are
    the very ones the batch held, whatever their types. Raises what the packer raises, and
    for a batch holding a record already packed (the packer refuses PACKED).
    """
    head = array_header(n)
    out: list[tuple[Any, bytes]] = []
    for i in range(ROW):
        column = flat[i::ROW]  # one strided copy in C: no transposition of record lists
        packed = _pack(column)
        if i in _FOLDABLE_SET:
            first = column[0]
            one = _pack(first)
            if one[0] not in _ARRAY_FIRST_BYTES and packed == head + one * n:
                out.append((first, one))
                continue
        out.append((column, packed))
    return out


def columns_of(batch: list[list[Any]]) -> list[Any]:
    """The 20 columns of ``batch`` (field lists), each a list, or its one value when every record has it."""
    return [values for values, _ in _packed_columns(flat_batch(batch), len(batch))]


_pack: Callable[[Any], bytes]
try:  # the same packer as pack_records' batches (pyproject.toml says why)
    from ormsgpack import packb as _pack

    _COLUMNS = True
except ImportError:  # pragma: no cover  # installed without its dependencies: version 1 frames
    _pack = msgpack.packb
    _COLUMNS = False

# A version 2 body: the count, then an array of the 20 columns (array 16: 20 > 15 items).
_COLUMNS_HEADER = array_header(N_FIELDS)
# A worker sends a batch of fewer records as version 1 (pack_pending(columns=False)).
# Packing a column at a time has a cost per batch (20 slices and packs, ~125k instructions)
# that a small batch does not repay: below 8 records version 1 costs the worker ~110k
# instructions less per batch and the listener at most ~56k more per frame (callgrind,
# frames of 1, 4 and 8 records); from 16 the listener saves more than the worker spends
# (130k at 16, 520k at 64).
MIN_COLUMNS = 8


def pack_pending(packer: msgpack.Packer, flat: list[Any], limits: Limits, *, columns: bool = True) -> bytes:
    """A worker's pending batch (:func:`flat_batch`'s form) as the part of a frame after ``flags``; never raises.

    A batch of common records (the usual one) is packed as version 2: its count, then its
    columns. Anything else (a record already packed, a value the batch packer refuses), or
    any batch when ``columns`` is false (a worker's ``wire_version = 1``, a batch of fewer
    than :data:`MIN_COLUMNS` records), is packed as version 1's records array.
    """
    n = len(flat) // ROW
    if columns and n and _COLUMNS:
        try:
            parts = _packed_columns(flat, n)
            return _pack(n) + _COLUMNS_HEADER + b"".join([packed for _, packed in parts])
        except Exception:  # a record already packed, an odd value: version 1 below
            pass
    if _COLUMNS:
        try:  # each record's slots as a tuple (packed as the array its field list is), in C
            return _pack(list(zip(*[iter(flat)] * ROW, strict=True)))
        except Exception:  # a record already packed, an odd value: record by record where needed
            pass
    return array_header(n) + pack_records(packer, _rows(flat), limits)


def pack_body(packer: msgpack.Packer, items: list[Any], limits: Limits, *, columns: bool = True) -> bytes:
    """:func:`pack_pending` for a batch given as a list of records (field lists, records already packed)."""
    return pack_pending(packer, flat_batch(items), limits, columns=columns)


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
    given_once: list[int] = []  # fields sent as one value: checked once, not per record
    for i, column in enumerate(columns):
        if type(column) is not list:
            given_once.append(i)
        elif len(column) != count:
            raise FrameError("bad_header", f"column {i} has {len(column)} values for {count} records")
    if not count:
        return Frame(identity, seq, dropped, flags, [])
    if count > 1 and given_once:  # before any value is repeated for the records
        _check_what_one_values_stand_for(columns, given_once, count, limits)
    full: list[list[Any]] = []
    for i, column in enumerate(columns):
        if type(column) is list:
            full.append(column)
        elif i == _EXTRA and type(column) is dict and column:
            full.append([dict(column) for _ in range(count)])  # each record's own extras, as version 1 has
        else:
            full.append([column] * count)
    rows = list(map(list, zip(*full, strict=True)))
    passed = all(value_passes(i, columns[i]) for i in given_once) and columns_pass(full, count, frozenset(given_once))
    return Frame(identity, seq, dropped, flags, rows, full if passed else None)


def _check_what_one_values_stand_for(columns: list[Any], given_once: list[int], count: int, limits: Limits) -> None:
    """Refuse a frame whose one-value columns stand for more than a version 1 frame may carry.

    A column sent as one value is every record's: 100 KB of message in one value of a
    100 KB frame stood for 11,000 messages, 1.1 GB of lines written and 3.2 GB of listener
    memory (a hostile sender, 2 of 2 runs). The records a version 2 frame stands for may
    take no more than ``max_frame_bytes`` more than the frame (what the version 1 frame of
    the same records could hold), nor more than ``max_items`` values. A worker folds only
    the fields that are the same for a whole batch (logger name, path, process, ...), so its
    frames stand for a few bytes per record more than they hold.

    Raises:
        FrameError: ``over_limit``.
    """
    extra_bytes = extra_items = 0
    for i in given_once:
        value = columns[i]
        kind = type(value)
        if kind is str:
            size = len(value) if value.isascii() else 4 * len(value)
        elif kind is dict or kind is list or kind is bytes:
            try:
                size = len(msgpack.packb(value, use_bin_type=True))
            except (TypeError, ValueError, OverflowError):
                size = limits.max_frame_bytes  # it does not pack back (a key the packer refuses): the most
            if kind is not bytes:
                extra_items += _values_in(value) * (count - 1)
        else:
            continue  # a number, a bool or None: a few bytes a record, within the item budget
        extra_bytes += size * (count - 1)
    if extra_bytes > limits.max_frame_bytes or count * _ITEMS_PER_RECORD + extra_items > limits.max_items:
        raise FrameError(
            "over_limit",
            f"columns sent as one value stand for {extra_bytes} bytes and {extra_items} values more than the frame "
            f"holds ({count} records): more than max_frame_bytes or max_items allow",
        )


def _values_in(value: Any) -> int:
    """How many values a decoded container holds, itself included (it was decoded, so this is bounded)."""
    count, stack = 0, [value]
    while stack:
        item = stack.pop()
        count += 1
        if type(item) is dict:
            stack.extend(item.keys())
            stack.extend(item.values())
        elif type(item) is list:
            stack.extend(item)
    return count
