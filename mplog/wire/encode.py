"""The worker side of the wire codec: log records -> packed records -> frame bytes.

:func:`encode_record` packs one ``logging.LogRecord`` (message merged, exception and stack
rendered to text, extras made packable within the decoder's :class:`~mplog.wire.schema.Limits`)
and never raises for any content of a record. A worker keeps a common record as its field
list (:func:`plain_fields`) and packs a whole batch at once (as columns,
:mod:`mplog.wire.columns`, or as version 1's records, :func:`pack_records`);
:func:`build_frame` and :func:`frame_of_packed` put packed records under a frame header
without re-encoding them. Pure functions only: no I/O, nothing logged.

The listener's repair (:mod:`mplog.wire.repair`) gives a refused record's fields the values
the worker would have: :func:`conform_fields` (each field of the type the decoder accepts,
a wrong value kept as the extra ``mplog_bad_<field>``) and :func:`bounded_text` (a text cut
at a limit); :mod:`mplog.wire.columns` frames a version 1 body with :func:`array_header`.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import msgpack

from mplog.wire.schema import (
    DEFAULT_LIMITS,
    F_CREATED,
    F_LEVELNAME,
    F_LEVELNO,
    F_MSECS,
    F_NAME,
    FIELD_DEFAULTS,
    FIELD_TYPES,
    MSECS_END,
    N_FIELDS,
    NUMBER_TYPES,
    RECORD_FIELDS,
    Limits,
    Sender,
)

__all__ = [
    "array_header",
    "bounded_text",
    "build_frame",
    "conform_fields",
    "encode_record",
    "encode_sender",
    "field_default",
    "frame_of_packed",
    "pack_records",
    "plain_fields",
    "record_fields",
]

# Attributes every LogRecord has (plus what Formatter adds); anything else is an extra.
_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_N_STANDARD = len(logging.LogRecord("", 0, "", 0, "", (), None).__dict__)
_HAS_TASK_NAME = "taskName" in logging.LogRecord("", 0, "", 0, "", (), None).__dict__  # 3.12+
_NO_EXTRAS: dict[str, Any] = {}  # packed, never changed
_exception_formatter = logging.Formatter()


def encode_sender(sender: Sender) -> bytes:
    """Return the packed sender array (cached by the worker: it never changes)."""
    packed: bytes = msgpack.packb(list(sender), use_bin_type=True)
    return packed


def build_frame(sender_bytes: bytes, seq: int, dropped: int, flags: int, records: list[bytes]) -> bytes:
    """Join already-packed records into one frame without re-encoding them."""
    return frame_of_packed(sender_bytes, seq, dropped, flags, count=len(records), packed=b"".join(records))


def frame_of_packed(sender_bytes: bytes, seq: int, dropped: int, flags: int, *, count: int, packed: bytes) -> bytes:
    """A frame around ``count`` records already packed one after the other in ``packed``."""
    head: bytes = msgpack.packb([seq, dropped, flags], use_bin_type=True)[1:]  # drop the fixarray byte
    return b"\x96\x01" + sender_bytes + head + array_header(count) + packed


def array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def bounded_text(text: str, limit: int) -> str:
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
    return bounded_text(text, limit)


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
    return bounded_text(message, limits.max_message_chars)


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
    return bounded_text(text, limits.max_message_chars) if text else None


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    attrs = record.__dict__
    if len(attrs) <= _N_STANDARD:
        return {}
    return {k: v for k, v in attrs.items() if k not in _STANDARD_ATTRS}


def record_fields(record: logging.LogRecord, limits: Limits = DEFAULT_LIMITS) -> list[Any]:
    """Return the field list of ``record`` (message merged, exception rendered to text)."""
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
        bounded_text(stack, limits.max_message_chars) if stack else None,
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
    extras.setdefault("exc_message", bounded_text(message, limits.max_message_chars))
    return extras


def _max_array(limits: Limits) -> int:
    return max(limits.max_records, N_FIELDS)  # the decoder's max_array_len


_FLAT_TYPES = frozenset({bool, float, type(None)})


def _fits(value: Any, limits: Limits, depth: int) -> bool:
    """True if the extra ``value`` packs into something the decoder accepts (see check_value).

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
    if isinstance(value, (str, bool, float, int, bytes)):
        return _subclass_fits(value, limits)
    return _container_fits(value, limits, depth)


def _subclass_fits(value: Any, limits: Limits) -> bool:
    """:func:`_fits` for a scalar of a subclass (a str or int enum, ...) or bytes."""
    if isinstance(value, str):
        return len(value) <= limits.max_message_chars
    if isinstance(value, (bool, float)):
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**64
    return len(value) <= limits.max_bin_len  # bytes


def _container_fits(value: Any, limits: Limits, depth: int) -> bool:
    """:func:`_fits` for anything but a scalar: a list, tuple or dict within the limits, every item fitting."""
    if depth >= limits.max_depth:
        return False
    if isinstance(value, (list, tuple)):
        return len(value) <= _max_array(limits) and all(_fits(item, limits, depth + 1) for item in value)
    if not isinstance(value, dict) or len(value) > limits.max_extra_fields:
        return False
    cap = limits.max_message_chars
    return all(type(key) is str and len(key) <= cap and _fits(item, limits, depth + 1) for key, item in value.items())


def _sanitize(value: Any, limits: Limits, depth: int, text_cap: int | None = None) -> Any:  # noqa: PLR0911
    """Make ``value`` packable within the decoder's limits: valid UTF-8, native types, bounded depth."""
    if isinstance(value, str):
        if text_cap is not None:
            value = bounded_text(value, text_cap)
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


def _sanitized_field(value: Any, limits: Limits) -> Any:
    """:func:`_sanitize` for one standard field; a value that defeats it is described by its type.

    A filter can set a field to an object whose ``__class__`` raises (isinstance() then
    raises), or a str subclass whose ``__len__`` or ``encode`` raises: without this guard
    that one value raised out of the flush and lost every record of its batch.
    """
    try:
        return _sanitize(value, limits, 0)
    except Exception as exc:
        return f"<unencodable {type(value).__name__}: {type(exc).__name__}>"


def _encode_slow(fields: list[Any], limits: Limits) -> bytes:
    cap = limits.max_message_chars
    head = [_sanitized_field(v, limits) for v in fields[:-1]]
    try:
        extra = {
            _sanitize(k, limits, 1, cap) if isinstance(k, str) else _safe_repr(k, 200): _sanitize(v, limits, 1, cap)
            for k, v in list(fields[-1].items())[: limits.max_extra_fields]
        }
    except Exception as exc:  # a container whose iteration raises
        extra = {"mplog_extra_error": f"<unencodable extra: {type(exc).__name__}>"}
    conform_fields(head, extra, limits)
    packed: bytes = msgpack.packb([*head, extra], use_bin_type=True)
    return packed


def conform_fields(
    head: list[Any],
    extra: dict[str, Any],
    limits: Limits,
    max_name: int | None = None,
    *,
    describe: Callable[[Any, int], str] | None = None,
) -> None:
    """Give every field a value of the type the decoder accepts, keeping a wrong one as an extra.

    A filter can set a standard attribute to anything (a float level, a line number past
    msgpack's ints, a NaN time). The worker's encoder calls this for a field it cannot pack
    as its type; the listener (:func:`mplog.wire.repair.salvage_records`) for a record whose
    field it refuses, with ``max_name`` also refusing a longer logger name. The wrong value
    travels as the extra ``mplog_bad_<field>``, cut at ``max_repr_chars``; ``describe``
    writes a value that is not a str (default: its repr(), guarded against a hostile one).
    """
    limit = limits.max_repr_chars
    describe = describe or _safe_repr
    for i, (value, kind) in enumerate(zip(head, FIELD_TYPES, strict=False)):
        fits = isinstance(value, kind)
        if fits and kind is NUMBER_TYPES:  # created, msecs, relativeCreated
            fits = (
                math.isfinite(value)
                and (i != F_CREATED or 0 <= value < 2**40)
                and (i != F_MSECS or 0 <= value < MSECS_END)
            )
        elif fits and i == F_NAME and max_name is not None:
            fits = len(value) <= max_name
        if not fits:
            if len(extra) < limits.max_extra_fields:
                text = bounded_text(value, limit) if isinstance(value, str) else describe(value, limit)
                extra.setdefault(f"mplog_bad_{RECORD_FIELDS[i]}", text)
            head[i] = field_default(i, head)


def field_default(i: int, fields: list[Any]) -> Any:
    """What standard field ``i`` of ``fields`` takes when its value cannot be used.

    ``levelno``: a finite float's whole part (a filter set ``20.0``), else the level its
    ``levelname`` names, else WARNING, so that the record still passes the levels it
    should; ``created``: now; ``name``: ``"root"``, the logger it is then handled by; any
    other field its type's empty value.
    """
    if i == F_NAME:
        return "root"
    if i == F_LEVELNO:
        value, name = fields[F_LEVELNO], fields[F_LEVELNAME]
        if type(value) is float and math.isfinite(value) and -(2**63) <= value < 2**63:
            return int(value)
        level = logging.getLevelName(name) if type(name) is str else None
        return level if type(level) is int else logging.WARNING
    if i == F_CREATED:
        return time.time()
    return FIELD_DEFAULTS[i]


class _PackerSlot(threading.local):
    """One msgpack.Packer per thread (a Packer is not thread-safe), made on first use."""

    def __init__(self) -> None:
        self.packer = msgpack.Packer(use_bin_type=True)


_packer_slot = _PackerSlot()


def _plain_referents() -> int:
    """How many objects a LogRecord with exactly the standard attributes refers to; 0: cannot tell.

    CPython 3.11+ keeps an instance's attributes inline until something asks for its
    ``__dict__``, and asking builds a dict: about 0.4 us on every logging call, a fifth
    of what the handler adds. ``gc.get_referents`` counts the inline attributes (plus
    the type) without building it, so a record whose count matches has no extras. The
    count is trusted only if it tells every way an extra arrives from a plain record
    (``extra=`` writes through ``__dict__``, a filter sets an attribute); on an
    interpreter where it does not, 0 turns the shortcut off.
    """
    plain = len(gc.get_referents(_new_record()))
    by_attribute, by_dict = _new_record(), _new_record()
    by_attribute.extra_field = 1
    by_dict.__dict__["extra_field"] = 1
    seen = (len(gc.get_referents(by_attribute)), len(gc.get_referents(by_dict)))
    return plain if plain == _N_STANDARD + 1 and plain not in seen else 0


def _new_record() -> logging.LogRecord:
    return logging.LogRecord("", 0, "", 0, "", (), None)


_PLAIN_REFERENTS = _plain_referents()
_referents = gc.get_referents
_LogRecord = logging.LogRecord  # one global lookup on the hot path instead of two


def plain_fields(record: logging.LogRecord, limits: Limits = DEFAULT_LIMITS) -> list[Any] | None:
    """The field list of a common record (no extras, exception or stack), or None for any other.

    Every logging call of every worker takes this path: record_fields() inlined for the
    common record, the message merged as LogRecord.getMessage does. The list holds only
    what the record held (str, int, float, None), so packing it later, a batch at a time
    (:func:`pack_records`), gives the bytes packing it now would.
    """
    try:
        exact = type(record) is _LogRecord
        if exact and len(_referents(record)) == _PLAIN_REFERENTS:
            pass  # exactly the standard attributes, no dict built (see _plain_referents)
        elif len(record.__dict__) > _N_STANDARD:
            return None
        if record.exc_info or record.exc_text or record.stack_info:
            return None
        try:
            if exact:  # getMessage() inlined; a subclass may override it
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
            message = bounded_text(message, limits.max_message_chars)
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
            record.taskName if _HAS_TASK_NAME else None,  # type: ignore[attr-defined, unused-ignore]  # 3.12+
            None,
            None,
            _NO_EXTRAS,
        ]
    except AttributeError:  # a standard attribute deleted: the general path says so
        return None


def encode_record(record: logging.LogRecord, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Pack one record; never raises for any content of ``record``."""
    fields = plain_fields(record, limits)
    if fields is not None:
        try:
            # This thread's reused Packer: half the cost of packb. Packing str, int, float
            # and None runs no Python code, so the Packer cannot be re-entered mid-pack,
            # even by a signal handler that logs.
            return _packer_slot.packer.pack(fields)  # type: ignore[no-any-return]
        except Exception:  # an odd value (surrogates, a huge int, a filter's object): sanitized below
            return _encode_slow(fields, limits)
    fields = record_fields(record, limits)
    try:
        extra = fields[-1]
        if extra and not _fits(extra, limits, 0):
            raise ValueError("extras need sanitizing")
        packed: bytes = msgpack.packb(fields, use_bin_type=True)
    except Exception:  # surrogates, non-native extras, huge ints, deep nesting, over the limits
        packed = _encode_slow(fields, limits)
    if len(packed) > limits.max_frame_bytes // 2:  # only extras can make a record this large
        return _encode_within_frame(fields, limits)
    return packed


def _encode_within_frame(fields: list[Any], limits: Limits) -> bytes:
    """Pack a record whose extras made it larger than half a frame, each extra cut to its repr.

    The listener refuses a frame over ``max_frame_bytes`` whole (and loses the connection
    past twice that), so the worker keeps every record under half of it: message,
    traceback and stack are already cut at ``max_message_chars``; here every extra becomes
    its text, at most ``max_repr_chars`` long (see
    test_a_record_with_extras_larger_than_a_frame_is_delivered_with_them_cut).
    """
    cap = limits.max_repr_chars
    extra = {
        _safe_repr(k, 200) if not isinstance(k, str) else bounded_text(k, cap): v
        if v is None or isinstance(v, (bool, int, float))
        else bounded_text(v, cap)
        if isinstance(v, str)
        else _safe_repr(v, cap)
        for k, v in list(fields[-1].items())[: limits.max_extra_fields]
    }
    extra["mplog_cut_extras"] = True
    return _encode_slow([*fields[:-1], extra], limits)


_pack_batch: Callable[[Any], bytes] | None
try:  # a third of msgpack's cost per record for a batch of common records (pyproject.toml says why)
    from ormsgpack import packb as _ormsgpack_packb

    _pack_batch = _ormsgpack_packb
except ImportError:  # pragma: no cover  # installed without its dependencies: msgpack packs the batch
    _pack_batch = None


def pack_records(packer: msgpack.Packer, items: list[Any], limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Pack a batch into the records part of a frame (no array header); never raises.

    ``items`` are field lists from :func:`plain_fields` and records already packed by
    :func:`encode_record` (bytes). A batch of field lists, the usual one, is packed by
    one call of ormsgpack (``packer`` without it): far cheaper than a call per record.
    Anything it refuses (a lone surrogate, an int past 64 bits) is packed record by record
    by ``packer``, which must not be used by another thread meanwhile.
    """
    if bytes not in set(map(type, items)):
        try:
            packed: bytes = _pack_batch(items) if _pack_batch is not None else packer.pack(items)
            return packed[len(array_header(len(items))) :]  # the records without the array header
        except Exception:  # an odd value somewhere: each record on its own below
            pass
    return b"".join(item if type(item) is bytes else _pack_fields(packer, item, limits) for item in items)


def _pack_fields(packer: msgpack.Packer, fields: list[Any], limits: Limits) -> bytes:
    try:
        packed: bytes = packer.pack(fields)
        return packed
    except Exception:
        return _encode_slow(fields, limits)
