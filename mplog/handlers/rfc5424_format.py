"""A LogRecord as an RFC 5424 syslog message: header, STRUCTURED-DATA, BOM and UTF-8 text.

``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD-ELEMENT...] BOM MSG``

- TIMESTAMP: the record's ``created`` with microseconds and the local UTC offset at
  that time (``utc=True``: ``Z``), e.g. ``2026-12-06T17:02:18.123456+01:00``.
- HOSTNAME, PROCID: the record's ``hostname`` (the worker's host, which the listener
  sets from the frame's sender) and ``process`` (the worker's pid).
- APP-NAME: ``app_name`` if given, else the record's ``app_name`` attribute (an extra),
  else its ``processName``. MSGID: ``msgid`` if given, else the logger name.
- STRUCTURED-DATA: ``[mplog@PEN sender="host/pid/stream" seq="N"]`` (the sender and
  the record's sequence number in mplog's ledger, plus ``peer`` under CURVE), then
  ``[fields@PEN name="value" ...]`` with the record's extras.

Everything is kept within RFC 5424's limits, and what had to be cut is counted in
:attr:`RFC5424Encoder.cut`: a header field longer than its limit (255, 48, 128, 32
printable ASCII characters) or with other characters (replaced by ``_``); a parameter
name that is not 1-32 printable ASCII characters without ``= ] "`` and space; a value
longer than ``max_value_chars``; a message that would pass ``max_message_bytes``.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
import socket
import time
from dataclasses import dataclass
from typing import Any

from mplog.exceptions import ConfigError

__all__ = ["RFC5424Encoder", "RFC5424Format", "facility_code", "severity_code"]

BOM = b"\xef\xbb\xbf"
NIL = "-"
_PRINTABLE = re.compile(r"[^\x21-\x7e]")
_SD_NAME_BAD = re.compile(r'[^\x21-\x7e]|[=\]"]')
_ESCAPE = str.maketrans({"\\": "\\\\", '"': '\\"', "]": "\\]"})
_LIMITS = {"hostname": 255, "app_name": 48, "procid": 128, "msgid": 32}
# Attributes every LogRecord has (and those mplog's listener adds): the rest are extras.
_NOT_EXTRAS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "hostname",
    "peer_key",
    "mplog_sender",
    "mplog_seq",
    "app_name",
}


def facility_code(value: str | int) -> int:
    """A facility by name (``"local3"``) or number (0-23)."""
    names: dict[str, int] = logging.handlers.SysLogHandler.facility_names
    if isinstance(value, int) and not isinstance(value, bool):
        code = value if value < 24 else value >> 3  # also accepts SysLogHandler.LOG_LOCAL3 (already shifted)
        if 0 <= code < 24:
            return code
    elif isinstance(value, str) and value.lower() in names:
        return names[value.lower()] if names[value.lower()] < 24 else names[value.lower()] >> 3
    raise ConfigError(f"facility must be a syslog facility name such as 'local3' or a number 0-23, got {value!r}")


def severity_code(levelno: int) -> int:
    """Syslog severity of a level: CRITICAL crit(2), ERROR err(3), WARNING warning(4), INFO info(6), else debug(7)."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


@dataclass(frozen=True)
class RFC5424Format:
    """What the message says about a record, and its limits."""

    facility: str | int = "user"
    app_name: str | None = None  # None: the record's app_name attribute, else its processName
    msgid: str | None = None  # None: the logger name
    enterprise_id: int = 32473  # the private enterprise number in the SD-IDs (32473: RFC 5612's example; use your own)
    utc: bool = False  # timestamps in UTC ("Z") instead of local time with its offset
    bom: bool = True  # MSG as RFC 5424 says for UTF-8: BOM, then the text
    structured_data: bool = True  # False: no STRUCTURED-DATA ("-")
    max_value_chars: int = 1024  # an SD-PARAM value longer than this is cut (counted)
    max_message_bytes: int = 8192  # the whole message; MSG is cut to fit (counted). RFC 5425 says 8192 should pass

    def validate(self, owner: str) -> None:
        facility_code(self.facility)
        for name in ("app_name", "msgid"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, str) or not value or _PRINTABLE.search(value) or len(value) > _LIMITS[name]:
                raise ConfigError(
                    f"{owner} {name} must be 1 to {_LIMITS[name]} printable ASCII characters without spaces"
                    f" (RFC 5424), got {value!r}"
                )
        for name in ("enterprise_id", "max_value_chars", "max_message_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{owner} {name} must be a positive int, got {value!r}")
        if self.max_message_bytes < 480:
            raise ConfigError(
                f"{owner} max_message_bytes must be at least 480 (RFC 5424's minimum), got {self.max_message_bytes}"
            )


class RFC5424Encoder:
    """Turns records into RFC 5424 messages (bytes, without transport framing)."""

    def __init__(self, fmt: RFC5424Format) -> None:
        self.format = fmt
        self.facility = facility_code(fmt.facility)
        self._pri: dict[int, str] = {}  # levelno -> "<PRI>1 "
        self._idents: dict[tuple[Any, Any, Any, str], tuple[str, int]] = {}
        self._separator = " \ufeff" if fmt.bom else " "  # BOM: EF BB BF in UTF-8
        self._with_sd = fmt.structured_data
        self._limit = fmt.max_message_bytes
        self._times: dict[int, tuple[str, str]] = {}  # whole second -> ("YYYY-MM-DDTHH:MM:SS", offset)
        self._names: dict[str, str] = {}  # extra name -> valid PARAM-NAME
        self._local_host = socket.gethostname()
        self.mplog_id = f"mplog@{fmt.enterprise_id}"
        self.fields_id = f"fields@{fmt.enterprise_id}"
        self._fixed_app = self._header("app_name", fmt.app_name)[0] if fmt.app_name is not None else None
        self._fixed_msgid = self._header("msgid", fmt.msgid)[0] if fmt.msgid is not None else None
        self._senders: dict[tuple[str, Any], str] = {}  # (sender, peer) -> the mplog SD-ELEMENT up to seq
        self.cut = {"header": 0, "name": 0, "value": 0, "message": 0}

    # ------------------------------------------------------------ pieces

    def timestamp(self, created: float) -> str:
        """``created`` as an RFC 5424 TIMESTAMP: microseconds and the UTC offset of that moment."""
        second = int(created)
        stamp = self._times.get(second) or self._stamp(second)
        return f"{stamp[0]}.{int((created - second) * 1_000_000):06d}{stamp[1]}"

    def _stamp(self, second: int) -> tuple[str, str]:
        if len(self._times) > 64:
            self._times.clear()
        if self.format.utc:
            tm = time.gmtime(second)
            offset = "Z"
        else:
            tm = time.localtime(second)
            minutes = tm.tm_gmtoff // 60
            sign = "+" if minutes >= 0 else "-"
            offset = f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
        stamp = self._times[second] = (time.strftime("%Y-%m-%dT%H:%M:%S", tm), offset)
        return stamp

    def _header(self, field: str, raw: Any) -> tuple[str, bool]:
        """A header field as RFC 5424 allows it (printable ASCII, within its limit, ``-`` if empty); cut or not."""
        text = raw if isinstance(raw, str) else str(raw)
        valid = _PRINTABLE.sub("_", text)[: _LIMITS[field]] or NIL
        return valid, valid != text

    def param_name(self, name: str) -> str:
        valid = self._names.get(name)
        if valid is None:
            valid = _SD_NAME_BAD.sub("_", name)[:32] or "_"
            if len(self._names) < 4096:
                self._names[name] = valid
        if valid != name:
            self.cut["name"] += 1
        return valid

    def param_value(self, value: Any) -> str:
        if isinstance(value, str):
            text = value
        elif isinstance(value, (bytes, bytearray)):
            text = bytes(value).decode("utf-8", "backslashreplace")
        elif isinstance(value, (list, tuple, dict)):
            try:
                text = json.dumps(value, ensure_ascii=False, default=str)
            except (TypeError, ValueError):
                text = repr(value)
        else:
            text = str(value)
        limit = self.format.max_value_chars
        if len(text) > limit:
            text = text[:limit]
            self.cut["value"] += 1
        return text.translate(_ESCAPE)

    def structured_data(self, attrs: dict[str, Any]) -> str:
        """The SD-ELEMENTs of a record's attributes: mplog's (sender, seq, peer), then its extras; ``-`` if none."""
        sender = attrs.get("mplog_sender")
        mine = ""
        if sender is not None:
            key = (sender, attrs.get("peer_key"))
            element = self._senders.get(key)
            if element is None:
                element = f'[{self.mplog_id} sender="{self.param_value(sender)}"'
                if key[1] is not None:
                    element += f' peer="{self.param_value(key[1])}"'
                if len(self._senders) >= 4096:
                    self._senders.clear()
                self._senders[key] = element
            seq = attrs.get("mplog_seq")
            mine = f'{element} seq="{seq}"]' if seq is not None else element + "]"
        if _NOT_EXTRAS.issuperset(attrs):  # no extras: one C-level pass over the names
            return mine or NIL
        value, name = self.param_value, self.param_name
        extras = " ".join(f'{name(k)}="{value(v)}"' for k, v in attrs.items() if k not in _NOT_EXTRAS)
        return f"{mine}[{self.fields_id} {extras}]"

    # ------------------------------------------------------------ the message

    def _ident(self, key: tuple[Any, Any, Any, str]) -> tuple[str, int]:
        """`` HOSTNAME APP-NAME PROCID MSGID `` for (hostname, pid, app name, logger name), and how many were cut."""
        hostname, pid, app, name = key
        fields = [self._header("hostname", hostname or self._local_host)]
        fields.append((self._fixed_app, False) if self._fixed_app else self._header("app_name", app or NIL))
        fields.append(self._header("procid", pid if pid is not None else NIL))
        fields.append((self._fixed_msgid, False) if self._fixed_msgid else self._header("msgid", name or NIL))
        text = " " + " ".join(value for value, _ in fields) + " "
        cuts = sum(cut for _, cut in fields)
        if len(self._idents) >= 4096:
            self._idents.clear()
        self._idents[key] = (text, cuts)
        return text, cuts

    def encode(self, record: logging.LogRecord, text: str) -> bytes:
        """The message for ``record`` whose formatted text is ``text``."""
        attrs = record.__dict__
        key = (attrs.get("hostname"), record.process, attrs.get("app_name") or record.processName, record.name)
        ident = self._idents.get(key) or self._ident(key)
        if ident[1]:
            self.cut["header"] += ident[1]
        pri = self._pri.get(record.levelno) or self._priority(record.levelno)
        created = record.created
        second = int(created)
        stamp = self._times.get(second) or self._stamp(second)
        sd = self.structured_data(attrs) if self._with_sd else NIL
        prefix = f"{pri}{stamp[0]}.{int((created - second) * 1_000_000):06d}{stamp[1]}{ident[0]}"
        data = (f"{prefix}{sd}{self._separator}{text}" if text else prefix + sd).encode("utf-8", "backslashreplace")
        if len(data) <= self._limit:
            return data
        return self._cut_to_fit(prefix, sd, text)

    def _cut_to_fit(self, prefix: str, sd: str, text: str) -> bytes:
        """A message over ``max_message_bytes``: structured data too long goes, then the text is cut."""
        limit = self._limit
        raw_head = (prefix + sd).encode("utf-8", "backslashreplace")
        if len(raw_head) + 4 > limit:
            self.cut["value"] += 1
            raw_head = (prefix + NIL).encode("utf-8", "backslashreplace")
        if not text:
            return raw_head
        separator = self._separator.encode()
        body = text.encode("utf-8", "backslashreplace")
        room = limit - len(raw_head) - len(separator)
        if len(body) > room:
            body = body[: max(room, 0)].decode("utf-8", "ignore").encode()  # not inside a UTF-8 sequence
            self.cut["message"] += 1
        return raw_head + separator + body

    def _priority(self, levelno: int) -> str:
        text = f"<{self.facility * 8 + severity_code(levelno)}>1 "
        if len(self._pri) < 256:
            self._pri[levelno] = text
        return text


_PLAIN_FORMATS = ("%(message)s", None)


def is_plain(formatter: logging.Formatter | None) -> bool:
    """True for a formatter whose output is the record's message alone (so formatting can be skipped)."""
    if formatter is None:
        return True
    return (
        type(formatter).format is logging.Formatter.format
        and "format" not in formatter.__dict__
        and type(formatter._style) is logging.PercentStyle
        and formatter._fmt in _PLAIN_FORMATS
    )


class MessageText:
    """``handler.format(record)``, skipping the Formatter when it would only return the message.

    A handler's formatter that is ``%(message)s`` (or none) adds nothing to a record without
    exception text or stack: its text is ``record.getMessage()``, which saves about a
    microsecond per record. Any other formatter, and any record with an exception or a
    stack, goes through ``handler.format`` as usual.
    """

    def __init__(self) -> None:
        self._formatter: object = ...
        self._plain = False

    def __call__(self, handler: logging.Handler, record: logging.LogRecord) -> str:
        formatter = handler.formatter
        if formatter is not self._formatter:
            self._formatter, self._plain = formatter, is_plain(formatter)
        if self._plain and not record.exc_info and not record.exc_text and not record.stack_info:
            return record.getMessage()
        return handler.format(record)
