"""Acknowledged delivery: what worker and listener exchange besides frames; bytes only, no I/O.

An acknowledgement is the msgpack array ``[stream, next_seq]``: "every record of stream
``stream`` below ``next_seq`` is written"; a refusal, ``[stream, next_seq, 1]``, asks
for a resend from ``next_seq``. Where a frame sits in its sender's stream is read by
:func:`mplog.wire.read_envelope`. The worker side is :mod:`mplog.delivery.ack_sender`,
the listener side :mod:`mplog.listener.ack_loop`.
"""

from __future__ import annotations

import msgpack

__all__ = ["decode_ack", "encode_ack"]


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
