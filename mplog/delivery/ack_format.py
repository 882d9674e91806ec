"""Acknowledged delivery: what worker and listener exchange besides frames; bytes only, no I/O.

An acknowledgement is the msgpack array ``[stream, next_seq]``: "every record of stream
``stream`` below ``next_seq`` is written"; a refusal, ``[stream, next_seq, 1]``, asks
for a resend from ``next_seq``; ``[stream, next_seq, 2]`` says also "and its goodbye came":
only that acknowledges a goodbye frame, which ends where the records before it end, so an
acknowledgement of those records (a resent copy's, say) cannot stand for it. Where a frame
sits in its sender's stream is read by :func:`mplog.wire.read_envelope`. The worker side is
:mod:`mplog.delivery.ack_sender`, the listener side :mod:`mplog.listener.ack_loop`.
"""

from __future__ import annotations

import msgpack

__all__ = ["decode_ack", "encode_ack"]


_REFUSED, _CLOSED = 1, 2


def encode_ack(stream: int, next_seq: int, *, refused: bool = False, closed: bool = False) -> bytes:
    """``[stream, next_seq]``; with ``refused``, ``[stream, next_seq, 1]``: "resend from next_seq";
    with ``closed``, ``[stream, next_seq, 2]``: "and the stream's goodbye came"."""
    flag = _REFUSED if refused else _CLOSED if closed else 0
    data: bytes = msgpack.packb([stream, next_seq, flag] if flag else [stream, next_seq])
    return data


def decode_ack(data: bytes) -> tuple[int, int, bool, bool] | None:
    """``(stream, next_seq, refused, closed)`` from an acknowledgement, or None if it is not one."""
    try:
        obj = msgpack.unpackb(data, max_array_len=3, max_map_len=0, max_str_len=0, max_bin_len=0, max_ext_len=0)
    except Exception:
        return None
    if type(obj) is not list or len(obj) not in (2, 3) or not all(type(v) is int and v >= 0 for v in obj):
        return None
    stream, next_seq, *rest = obj
    flag = rest[0] if rest else 0
    if flag not in (0, _REFUSED, _CLOSED) or (rest and not flag):
        return None
    return stream, next_seq, flag == _REFUSED, flag == _CLOSED
