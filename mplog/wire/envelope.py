"""The one reader of a frame's envelope: who sent it, where it sits in the sender's stream, how many records.

A frame (docs/wire-format.md) starts with the same envelope in both versions::

    version 1: [1, sender, seq, dropped, flags, records]
    version 2: [2, sender, seq, dropped, flags, count, columns]

:func:`read_envelope` reads it from the frame's first bytes without unpacking the records
(at most :data:`ENVELOPE_BYTES`, a few calls into msgpack): the listener's holding of
frames (mplog.listener.holding) and its acknowledgements (mplog.listener.ack_loop), the
worker's acknowledged sender and its spool (mplog.delivery), and the listener's count of a
frame refused whole for its size all read it here. It checks the envelope's shape (an array
of 6 or 7 items whose version matches it, a sender of 4 items with a str host, non-negative
ints where the stream is counted); :meth:`Envelope.identity` applies the decoder's full
checks (:func:`check_envelope`, the same as :func:`mplog.wire.decode.decode_header`'s) where
a caller needs a :class:`~mplog.wire.schema.Sender` it may trust; :func:`read_sender` reads a
packed sender kept apart from its frame (a spool file's identity). Pure functions: no I/O.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgpack

from mplog.exceptions import FrameError
from mplog.wire.schema import VERSION, VERSION_COLUMNS, Sender

__all__ = [
    "ENVELOPE_BYTES",
    "MAX_HOST_CHARS",
    "Envelope",
    "check_envelope",
    "read_envelope",
    "read_sender",
]

MAX_HOST_CHARS = 255  # longest sender host name (a DNS name is at most 253): it is part of every ledger key
ENVELOPE_BYTES = 2048  # more than any valid envelope takes (a 255-character host is at most 1,020 bytes)
_ITEMS = {6: VERSION, 7: VERSION_COLUMNS}  # a frame's items -> its version

_U32_END = 2**32  # pid and stream: below 2**32
_TIME_END = 2**40  # start_time, as created: seconds since the epoch, 0 <= t < 2**40
_SEQ_END = 2**64  # sequence numbers are msgpack uint64: seq + len(records) stays below
_NUMBER = (int, float)


class Envelope(NamedTuple):
    """A frame's envelope, read without its records (:func:`read_envelope`)."""

    version: int  # 1 (records as rows) or 2 (as columns)
    sender: bytes  # the packed sender array, as the frame carries it
    host: str
    pid: int
    start_time: Any  # checked by identity() only
    stream: int
    seq: int
    dropped: int
    flags: int
    records: int  # how many records the frame declares

    @property
    def key(self) -> str:
        """The sender key, as :attr:`mplog.wire.schema.Sender.key` spells it."""
        return f"{self.host}/{self.pid}/{self.stream:08x}"

    @property
    def end_seq(self) -> int:
        """The sequence number after the frame's last record."""
        return self.seq + self.records

    def identity(self) -> Sender:
        """The frame's sender, once the envelope passed the decoder's checks (:func:`check_envelope`).

        Raises:
            FrameError: ``bad_header`` naming the value that is out of range.
        """
        sender = [self.host, self.pid, self.start_time, self.stream]
        return check_envelope([VERSION, sender, self.seq, self.dropped, self.flags, None], self.records)


def read_envelope(data: bytes) -> Envelope:
    """The envelope of frame ``data``, read from its first :data:`ENVELOPE_BYTES` bytes.

    Raises:
        ValueError: the bytes do not start like a frame (not msgpack, cut short, another
            shape, a version that does not match the frame's items, a negative or non-int
            pid, stream, seq, dropped, flags or count); the full decoder then counts it.
    """
    unpacker = msgpack.Unpacker(
        max_buffer_size=ENVELOPE_BYTES,
        max_str_len=1024,
        max_bin_len=1024,
        max_array_len=8,
        max_map_len=8,
        max_ext_len=0,
    )
    unpacker.feed(data[:ENVELOPE_BYTES])
    try:
        items = unpacker.read_array_header()
        version = unpacker.unpack()
        start = unpacker.tell()
        sender = unpacker.unpack()
        end = unpacker.tell()
        seq, dropped, flags = unpacker.unpack(), unpacker.unpack(), unpacker.unpack()
        # version 1: the records' array header; version 2: the count before the columns
        count = unpacker.unpack() if items == 7 else unpacker.read_array_header()
    except Exception as exc:  # not msgpack, cut short, over the unpacker's bounds
        raise ValueError(f"not a frame envelope: {exc}") from None
    if type(version) is not int or _ITEMS.get(items) != version:
        raise ValueError("not a frame envelope: not a version 1 or 2 frame")
    if type(sender) is not list or len(sender) != 4 or type(sender[0]) is not str:
        raise ValueError("not a frame envelope: the sender is not [host, pid, start_time, stream]")
    host, pid, start_time, stream = sender
    if not all(type(v) is int and v >= 0 for v in (pid, stream, seq, dropped, flags, count)):
        raise ValueError("not a frame envelope: a negative or non-int number")
    return Envelope(version, data[start:end], host, pid, start_time, stream, seq, dropped, flags, count)


def read_sender(packed: bytes) -> Sender:
    """The sender of a packed sender array (:attr:`Envelope.sender`, as a spool file stores it).

    The shape checks of :func:`read_envelope` (``[host:str, pid, start_time, stream]``, pid
    and stream non-negative ints); :meth:`Envelope.identity` has the decoder's full checks.

    Raises:
        ValueError: ``packed`` is not one msgpack array of that shape.
    """
    try:
        sender = msgpack.unpackb(
            packed, max_str_len=1024, max_bin_len=1024, max_array_len=8, max_map_len=8, max_ext_len=0
        )
    except Exception as exc:  # not msgpack, cut short, extra bytes, over the bounds
        raise ValueError(f"not a packed sender: {exc}") from None
    if type(sender) is not list or len(sender) != 4 or type(sender[0]) is not str:
        raise ValueError("not a packed sender: not [host, pid, start_time, stream]")
    host, pid, start_time, stream = sender
    if not all(type(v) is int and v >= 0 for v in (pid, stream)):
        raise ValueError("not a packed sender: a negative or non-int pid or stream")
    return Sender(host, pid, start_time, stream)


def check_envelope(obj: list[Any], count: int) -> Sender:
    """Check the envelope of decoded frame ``obj`` (not its records item; ``count`` records); return its sender.

    The decoder's checks (a version 2 frame's envelope is checked as version 1's, with
    ``obj[0]`` given as :data:`~mplog.wire.schema.VERSION`). A few comparisons per frame,
    none per record. Exact types: a msgpack boolean is no int here.

    Raises:
        FrameError: ``bad_version`` or ``bad_header``, naming the value.
    """
    version, sender, seq, dropped, flags, _ = obj
    if type(version) is not int:
        raise FrameError("bad_version", f"version must be the int {VERSION}, got {type(version).__name__}")
    if version != VERSION:
        raise FrameError("bad_version", f"unsupported frame version {version!r}")
    if type(sender) is not list or len(sender) != 4:
        raise FrameError("bad_header", "sender must be [host:str, pid:int, start_time:float, stream:int]")
    host, pid, start_time, stream = sender
    if type(host) is not str or len(host) > MAX_HOST_CHARS:
        raise FrameError("bad_header", f"host must be a str of at most {MAX_HOST_CHARS} characters")
    if type(pid) is not int or not 0 <= pid < _U32_END:
        raise FrameError("bad_header", f"pid must be an int, 0 <= pid < 2**32, got {_shown(pid)}")
    if type(start_time) not in _NUMBER or not 0 <= start_time < _TIME_END:  # NaN fails both comparisons
        raise FrameError("bad_header", f"start_time must be a number, 0 <= t < 2**40, got {_shown(start_time)}")
    if type(stream) is not int or not 0 <= stream < _U32_END:
        raise FrameError("bad_header", f"stream must be an int, 0 <= stream < 2**32, got {_shown(stream)}")
    if type(seq) is not int or seq < 0:
        raise FrameError("bad_header", f"seq must be a non-negative int, got {_shown(seq)}")
    if type(dropped) is not int or dropped < 0:
        raise FrameError("bad_header", f"dropped must be a non-negative int, got {_shown(dropped)}")
    if type(flags) is not int or flags < 0:
        raise FrameError("bad_header", f"flags must be a non-negative int, got {_shown(flags)}")
    if seq + count >= _SEQ_END:
        raise FrameError("bad_header", "seq + len(records) must stay below 2**64")
    return Sender(host, pid, start_time, stream)


def _shown(value: Any) -> str:
    """A bad envelope value for an error message: a number as it is, anything else by its type."""
    return repr(value) if type(value) in _NUMBER else type(value).__name__
