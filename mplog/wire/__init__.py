"""The wire codec: log records <-> msgpack frame bytes (see docs/wire-format.md).

Pure functions only: no I/O, nothing logged. A frame is one msgpack array::

    [version, sender, seq, dropped, flags, records]

``sender`` is ``[host, pid, start_time, stream]``; ``records`` is an array of
record arrays whose positions are given by :data:`RECORD_FIELDS`. The decoder is
stateless (one ``unpackb`` per frame), bounded by :class:`Limits`, rejects every
ext type and unknown versions, and raises only :class:`~mplog.exceptions.FrameError`.

This package's face is the codec's import point for the other packages; the code lives by side:

- :mod:`mplog.wire.schema`: what both ends share (``VERSION``, flags, ``RECORD_FIELDS``,
  ``Limits``, ``Sender``, ``Frame``);
- :mod:`mplog.wire.envelope`: the one reader of a frame's envelope (``read_envelope``,
  ``Envelope``; ``read_sender`` for a packed sender kept apart from its frame), for every
  package that needs a frame's sender, place or flags without its records;
- :mod:`mplog.wire.encode`: the worker side (``encode_record``, ``build_frame``, ...);
- :mod:`mplog.wire.decode`: the listener side (``decode_header``, ``check_records``,
  ``decode_frame``, ``make_log_record``).
"""

from __future__ import annotations

from mplog.wire.decode import check_records, decode_frame, decode_header, make_log_record
from mplog.wire.encode import build_frame, encode_record, encode_sender, record_fields
from mplog.wire.envelope import Envelope, read_envelope, read_sender
from mplog.wire.schema import DEFAULT_LIMITS, FLAG_FINAL, FLAG_URGENT, RECORD_FIELDS, VERSION, Frame, Limits, Sender

__all__ = [
    "DEFAULT_LIMITS",
    "FLAG_FINAL",
    "FLAG_URGENT",
    "RECORD_FIELDS",
    "VERSION",
    "Envelope",
    "Frame",
    "Limits",
    "Sender",
    "build_frame",
    "check_records",
    "decode_frame",
    "decode_header",
    "encode_record",
    "encode_sender",
    "make_log_record",
    "read_envelope",
    "read_sender",
    "record_fields",
]
