"""The listener's repair of frames the decoder refused: one bad record costs neither its neighbours nor itself.

:func:`salvage_records` repairs, record by record, a frame whose envelope is valid but
some of whose records are not (:func:`mplog.wire.decode.check_records` refused it);
:func:`decode_escaped` decodes again a frame msgpack refused for invalid UTF-8, so that
the records holding it can be repaired too. Both run only on those error paths: a frame
that decodes and validates never reaches this module. Every repair costs a bounded
amount per record (see docs/security.md, Bounds). Pure functions only: no I/O, nothing
logged.
"""

from __future__ import annotations

import operator
from typing import Any

from mplog.exceptions import FrameError
from mplog.wire.decode import (
    MAX_NAME_CHARS,
    SCALAR_TYPES,
    check_header,
    check_record,
    check_value,
    unpack_frame,
)
from mplog.wire.encode import bounded_text, conform_fields
from mplog.wire.schema import DEFAULT_LIMITS, F_NAME, FIELD_TYPES, N_FIELDS, Frame, Limits

__all__ = ["decode_escaped", "salvage_records"]


def decode_escaped(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Frame:
    """:func:`decode_header` for a frame it refused as ``bad_utf8``: invalid UTF-8 kept as lone surrogates.

    msgpack refuses a whole frame for one invalid string. Decoded again with
    ``surrogateescape``, the records holding such strings can be told from their
    neighbours (:func:`salvage_records` with ``escaped=True`` repairs them). Called only
    on that error path: a frame that decodes costs nothing more.

    Raises:
        FrameError: ``bad_utf8`` when the sender's host name is not valid UTF-8 (the
            frame's identity cannot be repaired), or whatever :func:`decode_header` raises.
    """
    if len(data) > limits.max_frame_bytes:
        raise FrameError("oversized", f"{len(data)} bytes > max_frame_bytes {limits.max_frame_bytes}")
    frame = check_header(unpack_frame(data, limits, "surrogateescape"))
    if not _valid_text(frame.sender.host):
        raise FrameError("bad_utf8", "the sender's host name is not valid UTF-8")
    return frame


def salvage_records(
    records: list[Any], limits: Limits = DEFAULT_LIMITS, max_name: int = MAX_NAME_CHARS, *, escaped: bool = False
) -> tuple[list[list[Any] | None], list[str]]:
    """Repair what can be repaired in a frame whose records did not all pass :func:`check_records`.

    One bad record must not cost its neighbours their delivery, nor itself its message. A
    record whose standard field has the wrong type or an unusable value (a float
    ``levelno``, a NaN ``created``, a logger name over ``max_name`` characters) gets the
    field's default (:func:`~mplog.wire.encode.field_default`: ``created`` the time of the
    repair, ``levelno`` the level its ``levelname`` names) and keeps the value as the extra
    ``mplog_bad_<field>``, as the worker's encoder does; an extra value the decoder refuses
    (too deep, a bytes key) travels as a short ``repr()``. With ``escaped`` (the frame came
    from :func:`decode_escaped`), a string holding invalid UTF-8 is written with those
    bytes as ``\\xNN`` escapes (reason ``bad_utf8``).

    Refused: an item that is not a record at all (not an array of 20 fields:
    ``bad_record``), and a record none of whose required fields (every standard field
    but the optional ones) has a value of its type (``empty_record``): a record is not
    invented from nothing. A repair costs a bounded amount per record, whatever the
    values hold (each ``repr()`` is cut while it is built, see :func:`_bounded_repr`).

    Returns:
        ``(records, reasons)``, both as long as ``records``: the record (repaired in place),
        or None where it was refused, and the reason it was repaired or refused ("" when it
        passed as it was).

    Raises:
        FrameError: ``over_limit`` when the frame holds more than ``limits.max_records``.
    """
    if len(records) > limits.max_records:
        raise FrameError("over_limit", f"more than {limits.max_records} records")
    out: list[list[Any] | None] = []
    reasons: list[str] = []
    for rec in records:
        if type(rec) is not list or len(rec) != N_FIELDS:
            out.append(None)
            reasons.append("bad_record")
            continue
        reason = _repair_record(rec, limits, max_name, escaped)
        out.append(None if reason == "empty_record" else rec)
        reasons.append(reason)
    return out, reasons


# Positions of the fields a record cannot be without (everything but the optional ones and extra).
_REQUIRED = tuple(i for i, kind in enumerate(FIELD_TYPES[:-1]) if not isinstance(None, kind))
_required_fields = operator.itemgetter(*_REQUIRED)
_REQUIRED_KINDS = tuple(FIELD_TYPES[i] for i in _REQUIRED)


def _repair_record(rec: list[Any], limits: Limits, max_name: int, escaped: bool) -> str:
    """Make ``rec`` (an array of 20 fields) pass check_record; return why it did not, or "".

    ``empty_record``: nothing in it to repair from; the caller refuses it.
    """
    reason = "bad_utf8" if escaped and _unescape(rec) else ""
    try:
        check_record(rec, limits)
        if len(rec[F_NAME]) <= max_name:
            return reason
        reason = reason or "bad_field"
    except FrameError as exc:
        if not any(map(isinstance, _required_fields(rec), _REQUIRED_KINDS)):
            return "empty_record"
        reason = reason or exc.reason
    rec[-1] = extra = _repair_extra(rec[-1], limits)
    # The worker's own repair, with a repr() that stops early; the extra map now passes as it is.
    conform_fields(rec, extra, limits, max_name, describe=_bounded_repr)
    return reason


def _repair_extra(extra: Any, limits: Limits) -> dict[str, Any]:
    """The extras as a map the decoder accepts: a refused value becomes its bounded repr()."""
    if type(extra) is not dict:
        return {"mplog_bad_extra": _bounded_repr(extra, limits.max_repr_chars)}
    fixed: dict[str, Any] = {}
    for key, value in list(extra.items())[: limits.max_extra_fields]:
        if not isinstance(value, SCALAR_TYPES):
            try:
                check_value(value, limits, 1)
            except FrameError:
                value = _bounded_repr(value, limits.max_repr_chars)  # noqa: PLW2901
        fixed[key if type(key) is str else _bounded_repr(key, 200)] = value
    return fixed


class _ReprFull(Exception):
    """The bounded repr reached its limit (:func:`_bounded_repr`)."""


def _bounded_repr(value: Any, limit: int) -> str:
    """The repr() of a decoded value (msgpack's types only), cut at ``limit`` characters.

    Written piece by piece and stopped once ``limit`` characters are out, so its cost does
    not grow with the value: a list of 16 million nils costs what a list of a thousand
    does. A value whose repr() fits is written exactly as repr() writes it.
    """
    if type(value) is str:
        return bounded_text(value, limit)
    out: list[str] = []
    try:
        _write_repr(value, out, [limit + 1])
    except _ReprFull:
        return "".join(out)[:limit] + "...[mplog: cut]"
    return "".join(out)


def _write_repr(value: Any, out: list[str], room: list[int]) -> None:
    kind = type(value)
    if kind is list:
        _put("[", out, room)
        for i, item in enumerate(value):
            if i:
                _put(", ", out, room)
            _write_repr(item, out, room)
        _put("]", out, room)
    elif kind is dict:
        _put("{", out, room)
        for i, (key, item) in enumerate(value.items()):
            if i:
                _put(", ", out, room)
            _write_repr(key, out, room)
            _put(": ", out, room)
            _write_repr(item, out, room)
        _put("}", out, room)
    elif kind is str or kind is bytes:
        _put(repr(value[: room[0]]), out, room)  # the head says all that fits (the quotes may differ if cut)
    else:  # None, bool, int (< 2**64), float: a few characters
        _put(repr(value), out, room)


def _put(text: str, out: list[str], room: list[int]) -> None:
    out.append(text)
    room[0] -= len(text)
    if room[0] <= 0:
        raise _ReprFull


def _valid_text(text: str) -> bool:
    """True when ``text`` has no lone surrogate (what surrogateescape made of invalid UTF-8)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _escaped_text(text: str) -> str:
    """The bytes surrogateescape kept, written as ``\\xNN`` escapes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _unescape(rec: list[Any]) -> bool:
    """Write every invalid UTF-8 sequence in ``rec`` (fields, extra keys and values) as escapes; True if any."""
    changed = False
    for i in range(N_FIELDS - 1):
        value = rec[i]
        if type(value) is str and not _valid_text(value):
            rec[i] = _escaped_text(value)
            changed = True
    if _has_invalid(rec[-1]):
        rec[-1] = _escaped_value(rec[-1])
        changed = True
    return changed


def _has_invalid(value: Any) -> bool:
    kind = type(value)
    if kind is str:
        return not _valid_text(value)
    if kind is list:
        return any(map(_has_invalid, value))
    if kind is dict:
        return any(_has_invalid(key) or _has_invalid(item) for key, item in value.items())
    return False


def _escaped_value(value: Any) -> Any:
    kind = type(value)
    if kind is str:
        return value if _valid_text(value) else _escaped_text(value)
    if kind is list:
        return [_escaped_value(item) for item in value]
    if kind is dict:
        return {_escaped_value(key): _escaped_value(item) for key, item in value.items()}
    return value
