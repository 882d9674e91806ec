"""The wire codec: log records <-> msgpack frame bytes (see docs/wire-format.md).

Pure functions only: no I/O, nothing logged. A frame is one msgpack array::

    [version, sender, seq, dropped, flags, records]

``sender`` is ``[host, pid, start_time, stream]``; ``records`` is an array of
record arrays whose positions are given by :data:`RECORD_FIELDS`. The decoder is
stateless (one ``unpackb`` per frame), bounded by :class:`Limits`, rejects every
ext type and unknown versions, and raises only :class:`~mplog.exceptions.FrameError`.
"""

from __future__ import annotations

import logging
import math
import operator
import threading
import traceback
from dataclasses import dataclass
from itertools import repeat
from typing import Any, NamedTuple

import msgpack

from mplog.exceptions import FrameError

__all__ = [
    "FLAG_FINAL",
    "RECORD_FIELDS",
    "VERSION",
    "Frame",
    "Limits",
    "Sender",
    "build_frame",
    "decode_frame",
    "encode_record",
    "encode_sender",
    "make_log_record",
    "record_fields",
]

VERSION = 1
FLAG_FINAL = 1  # the sender is closing; ``seq`` is its final next-sequence number

RECORD_FIELDS: tuple[str, ...] = (
    "name",
    "levelno",
    "levelname",
    "message",
    "created",
    "msecs",
    "relativeCreated",
    "pathname",
    "filename",
    "module",
    "lineno",
    "funcName",
    "thread",
    "threadName",
    "process",
    "processName",
    "taskName",
    "exc_text",
    "stack_info",
    "extra",
)
_N_FIELDS = len(RECORD_FIELDS)

_NUM = (int, float)
_OPT_STR = (str, type(None))
_OPT_INT = (int, type(None))
# Expected Python types per position after unpacking (bool is an int subclass; allowed).
_FIELD_TYPES: tuple[Any, ...] = (
    str,  # name
    int,  # levelno
    str,  # levelname
    str,  # message
    _NUM,  # created
    _NUM,  # msecs
    _NUM,  # relativeCreated
    str,  # pathname
    str,  # filename
    str,  # module
    int,  # lineno
    _OPT_STR,  # funcName
    _OPT_INT,  # thread
    _OPT_STR,  # threadName
    _OPT_INT,  # process
    _OPT_STR,  # processName
    _OPT_STR,  # taskName
    _OPT_STR,  # exc_text
    _OPT_STR,  # stack_info
    dict,  # extra
)

# Attributes every LogRecord has (plus what Formatter adds); anything else is an extra.
_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_N_STANDARD = len(logging.LogRecord("", 0, "", 0, "", (), None).__dict__)
_HAS_TASK_NAME = "taskName" in logging.LogRecord("", 0, "", 0, "", (), None).__dict__  # 3.12+
_NO_EXTRAS: dict[str, Any] = {}  # packed, never changed
_SCALARS = (str, int, float, bool, bytes, type(None))
# Names the LogRecord class defines: an extra named like one (e.g. "getMessage") would
# shadow the method on the rebuilt record and make every Formatter fail on it.
_CLASS_ATTRS = frozenset(dir(logging.LogRecord))
_exception_formatter = logging.Formatter()


@dataclass(frozen=True)
class Limits:
    """Bounds applied by the encoder (worker side) and the decoder (listener side)."""

    max_frame_bytes: int = 16 * 1024 * 1024
    max_records: int = 100_000
    max_str_len: int = 4 * 1024 * 1024
    max_bin_len: int = 1024 * 1024
    max_extra_fields: int = 256
    max_depth: int = 8
    max_message_chars: int = 256 * 1024
    max_repr_chars: int = 8192


DEFAULT_LIMITS = Limits()


class Sender(NamedTuple):
    """Who sent a frame: one sequence stream of one process incarnation."""

    host: str
    pid: int
    start_time: float
    stream: int

    @property
    def key(self) -> str:
        return f"{self.host}/{self.pid}/{self.stream:08x}"


class Frame(NamedTuple):
    """A decoded frame; ``records`` are validated field lists (see RECORD_FIELDS)."""

    sender: Sender
    seq: int
    dropped: int
    flags: int
    records: list[list[Any]]


# ---------------------------------------------------------------- encoding


def encode_sender(sender: Sender) -> bytes:
    """Return the packed sender array (cached by the worker: it never changes)."""
    packed: bytes = msgpack.packb(list(sender), use_bin_type=True)
    return packed


def build_frame(sender_bytes: bytes, seq: int, dropped: int, flags: int, records: list[bytes]) -> bytes:
    """Join already-packed records into one frame without re-encoding them."""
    n = len(records)
    if n < 16:
        array_header = bytes((0x90 | n,))
    elif n < 0x10000:
        array_header = b"\xdc" + n.to_bytes(2, "big")
    else:
        array_header = b"\xdd" + n.to_bytes(4, "big")
    head: bytes = msgpack.packb([seq, dropped, flags], use_bin_type=True)[1:]  # drop the fixarray byte
    return b"\x96\x01" + sender_bytes + head + array_header + b"".join(records)


def _bounded_text(text: str, limit: int) -> str:
    if len(text) > limit:
        return f"{text[:limit]}...[mplog: truncated {len(text) - limit} chars]"
    return text


def _safe_repr(value: Any, limit: int) -> str:
    try:
        text = repr(value)
        if not isinstance(text, str):
            raise TypeError("__repr__ returned a non-string")
    except Exception as exc:  # a hostile __repr__ must not reach the caller
        return f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"
    return _bounded_text(text, limit)


def _unformattable(record: logging.LogRecord, exc: Exception, limits: Limits) -> str:
    template = _safe_repr(record.msg, limits.max_repr_chars)
    args = _safe_repr(record.args, limits.max_repr_chars)
    return f"{template} <unformattable: {type(exc).__name__}> args={args}"


def _merge_message(record: logging.LogRecord, limits: Limits) -> str:
    try:
        message = record.getMessage()
        if not isinstance(message, str):
            message = str(message)
    except Exception as exc:
        message = _unformattable(record, exc, limits)
    return _bounded_text(message, limits.max_message_chars)


def _exception_text(record: logging.LogRecord, limits: Limits) -> str | None:
    text = record.exc_text
    if not text and record.exc_info:
        try:
            text = _exception_formatter.formatException(record.exc_info)
        except Exception as exc:
            try:
                summary = "".join(traceback.format_exception_only(record.exc_info[0], None))
            except Exception:
                summary = "<exception>"
            text = f"{summary.strip()} <traceback unavailable: {type(exc).__name__}>"
    if text and not isinstance(text, str):
        text = _safe_repr(text, limits.max_message_chars)
    return _bounded_text(text, limits.max_message_chars) if text else None


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    attrs = record.__dict__
    if len(attrs) <= _N_STANDARD:
        return {}
    return {k: v for k, v in attrs.items() if k not in _STANDARD_ATTRS}


def record_fields(record: logging.LogRecord, limits: Limits = DEFAULT_LIMITS) -> list[Any]:
    """Return the field list of ``record`` (message merged, exception rendered to text)."""
    attrs = record.__dict__
    if len(attrs) <= _N_STANDARD and not (record.exc_info or record.exc_text or record.stack_info):
        # The common record (no extras, exception or stack): the same fields, fewer calls;
        # this runs on every logging call of every worker.
        try:
            message = record.getMessage()
            if not isinstance(message, str):
                message = str(message)
        except Exception as exc:
            message = _unformattable(record, exc, limits)
        if len(message) > limits.max_message_chars:
            message = _bounded_text(message, limits.max_message_chars)
        return [
            record.name,
            record.levelno,
            record.levelname,
            message,
            record.created,
            record.msecs,
            record.relativeCreated,
            record.pathname,
            record.filename,
            record.module,
            record.lineno,
            record.funcName,
            record.thread,
            record.threadName,
            record.process,
            record.processName,
            attrs.get("taskName"),
            None,
            None,
            {},
        ]
    stack = record.stack_info
    return [
        record.name,
        record.levelno,
        record.levelname,
        _merge_message(record, limits),
        record.created,
        record.msecs,
        record.relativeCreated,
        record.pathname,
        record.filename,
        record.module,
        record.lineno,
        record.funcName,
        record.thread,
        record.threadName,
        record.process,
        record.processName,
        getattr(record, "taskName", None),
        _exception_text(record, limits),
        _bounded_text(stack, limits.max_message_chars) if stack else None,
        _with_exception_fields(_extras(record), record, limits),
    ]


def _with_exception_fields(extras: dict[str, Any], record: logging.LogRecord, limits: Limits) -> dict[str, Any]:
    """Add ``exc_type`` and ``exc_message`` extras when the record carries an exception.

    Only the rendered ``exc_text`` crosses the wire as a field; structured outputs (e.g.
    :class:`mplog.formatters.JSONFormatter`) need the type and message apart, and the
    last line of a traceback cannot be parsed back reliably (multi-line messages, notes,
    exception groups). Extras the caller set under these names win.
    """
    info = record.exc_info
    if not info or not isinstance(info, tuple) or not isinstance(info[1], BaseException):
        return extras
    value = info[1]
    cls = type(value)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    try:
        message = str(value)
    except Exception as exc:  # a hostile __str__ must not reach the caller
        message = f"<unprintable {cls.__name__}: {type(exc).__name__}>"
    extras = dict(extras)
    extras.setdefault("exc_type", name)
    extras.setdefault("exc_message", _bounded_text(message, limits.max_message_chars))
    return extras


def _max_array(limits: Limits) -> int:
    return max(limits.max_records, _N_FIELDS)  # the decoder's max_array_len


_FLAT_TYPES = frozenset({bool, float, type(None)})


def _fits(value: Any, limits: Limits, depth: int) -> bool:  # noqa: PLR0911  # one return per msgpack type
    """True if the extra ``value`` packs into something the decoder accepts (see _check_value).

    Without this check a deep, large or int-keyed extra packs fine here and then the
    listener rejects the whole frame (see test_extras_over_the_decoder_limits_are_bounded_not_rejected).
    Exact types first: this runs on every record that has extras.
    """
    kind = type(value)
    if kind is str:
        return len(value) <= limits.max_message_chars
    if kind in _FLAT_TYPES:
        return True
    if kind is int:
        return bool(-(2**63) <= value < 2**64)
    if isinstance(value, str):
        return len(value) <= limits.max_message_chars
    if isinstance(value, (bool, float)):
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**64
    if isinstance(value, bytes):
        return len(value) <= limits.max_bin_len
    if depth >= limits.max_depth:
        return False
    if isinstance(value, (list, tuple)):
        return len(value) <= _max_array(limits) and all(_fits(item, limits, depth + 1) for item in value)
    if isinstance(value, dict):
        if len(value) > limits.max_extra_fields:
            return False
        cap = limits.max_message_chars
        for key, item in value.items():
            if type(key) is not str or len(key) > cap or not _fits(item, limits, depth + 1):
                return False
        return True
    return False


def _sanitize(value: Any, limits: Limits, depth: int, text_cap: int | None = None) -> Any:  # noqa: PLR0911
    """Make ``value`` packable within the decoder's limits: valid UTF-8, native types, bounded depth."""
    if isinstance(value, str):
        if text_cap is not None:
            value = _bounded_text(value, text_cap)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, bytes) and len(value) <= limits.max_bin_len:
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else repr(value)
    cap = limits.max_message_chars
    if depth < limits.max_depth and isinstance(value, (list, tuple)) and len(value) <= _max_array(limits):
        return [_sanitize(v, limits, depth + 1, cap) for v in value]
    if depth < limits.max_depth and isinstance(value, dict) and len(value) <= limits.max_extra_fields:
        return {
            _sanitize(k, limits, depth + 1, cap) if isinstance(k, str) else _safe_repr(k, 200): _sanitize(
                v, limits, depth + 1, cap
            )
            for k, v in value.items()
        }
    return _sanitize(_safe_repr(value, limits.max_repr_chars), limits, depth, cap)


def _encode_slow(fields: list[Any], limits: Limits) -> bytes:
    cap = limits.max_message_chars
    head = [_sanitize(v, limits, 0) for v in fields[:-1]]
    try:
        extra = {
            _sanitize(k, limits, 1, cap) if isinstance(k, str) else _safe_repr(k, 200): _sanitize(v, limits, 1, cap)
            for k, v in list(fields[-1].items())[: limits.max_extra_fields]
        }
    except Exception as exc:  # a container whose iteration raises
        extra = {"mplog_extra_error": f"<unencodable extra: {type(exc).__name__}>"}
    packed: bytes = msgpack.packb([*head, extra], use_bin_type=True)
    return packed


class _PackerSlot(threading.local):
    """One msgpack.Packer per thread (a Packer is not thread-safe), made on first use."""

    def __init__(self) -> None:
        self.packer = msgpack.Packer(use_bin_type=True)


_packer_slot = _PackerSlot()


def encode_record(record: logging.LogRecord, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Pack one record; never raises for any content of ``record``."""
    attrs = record.__dict__
    if len(attrs) <= _N_STANDARD and not (record.exc_info or record.exc_text or record.stack_info):
        # The common record (no extras, exception or stack), on every logging call of every
        # worker: record_fields()'s fast branch inlined, the message merged as
        # LogRecord.getMessage does, packed by this thread's reused Packer (half the cost
        # of packb). Every value is a str, int, float or None, so packing runs no Python
        # code and the Packer cannot be re-entered mid-pack, even by a signal handler that logs.
        try:
            if type(record) is logging.LogRecord:  # getMessage() inlined; a subclass may override it
                message = record.msg
                if type(message) is not str:
                    message = str(message)
                if record.args:
                    message = message % record.args
            else:
                message = record.getMessage()
                if not isinstance(message, str):
                    message = str(message)
        except Exception as exc:
            message = _unformattable(record, exc, limits)
        if len(message) > limits.max_message_chars:
            message = _bounded_text(message, limits.max_message_chars)
        try:
            return _packer_slot.packer.pack(  # type: ignore[no-any-return]
                [
                    record.name,
                    record.levelno,
                    record.levelname,
                    message,
                    record.created,
                    record.msecs,
                    record.relativeCreated,
                    record.pathname,
                    record.filename,
                    record.module,
                    record.lineno,
                    record.funcName,
                    record.thread,
                    record.threadName,
                    record.process,
                    record.processName,
                    attrs.get("taskName") if _HAS_TASK_NAME else None,
                    None,
                    None,
                    _NO_EXTRAS,
                ]
            )
        except Exception:  # an odd value (surrogates, a huge int): the general path below
            pass
    fields = record_fields(record, limits)
    try:
        extra = fields[-1]
        if extra and not _fits(extra, limits, 0):
            raise ValueError("extras need sanitizing")
        packed: bytes = msgpack.packb(fields, use_bin_type=True)
        return packed
    except Exception:  # surrogates, non-native extras, huge ints, deep nesting, over the limits
        return _encode_slow(fields, limits)


# ---------------------------------------------------------------- decoding


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


def decode_header(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Frame:
    """Unpack and check the frame envelope; records are returned unchecked."""
    if len(data) > limits.max_frame_bytes:
        raise FrameError("oversized", f"{len(data)} bytes > max_frame_bytes {limits.max_frame_bytes}")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=_reject_ext,
            max_str_len=limits.max_str_len,
            max_bin_len=limits.max_bin_len,
            max_array_len=max(limits.max_records, _N_FIELDS),
            max_map_len=limits.max_extra_fields,
            max_ext_len=0,
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
    return _check_header(obj)


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


_CREATED, _MSECS, _RELATIVE, _EXTRA = (operator.itemgetter(i) for i in (4, 5, 6, 19))


def _all_plain(records: list[Any]) -> bool:
    """True when every record passes _check_record and has no extras, checked a frame at a time.

    The usual frame's records share one or two type signatures; comparing those, and the
    three time fields through sum/min/max, runs in C instead of once per record in Python.
    False means "look at each record", not "bad".
    """
    try:
        signatures = set(map(tuple, map(map, repeat(type), records)))
        if not signatures <= _GOOD_SIGNATURES or any(map(_EXTRA, records)):
            return False
        created = list(map(_CREATED, records))
        # A NaN or an infinity anywhere makes a sum non-finite; a finite sum too large for a
        # float raises OverflowError (then each record is looked at).
        return (
            math.isfinite(sum(created))
            and min(created) >= 0
            and max(created) < 2**40
            and math.isfinite(sum(map(_MSECS, records)))
            and math.isfinite(sum(map(_RELATIVE, records)))
        )
    except Exception:  # a record that is not a list, an extra that cannot be tested, an overflow
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
