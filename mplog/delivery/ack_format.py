"""Acknowledged delivery: what worker and listener exchange besides frames; bytes only, no I/O.

An acknowledgement is the msgpack array ``[stream, next_seq]``: "every record of stream
``stream`` below ``next_seq`` is written"; a refusal, ``[stream, next_seq, 1]``, asks
for a resend from ``next_seq``. :func:`frame_envelope` reads where a frame sits in its
sender's stream without unpacking its records (the listener's yielding reads its sender
and flags with it too, see mplog.listener.holding). The worker side is :mod:`mplog.delivery.ack_sender`,
the listener side :mod:`mplog.listener.ack_loop`.
"""

from __future__ import annotations

from typing import NamedTuple

import msgpack

__all__ = ["Envelope", "decode_ack", "encode_ack", "frame_envelope"]


def encode_ack(stream: int, next_seq: int, *, refused: bool = False) -> bytes:
    """``[stream, next_seq]``; with ``refused``, ``[stream, next_seq, 1]``: "resend from next_seq"."""
    data: bytes = msgpack.packb([stream, next_seq, 1] if refused else [stream, next_seq])
    return data


def decode_ack(data: bytes) -> tuple[int, int, bool] | None:
    """``(stream, next_seq, refused)`` from an acknowledgement, or None if it is not one."""
    try:
        obj = msgpack.unpackb(data, max_array_len=3, max_map_len=0, max_str_len=0, max_bin_len=0, max_ext_len=0)
    except Exception:
        return None
    if type(obj) is list and len(obj) in (2, 3) and all(type(v) is int and v >= 0 for v in obj):
        return obj[0], obj[1], len(obj) == 3
    return None


class Envelope(NamedTuple):
    """A frame's position in its sender's stream, read without unpacking its records."""

    key: str  # the sender key, as mplog.wire.Sender.key spells it
    stream: int
    seq: int
    records: int
    flags: int
    host: str
    pid: int


def frame_envelope(frame: bytes) -> Envelope:
    """Read the envelope of a frame built by mplog.wire.build_frame.

    Raises:
        ValueError: the bytes do not start like a frame (the full decoder then counts it).
    """
    unpacker = msgpack.Unpacker(max_buffer_size=len(frame) + 16, max_str_len=1024, max_ext_len=0)
    unpacker.feed(frame[:2048])  # version, sender (host <= 255 chars), seq, dropped, flags, records header
    try:
        items = unpacker.read_array_header()
        unpacker.unpack()  # version
        host, pid, _, stream = unpacker.unpack()
        seq = unpacker.unpack()
        unpacker.unpack()  # dropped
        flags = unpacker.unpack()
        count = unpacker.unpack() if items == 7 else unpacker.read_array_header()  # version 2: its count
        key = f"{host}/{pid}/{stream:08x}"
        return Envelope(key, int(stream), int(seq), int(count), int(flags), str(host), int(pid))
    except Exception as exc:
        raise ValueError(f"not a frame envelope: {exc}") from None
