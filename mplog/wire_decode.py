"""The listener side of the wire codec: frame bytes -> validated records -> ``logging.LogRecord``.

The decoder is stateless (one ``unpackb`` per frame), bounded by :class:`~mplog.wire_schema.Limits`,
rejects every ext type and unknown versions, and raises only
:class:`~mplog.exceptions.FrameError`, whose ``reason`` names the counter. :func:`decode_header`
unpacks and checks the envelope, :func:`check_records` validates the records,
:func:`decode_frame` does both, and :func:`make_log_record` rebuilds a record from
validated fields (:mod:`mplog.wire_repair` repairs, record by record, a frame
:func:`check_records` or msgpack's UTF-8 check refused). Pure functions only: no I/O,
nothing logged.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import msgpack

from mplog.exceptions import FrameError
from mplog.wire_schema import (
    _FIELD_TYPES,
    _N_FIELDS,
    _NUM,
    DEFAULT_LIMITS,
    RECORD_FIELDS,
    VERSION,
    Frame,
    Limits,
    Sender,
)

__all__ = [
    "MAX_NAME_CHARS",
    "check_records",
    "decode_frame",
    "decode_header",
    "make_log_record",
]

MAX_NAME_CHARS = 1024  # longest logger name dispatched (a longer one is repaired to "root")

_SCALARS = (str, int, float, bool, bytes, type(None))
# Names the LogRecord class defines: an extra named like one (e.g. "getMessage") would
# shadow the method on the rebuilt record and make every Formatter fail on it.
_CLASS_ATTRS = frozenset(dir(logging.LogRecord))


def _reject_ext(code: int, data: bytes) -> Any:
    raise FrameError("ext_type", f"ext type {code} is not allowed")


def _check_value(value: Any, limits: Limits, depth: int) -> None:
    if isinstance(value, _SCALARS):
        return
    if depth >= limits.max_depth:
        raise FrameError("too_deep", f"extra value nested deeper than {limits.max_depth}")
    if type(value) is list:
        for item in value:
            if not isinstance(item, _SCALARS):
                _check_value(item, limits, depth + 1)
        return
    if type(value) is dict:
        for key, item in value.items():
            if not isinstance(key, str):
                raise FrameError("bad_key", "extra map keys must be strings")
            if not isinstance(item, _SCALARS):
                _check_value(item, limits, depth + 1)
        return
    raise FrameError("bad_field", f"extra value of type {type(value).__name__}")


_GOOD_SIGNATURES: set[tuple[type, ...]] = set()
_MAX_SIGNATURES = 1024  # optional fields give a few dozen in practice


def _check_record(rec: Any, limits: Limits) -> None:
    if type(rec) is not list or len(rec) != _N_FIELDS:
        raise FrameError("bad_record", f"a record must be an array of {_N_FIELDS} fields")
    # Whether a field passes depends on its type alone, so a tuple of types that passed
    # once passes again: one lookup instead of twenty isinstance calls per record.
    signature = tuple(map(type, rec))
    if signature not in _GOOD_SIGNATURES:
        for i, (value, expected) in enumerate(zip(rec, _FIELD_TYPES, strict=True)):
            if not isinstance(value, expected):
                raise FrameError("bad_field", f"{RECORD_FIELDS[i]} has type {type(value).__name__}")
        if len(_GOOD_SIGNATURES) < _MAX_SIGNATURES:
            _GOOD_SIGNATURES.add(signature)
    if not math.isfinite(rec[4]) or not 0 <= rec[4] < 2**40:
        raise FrameError("bad_field", "created must be a finite timestamp")
    if not (math.isfinite(rec[5]) and math.isfinite(rec[6])):  # %(msecs)d would raise in every Formatter
        raise FrameError("bad_field", "msecs and relativeCreated must be finite")
    extra = rec[-1]
    if extra:
        if len(extra) > limits.max_extra_fields:
            raise FrameError("bad_field", f"more than {limits.max_extra_fields} extra fields")
        _check_value(extra, limits, 0)


def _check_header(obj: Any) -> Frame:
    if type(obj) is not list or len(obj) != 6:
        raise FrameError("not_a_frame", "a frame is an array of 6 items")
    version, sender, seq, dropped, flags, records = obj
    if type(version) is not int:
        raise FrameError("bad_version", f"version must be the int {VERSION}, got {type(version).__name__}")
    if version != VERSION:
        raise FrameError("bad_version", f"unsupported frame version {version!r}")
    if (
        type(sender) is not list
        or len(sender) != 4
        or type(sender[0]) is not str
        or type(sender[1]) is not int
        or not isinstance(sender[2], _NUM)
        or type(sender[3]) is not int
    ):
        raise FrameError("bad_header", "sender must be [host:str, pid:int, start_time:float, stream:int]")
    for name, value in (("seq", seq), ("dropped", dropped), ("flags", flags)):
        if type(value) is not int or value < 0:
            raise FrameError("bad_header", f"{name} must be a non-negative int")
    if type(records) is not list:
        raise FrameError("bad_header", "records must be an array")
    return Frame(Sender(*sender), seq, dropped, flags, records)


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


def _unpack(data: bytes, limits: Limits, unicode_errors: str) -> Any:
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
            max_array_len=max(limits.max_records, _N_FIELDS),
            max_map_len=limits.max_extra_fields,
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
    return _check_header(_unpack(data, limits, "strict"))


def decode_frame(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Frame:
    """Decode and fully validate one frame.

    Raises:
        FrameError: with ``reason`` naming the counter (e.g. ``truncated``, ``bad_version``).
    """
    frame = decode_header(data, limits)
    check_records(frame.records, limits)
    return frame


def check_records(records: list[Any], limits: Limits = DEFAULT_LIMITS) -> None:
    """Validate every record of a frame (types, finiteness, extras depth)."""
    if len(records) > limits.max_records:
        raise FrameError("bad_header", f"more than {limits.max_records} records")
    if records and _all_plain(records):
        return
    for rec in records:
        _check_record(rec, limits)


# Per field, the exact types msgpack can give that pass isinstance(value, _FIELD_TYPES[i])
# (bool is an int).
_COLUMN_TYPES: tuple[frozenset[type], ...] = tuple(
    frozenset(t for t in (str, int, bool, float, bytes, type(None), list, dict) if issubclass(t, kind))
    for kind in _FIELD_TYPES
)


def _all_plain(records: list[Any]) -> bool:
    """True when every record passes _check_record and has no extras, checked a frame at a time.

    The frame is turned into its columns (one tuple per field, by ``zip``) and each column's
    set of types compared with the field's, and the three time fields are checked through
    sum/min/max: a few calls in C per field instead of work per record in Python.
    False means "look at each record", not "bad".
    """
    try:
        if set(map(type, records)) != {list} or set(map(len, records)) != {_N_FIELDS}:
            return False
        columns = list(zip(*records, strict=True))
        if any(columns[-1]):  # extras: their values are checked record by record
            return False
        for allowed, column in zip(_COLUMN_TYPES, columns, strict=True):
            if not allowed.issuperset(map(type, column)):
                return False
        created = columns[4]
        # A NaN or an infinity anywhere makes a sum non-finite; a finite sum too large for a
        # float raises OverflowError (then each record is looked at).
        return (
            math.isfinite(sum(created))
            and min(created) >= 0
            and max(created) < 2**40
            and math.isfinite(sum(columns[5]))
            and math.isfinite(sum(columns[6]))
        )
    except Exception:  # an overflow, a value whose type cannot be tested
        return False


_LogRecord = logging.LogRecord
_new = object.__new__


def make_log_record(fields: list[Any], hostname: str = "") -> logging.LogRecord:
    """Build a LogRecord from validated fields (message already merged, no args)."""
    record: logging.LogRecord = _new(_LogRecord)
    attrs = record.__dict__
    extra = fields[19]
    if extra:
        if _CLASS_ATTRS.isdisjoint(extra):
            attrs.update(extra)
        else:
            attrs.update({k: v for k, v in extra.items() if k not in _CLASS_ATTRS})
    if hostname:
        attrs.setdefault("hostname", hostname)
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
    ) = fields
    attrs["args"] = None
    attrs["exc_info"] = None
    return record
