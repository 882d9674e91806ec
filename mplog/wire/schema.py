"""The wire format's shared definitions: the frame's version and flags, the record field list, the limits.

What both ends of :mod:`mplog.wire` agree on (see docs/wire-format.md): :data:`RECORD_FIELDS`
gives the positions of a record array (``F_NAME`` ... ``F_EXTRA`` name each position, derived
from it), :class:`Limits` bounds the encoder (worker side, :mod:`mplog.wire.encode`) and the
decoder (listener side, :mod:`mplog.wire.decode`), and :class:`Sender` and :class:`Frame` name
a frame's parts. :data:`FIELD_TYPES` (each field's accepted types, :data:`NUMBER_TYPES` for a
number), :data:`FIELD_DEFAULTS` (what an unusable field takes instead) and :data:`N_FIELDS` are
for the codec's modules. Definitions only: no I/O, nothing logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = [
    "DEFAULT_LIMITS",
    "FIELD_DEFAULTS",
    "FIELD_TYPES",
    "FLAG_FINAL",
    "FLAG_URGENT",
    "F_CREATED",
    "F_EXC_TEXT",
    "F_EXTRA",
    "F_FILENAME",
    "F_FUNC_NAME",
    "F_LEVELNAME",
    "F_LEVELNO",
    "F_LINENO",
    "F_MESSAGE",
    "F_MODULE",
    "F_MSECS",
    "F_NAME",
    "F_PATHNAME",
    "F_PROCESS",
    "F_PROCESS_NAME",
    "F_RELATIVE_CREATED",
    "F_STACK_INFO",
    "F_TASK_NAME",
    "F_THREAD",
    "F_THREAD_NAME",
    "Frame",
    "Limits",
    "MSECS_END",
    "NUMBER_TYPES",
    "N_FIELDS",
    "RECORD_FIELDS",
    "Sender",
    "VERSION",
    "VERSION_COLUMNS",
]

VERSION = 1
VERSION_COLUMNS = 2  # a frame's records as columns (mplog.wire.columns)
FLAG_FINAL = 1  # the sender is closing; ``seq`` is its final next-sequence number
FLAG_URGENT = 2  # the frame ends with a record at the sender's flush level: the listener must not hold it back

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
N_FIELDS = len(RECORD_FIELDS)

# Each field's position in a record array (and a version 2 frame's column), by name: derived
# from RECORD_FIELDS, the one list. Module-level ints, so that code indexing a record per
# record pays a global lookup, no attribute lookup (``fields[F_NAME]``, ``itemgetter(F_NAME)``).
_AT = {field: i for i, field in enumerate(RECORD_FIELDS)}
F_NAME = _AT["name"]
F_LEVELNO = _AT["levelno"]
F_LEVELNAME = _AT["levelname"]
F_MESSAGE = _AT["message"]
F_CREATED = _AT["created"]
F_MSECS = _AT["msecs"]
MSECS_END = 1000  # msecs is 0 <= msecs < MSECS_END (docs/wire-format.md)
F_RELATIVE_CREATED = _AT["relativeCreated"]
F_PATHNAME = _AT["pathname"]
F_FILENAME = _AT["filename"]
F_MODULE = _AT["module"]
F_LINENO = _AT["lineno"]
F_FUNC_NAME = _AT["funcName"]
F_THREAD = _AT["thread"]
F_THREAD_NAME = _AT["threadName"]
F_PROCESS = _AT["process"]
F_PROCESS_NAME = _AT["processName"]
F_TASK_NAME = _AT["taskName"]
F_EXC_TEXT = _AT["exc_text"]
F_STACK_INFO = _AT["stack_info"]
F_EXTRA = _AT["extra"]
del _AT

NUMBER_TYPES = (int, float)
_OPT_STR = (str, type(None))
_OPT_INT = (int, type(None))
# Expected Python types per position after unpacking (bool is an int subclass; allowed).
FIELD_TYPES: tuple[Any, ...] = (
    str,  # name
    int,  # levelno
    str,  # levelname
    str,  # message
    NUMBER_TYPES,  # created
    NUMBER_TYPES,  # msecs
    NUMBER_TYPES,  # relativeCreated
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
# What a standard field that cannot be used takes instead (the worker's conform_fields, the
# listener's salvage_records); the value it had travels as the extra ``mplog_bad_<field>``.
FIELD_DEFAULTS: tuple[Any, ...] = tuple(
    "" if kind is str else 0 if kind is int else 0.0 if kind is NUMBER_TYPES else None for kind in FIELD_TYPES[:-1]
)


@dataclass(frozen=True)
class Limits:
    """Bounds applied by the encoder (worker side) and the decoder (listener side)."""

    # Every cost of a frame in the listener grows with its size (it is received, decoded,
    # formatted and written, about 9 copies at once for a frame of long strings), and a
    # worker's frames are batches of at most batch_bytes (64 KiB) or one large record.
    max_frame_bytes: int = 4 * 1024 * 1024
    max_records: int = 100_000
    # Values one frame may decode to (records, fields, extra values, map keys). A frame
    # costs its bytes plus ~100 bytes per value at worst (an empty list is one byte on the
    # wire and ~90 in memory), so this bounds what any frame costs the listener to decode.
    max_items: int = 256 * 1024
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
    # The records as columns, already checked whole (a version 2 frame, mplog.wire_columns); None otherwise.
    columns: list[list[Any]] | None = None
