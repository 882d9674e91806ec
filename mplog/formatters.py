"""Structured output for the listener: :class:`JSONFormatter`, one JSON object per line.

Use it from a config like any formatter::

    [formatters.json]
    "()" = "mplog.formatters.JSONFormatter"
    static = { service = "billing" }

Why not python-json-logger: it writes ``NaN`` for a float NaN (not JSON, so one bad
extra breaks a consumer's parser) and by default emits only the message and the
extras; a listener output needs every field and a guarantee that each line parses.
The guarantee fits in this small module, and the listener gains no dependency.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import re
from collections.abc import Mapping
from typing import Any

from mplog.wire.schema import F_EXC_TEXT, F_LEVELNAME, F_LEVELNO, F_MESSAGE, F_NAME
from mplog.wire.schema import RECORD_FIELDS as _WIRE_FIELDS

__all__ = ["JSONFormatter"]

# The LogRecord attributes written under their own names (the rest are extras): the wire's
# standard fields (mplog.wire.schema.RECORD_FIELDS, the one list) up to exc_text, that is
# without exc_text and stack_info (written as exc_info and stack) and extra, levelname before
# levelno as this formatter has always written them.
_OWN = _WIRE_FIELDS[:F_EXC_TEXT]
RECORD_FIELDS = (_OWN[F_NAME], _OWN[F_LEVELNAME], _OWN[F_LEVELNO], *_OWN[F_MESSAGE:])
_NOT_EXTRAS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "exc_type",
    "exc_message",
}
# Valid JSON, but line splitters (str.splitlines, some log shippers) break lines at
# U+0085, U+2028 and U+2029, and raw C1 controls reach terminals: escape them all.
_ESCAPES = {code: f"\\u{code:04x}" for code in (0x7F, *range(0x80, 0xA0), 0x2028, 0x2029)}
_LAST_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*)(?::\s?(?P<message>.*))?$")
_MAX_DEPTH = 16


def _jsonable(value: Any, depth: int = 0) -> Any:
    """A copy of ``value`` that ``json.dumps(allow_nan=False)`` accepts."""
    result: Any
    if value is None or isinstance(value, (str, bool, int)):
        result = value
    elif isinstance(value, float):
        result = value if math.isfinite(value) else str(value)  # "nan", "inf", "-inf"
    elif isinstance(value, bytes):
        result = value.decode("utf-8", "backslashreplace")
    elif depth < _MAX_DEPTH and isinstance(value, Mapping):
        result = {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    elif depth < _MAX_DEPTH and isinstance(value, (list, tuple, set, frozenset)):
        result = [_jsonable(v, depth + 1) for v in value]
    else:
        try:
            result = repr(value)
        except Exception as exc:
            result = f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"
    return result


def split_exception(exc_text: str) -> tuple[str | None, str | None]:
    """Best-effort ``(type, message)`` from the last line of a rendered traceback.

    Used only for records that did not carry ``exc_type``/``exc_message`` extras (mplog
    workers always do): a multi-line message or an exception note defeats it.
    """
    lines = [line for line in exc_text.splitlines() if line.strip()]
    match = _LAST_LINE.match(lines[-1]) if lines else None
    if match is None:
        return None, None
    return match["type"], match["message"] or ""


class JSONFormatter(logging.Formatter):
    """Format each record as one JSON object on one line: every field, every extra.

    Keys: ``timestamp`` (ISO 8601, UTC), the LogRecord fields under their own names
    (``message`` merged), ``exc_type``/``exc_message``/``exc_traceback`` when the record
    carries an exception, ``stack_info`` when it has one, then every extra (e.g.
    ``hostname`` set by the listener, ``task_id`` from the Celery integration).

    The line is always valid JSON: NaN and infinities become strings, objects their
    ``repr()``, and control characters, U+0085, U+2028 and U+2029 are escaped, so no
    content can split a record into two lines.

    Args:
        fields: the record fields to write (default: all of ``RECORD_FIELDS``).
        static: constant keys added to every object (e.g. ``{"service": "billing"}``).
        ensure_ascii: escape every non-ASCII character too.
        sort_keys: sort the keys of each object.
    """

    def __init__(
        self,
        fields: list[str] | None = None,
        static: dict[str, Any] | None = None,
        ensure_ascii: bool = False,
        sort_keys: bool = False,
    ) -> None:
        super().__init__()
        unknown = sorted(set(fields or ()) - set(RECORD_FIELDS))
        if unknown:
            raise ValueError(f"JSONFormatter fields: unknown {unknown}; choose from {', '.join(RECORD_FIELDS)}")
        self.fields = tuple(fields) if fields else RECORD_FIELDS
        self.static = dict(static or {})
        self.ensure_ascii = ensure_ascii
        self.sort_keys = sort_keys

    def to_dict(self, record: logging.LogRecord) -> dict[str, Any]:
        """The object written for ``record`` (before JSON encoding)."""
        attrs = record.__dict__
        out: dict[str, Any] = {
            "timestamp": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(
                timespec="microseconds"
            )
        }
        out.update(self.static)
        for name in self.fields:
            out[name] = record.getMessage() if name == "message" else attrs.get(name)
        self._add_exception(record, out)
        if record.stack_info:
            out["stack_info"] = record.stack_info
        for key, value in attrs.items():
            if key not in _NOT_EXTRAS and key not in out:
                out[key] = value
        return out

    def _add_exception(self, record: logging.LogRecord, out: dict[str, Any]) -> None:
        attrs = record.__dict__
        exc_type, exc_message = attrs.get("exc_type"), attrs.get("exc_message")
        text = record.exc_text
        if record.exc_info and isinstance(record.exc_info, tuple) and record.exc_info[1] is not None:
            value = record.exc_info[1]
            if not text:
                text = self.formatException(record.exc_info)
            if exc_type is None:
                cls = type(value)
                exc_type = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
                exc_message = str(value)
        if not text and exc_type is None:
            return
        if exc_type is None and text:
            exc_type, exc_message = split_exception(text)
        out["exc_type"] = exc_type
        out["exc_message"] = exc_message
        out["exc_traceback"] = text

    def format(self, record: logging.LogRecord) -> str:
        obj = _jsonable(self.to_dict(record))
        text = self._dumps(obj, self.ensure_ascii)
        if not self.ensure_ascii:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate: escape it rather than fail the write
                text = self._dumps(obj, True)
            text = text.translate(_ESCAPES)
        return text

    def _dumps(self, obj: Any, ensure_ascii: bool) -> str:
        return json.dumps(
            obj, ensure_ascii=ensure_ascii, allow_nan=False, sort_keys=self.sort_keys, separators=(",", ":")
        )
