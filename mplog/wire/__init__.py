"""The wire codec: log records <-> msgpack frame bytes (see docs/wire-format.md).

Pure functions only: no I/O, nothing logged. A frame is one msgpack array::

    [version, sender, seq, dropped, flags, records]

``sender`` is ``[host, pid, start_time, stream]``; ``records`` is an array of
record arrays whose positions are given by :data:`RECORD_FIELDS`. The decoder is
stateless (one ``unpackb`` per frame), bounded by :class:`Limits`, rejects every
ext type and unknown versions, and raises only :class:`~mplog.exceptions.FrameError`.

This module is the codec's one import point; the code lives in three modules by side:

- :mod:`mplog.wire.schema`: what both ends share (``VERSION``, flags, ``RECORD_FIELDS``,
  ``Limits``, ``Sender``, ``Frame``);
- :mod:`mplog.wire.encode`: the worker side (``encode_record``, ``build_frame``, ...);
- :mod:`mplog.wire.decode`: the listener side (``decode_header``, ``check_records``,
  ``decode_frame``, ``make_log_record``).
"""

from __future__ import annotations

# check_records, decode_header (the listener's two-step decode) and DEFAULT_LIMITS stay out
# of __all__, as before the split; ``X as X`` re-exports them for mypy --strict importers.
from mplog.wire.decode import check_records as check_records
from mplog.wire.decode import decode_frame, make_log_record
from mplog.wire.decode import decode_header as decode_header
from mplog.wire.encode import build_frame, encode_record, encode_sender, record_fields
from mplog.wire.schema import DEFAULT_LIMITS as DEFAULT_LIMITS
from mplog.wire.schema import FLAG_FINAL, FLAG_URGENT, RECORD_FIELDS, VERSION, Frame, Limits, Sender

__all__ = [
    "FLAG_FINAL",
    "FLAG_URGENT",
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
