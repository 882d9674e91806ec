"""The listener side of the wire codec: frame bytes -> validated records -> ``logging.LogRecord``.

The decoder is stateless (one ``unpackb`` per frame), bounded by :class:`~mplog.wire.schema.Limits`,
rejects every ext type and unknown versions, and raises only
:class:`~mplog.exceptions.FrameError`, whose ``reason`` names the counter. :func:`decode_header`
unpacks and checks the envelope, :func:`check_records` validates the records,
:func:`decode_frame` does both, and :func:`make_log_record` rebuilds a record from
validated fields (:mod:`mplog.wire.repair` repairs, record by record, a frame
:func:`check_records` or msgpack's UTF-8 check refused). Pure functions only: no I/O,
nothing logged.

The steps the repair runs again on a refused frame are public names of this module for it
(:mod:`mplog.wire.repair`): :func:`unpack_frame` (msgpack under the limits, its errors named),
:func:`check_header` (a version 1 frame's envelope and records array), :func:`check_record`
(one record), :func:`check_value` (one extra value) and :data:`SCALAR_TYPES` (the values that
need no check).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import msgpack

from mplog.exceptions import FrameError
from mplog.wire.column_check import plain_columns
from mplog.wire.columns import columns_frame, is_columns_frame
from mplog.wire.envelope import check_envelope
from mplog.wire.schema import (
    DEFAULT_LIMITS,
    F_CREATED,
    F_EXTRA,
    F_MSECS,
    F_RELATIVE_CREATED,
    FIELD_TYPES,
    MSECS_END,
    N_FIELDS,
    RECORD_FIELDS,
    Frame,
    Limits,
)

__all__ = [
    "MAX_NAME_CHARS",
    "RENAMED_PREFIX",
    "SCALAR_TYPES",
    "check_header",
    "check_record",
    "check_records",
    "check_value",
    "decode_frame",
    "decode_header",
    "make_log_record",
    "unpack_frame",
]

MAX_NAME_CHARS = 1024  # longest logger name dispatched (a longer one is repaired to "root")

SCALAR_TYPES = (str, int, float, bool, bytes, type(None))
# Names a rebuilt LogRecord already uses: what its class defines (an extra named like a
# method, e.g. "getMessage", would make every Formatter fail on it), the attributes every
# record has (the wire's fields, msg, args, exc_info: the standard value would overwrite
# the extra), and the two a Formatter sets. An extra named so is kept as mplog_extra_<name>.
_RESERVED = (
    frozenset(dir(logging.LogRecord))
    | frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__)
    | {"message", "asctime", "taskName"}
)
RENAMED_PREFIX = "mplog_extra_"


def _reject_ext(code: int, data: bytes) -> Any:
    raise FrameError("ext_type", f"ext type {code} is not allowed")


def check_value(value: Any, limits: Limits, depth: int) -> None:
    if isinstance(value, SCALAR_TYPES):
        return
    if depth >= limits.max_depth:
        raise FrameError("too_deep", f"extra value nested deeper than {limits.max_depth}")
    if type(value) is list:
        for item in value:
            if not isinstance(item, SCALAR_TYPES):
                check_value(item, limits, depth + 1)
        return
    if type(value) is dict:
        for key, item in value.items():
            if not isinstance(key, str):
                raise FrameError("bad_key", "extra map keys must be strings")
            if not isinstance(item, SCALAR_TYPES):
                check_value(item, limits, depth + 1)
        return
    raise FrameError("bad_field", f"extra value of type {type(value).__name__}")


_GOOD_SIGNATURES: set[tuple[type, ...]] = set()
_MAX_SIGNATURES = 1024  # optional fields give a few dozen in practice


def check_record(rec: Any, limits: Limits) -> None:
    if type(rec) is not list or len(rec) != N_FIELDS:
        raise FrameError("bad_record", f"a record must be an array of {N_FIELDS} fields")
    # Whether a field passes depends on its type alone, so a tuple of types that passed
    # once passes again: one lookup instead of twenty isinstance calls per record.
    signature = tuple(map(type, rec))
    if signature not in _GOOD_SIGNATURES:
        for i, (value, expected) in enumerate(zip(rec, FIELD_TYPES, strict=True)):
            if not isinstance(value, expected):
                raise FrameError("bad_field", f"{RECORD_FIELDS[i]} has type {type(value).__name__}")
        if len(_GOOD_SIGNATURES) < _MAX_SIGNATURES:
            _GOOD_SIGNATURES.add(signature)
    if not math.isfinite(rec[F_CREATED]) or not 0 <= rec[F_CREATED] < 2**40:
        raise FrameError("bad_field", "created must be a finite timestamp")
    # A NaN msecs makes %(msecs)d raise in every Formatter; one out of range (-1e300, 2**64 - 1)
    # was written as a timestamp with hundreds of digits (test_out_of_range_msecs_is_repaired).
    if not (0 <= rec[F_MSECS] < MSECS_END and math.isfinite(rec[F_RELATIVE_CREATED])):
        raise FrameError("bad_field", "msecs must be 0 <= msecs < 1000 and relativeCreated finite")
    extra = rec[F_EXTRA]
    if extra:
        if len(extra) > limits.max_extra_fields:
            raise FrameError("bad_field", f"more than {limits.max_extra_fields} extra fields")
        check_value(extra, limits, 0)


def check_header(obj: Any) -> Frame:
    if type(obj) is not list or len(obj) != 6:
        raise FrameError("not_a_frame", "a frame is an array of 6 items")
    records = obj[5]
    if type(records) is not list:
        check_envelope(obj, 0)  # a bad version or sender is named first
        raise FrameError("bad_header", "records must be an array")
    return Frame(check_envelope(obj, len(records)), obj[2], obj[3], obj[4], records)


def _reason_for(message: str) -> str:
    """Name the counter for an error raised by msgpack's unpacker (its messages, 1.0 to 1.2)."""
    text = message.lower()
    if "incomplete" in text:
        return "truncated"
    if "max_ext_len" in text or "timestamp" in text:  # every ext type is refused (-1 is msgpack's Timestamp)
        return "ext_type"
    if "exceeds max_" in text:  # a declared str/bin/array/map length over the limits
        return "over_limit"
    if "map key" in text:  # strict_map_key: only str keys
        return "bad_key"
    return "undecodable"


class _ItemBudget:
    """msgpack hooks that count the values a frame decodes to and stop it past ``limits.max_items``.

    Each hook runs once a list or map is built, so the count lags by at most one container
    (``max_records`` values).
    """

    __slots__ = ("left",)

    def __init__(self, limit: int) -> None:
        self.left = limit

    def _spend(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise FrameError("over_limit", "the frame decodes to more values than max_items")

    def array(self, value: list[Any]) -> list[Any]:
        self._spend(len(value) + 1)
        return value

    def map(self, value: dict[str, Any]) -> dict[str, Any]:
        self._spend(2 * len(value) + 1)
        return value


def unpack_frame(data: bytes, limits: Limits, unicode_errors: str) -> Any:
    options: dict[str, Any] = {}
    # Every value takes one byte at least, so a frame no longer than max_items cannot decode
    # to more: only longer frames (rare, and then mostly long strings) pay for the count.
    if len(data) > limits.max_items:
        budget = _ItemBudget(limits.max_items)
        options = {"list_hook": budget.array, "object_hook": budget.map}
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=_reject_ext,
            unicode_errors=unicode_errors,
            max_str_len=limits.max_str_len,
            max_bin_len=limits.max_bin_len,
            # No container may hold more than max_records values (a map's keys count too):
            # the item budget sees a container once it is built, so this bounds what one
            # unfinished container holds. How many extras a record keeps is check_record's.
            max_array_len=max(limits.max_records, N_FIELDS),
            max_map_len=max(limits.max_records // 2, limits.max_extra_fields),
            max_ext_len=0,
            **options,
        )
    except FrameError:
        raise
    except UnicodeDecodeError as exc:
        raise FrameError("bad_utf8", str(exc)) from None
    except msgpack.StackError:
        raise FrameError("too_deep", "nesting exceeds msgpack's stack") from None
    except msgpack.ExtraData:
        raise FrameError("trailing_data", "bytes after the frame") from None
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError) as exc:
        raise FrameError(_reason_for(str(exc)), str(exc)[:200]) from None


def decode_header(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Frame:
    """Unpack and check the frame envelope; records are returned unchecked."""
    if len(data) > limits.max_frame_bytes:
        raise FrameError("oversized", f"{len(data)} bytes > max_frame_bytes {limits.max_frame_bytes}")
    obj = unpack_frame(data, limits, "strict")
    if is_columns_frame(obj):  # version 2: the records as columns (mplog.wire.columns)
        return columns_frame(obj, limits)
    return check_header(obj)


def decode_frame(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Frame:
    """Decode and fully validate one frame.

    Raises:
        FrameError: with ``reason`` naming the counter (e.g. ``truncated``, ``bad_version``).
    """
    frame = decode_header(data, limits)
    check_records(frame.records, limits)
    return frame


def check_records(records: list[Any], limits: Limits = DEFAULT_LIMITS) -> list[list[Any]] | None:
    """Validate every record of a frame (types, finiteness, extras depth).

    Returns:
        The frame's columns (one list per field, :func:`mplog.wire.column_check.plain_columns`)
        when the whole-frame check passed it, for a dispatch that formats a frame at once;
        None when the records were checked one at a time (and passed).
    """
    if len(records) > limits.max_records:
        raise FrameError("over_limit", f"more than {limits.max_records} records")
    if records:
        columns = plain_columns(records)
        if columns is not None:
            return columns
    for rec in records:
        check_record(rec, limits)
    return None


def _all_plain(records: list[Any]) -> bool:
    """True when every record passes check_record and has no extras, checked a frame at a time (plain_columns)."""
    return plain_columns(records) is not None


_LogRecord = logging.LogRecord
_new = object.__new__
_record_factory = logging.getLogRecordFactory
# A LogRecord's attributes that a record factory is given (Logger.makeRecord's arguments).
_FACTORY_ARGUMENTS = frozenset(
    ("name", "levelno", "pathname", "lineno", "msg", "args", "exc_info", "funcName", "stack_info")
)


def _renamed(extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` with every name a LogRecord already uses written as ``mplog_extra_<name>``.

    An extra already named ``mplog_extra_<name>`` keeps its value. Only for records that
    carry such a name: the others cost one ``isdisjoint`` per record, as before.
    """
    kept = {key: value for key, value in extra.items() if key not in _RESERVED}
    for key, value in extra.items():
        if key in _RESERVED:
            kept.setdefault(RENAMED_PREFIX + key, value)
    return kept


def make_log_record(fields: list[Any], hostname: str = "") -> logging.LogRecord:
    """Build a LogRecord from validated fields (message already merged, no args).

    ``hostname`` becomes the record's ``hostname`` attribute (even when empty) unless an
    extra of that name is there; an extra named like a LogRecord attribute or method is
    kept as ``mplog_extra_<name>`` (docs/wire-format.md, "Extra values"). With a record
    factory other than ``LogRecord`` installed (``logging.setLogRecordFactory``), the record
    is the factory's (:func:`_from_factory`); otherwise it is built without running
    ``LogRecord.__init__``, whose clock, thread and process lookups would all be overwritten.
    """
    record: logging.LogRecord = _new(_LogRecord)
    attrs = record.__dict__
    extra = fields[F_EXTRA]
    if extra:
        attrs.update(extra if _RESERVED.isdisjoint(extra) else _renamed(extra))
    attrs.setdefault("hostname", hostname)  # set even when "": a format naming %(hostname)s works on every record
    (
        attrs["name"],
        attrs["levelno"],
        attrs["levelname"],
        attrs["msg"],
        attrs["created"],
        attrs["msecs"],
        attrs["relativeCreated"],
        attrs["pathname"],
        attrs["filename"],
        attrs["module"],
        attrs["lineno"],
        attrs["funcName"],
        attrs["thread"],
        attrs["threadName"],
        attrs["process"],
        attrs["processName"],
        attrs["taskName"],
        attrs["exc_text"],
        attrs["stack_info"],
        _,
    ) = fields  # in RECORD_FIELDS order (one unpacking: the fast way to set twenty attributes)
    attrs["args"] = None
    attrs["exc_info"] = None
    factory = _record_factory()
    if factory is not _LogRecord:
        return _from_factory(factory, attrs)
    return record


def _from_factory(factory: Callable[..., logging.LogRecord], attrs: dict[str, Any]) -> logging.LogRecord:
    """The record ``factory`` makes from the fields in ``attrs``, with the remaining attributes then set.

    The factory is called as ``Logger.makeRecord`` calls it (the message already merged, no
    args), so what it does with those arguments stays, and so do the attributes it adds.
    Every other attribute (the time, thread, process, levelname, exc_text, hostname, the
    extras) is the worker's, from the wire, whatever the factory set: the factory runs in
    the listener, not where the record was made. An exception from the factory propagates
    (the listener counts it as a dispatch error, as it does a logger's filter that raises).
    """
    record = factory(
        attrs["name"],
        attrs["levelno"],
        attrs["pathname"],
        attrs["lineno"],
        attrs["msg"],
        None,
        None,
        attrs["funcName"],
        attrs["stack_info"],
    )
    made = record.__dict__
    for key, value in attrs.items():
        if key not in _FACTORY_ARGUMENTS:
            made[key] = value
    return record
