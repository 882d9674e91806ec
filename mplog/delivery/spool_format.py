"""The spool file format: header and entries; bytes only, no I/O (a frame's envelope: :func:`mplog.wire.read_envelope`).

A file is a 512-byte header, then entries::

    header: b"MPLOGSPL", u32 version, u32 flags (STOPPED: the writer stopped appending),
            at 16: u64 stream, u64 next_seq, u32 crc32  (acknowledged progress)
            at 48: u16 length, u32 crc32, sender bytes  (the writer's identity)
    entry:  u32 length, u32 crc32 of the frame, frame

all little-endian. A reader stops at the first entry that is short or fails its
checksum: a write torn by SIGKILL or a full disk loses that frame only. A writer whose
write failed cuts the torn entry off, sets STOPPED and appends nothing more: its stream
goes on from memory, so the file's frames are only a prefix of it and an adopter resends
them without saying goodbye after them. Who writes,
locks and adopts these files is :mod:`mplog.delivery.spool_files`.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

from mplog.wire import FLAG_FINAL, build_frame

__all__ = [
    "ENTRY",
    "FLAGS_AT",
    "HEADER_SIZE",
    "IDENT_AT",
    "MAGIC",
    "MARK_AT",
    "MAX_IDENTITY",
    "NO_IDENTITY",
    "STOPPED",
    "VERSION",
    "SpoolContents",
    "goodbye_frame",
    "pack_entry",
    "pack_flags",
    "pack_header",
    "pack_identity",
    "pack_mark",
    "parse_spool",
]

MAGIC = b"MPLOGSPL"
VERSION = 1
HEADER_SIZE = 512
ENTRY = struct.Struct("<II")  # frame length, crc32 of the frame
_PREAMBLE = struct.Struct("<8sII")  # magic, version, flags
FLAGS_AT = 12
STOPPED = 1  # the writer stopped appending after a failed write (its stream went on from memory)
_MARK = struct.Struct("<QQI")  # stream, next_seq, crc32 of the first 16 bytes
MARK_AT = 16
_IDENT = struct.Struct("<HI")  # length, crc32
IDENT_AT = 48
MAX_IDENTITY = HEADER_SIZE - IDENT_AT - _IDENT.size
NO_IDENTITY = bytes(_IDENT.size)  # written at IDENT_AT, a zero length: parse_spool reads no identity


def goodbye_frame(sender: bytes, next_seq: int, dropped: int) -> bytes:
    """The frame a sender ends with: no records, FLAG_FINAL, its final next sequence number."""
    return build_frame(sender, next_seq, dropped, FLAG_FINAL, [])


def pack_entry(frame: bytes) -> bytes:
    """One entry: the frame behind its length and checksum."""
    return ENTRY.pack(len(frame), zlib.crc32(frame)) + frame


def pack_flags(flags: int) -> bytes:
    """The header's flags, as they go at FLAGS_AT."""
    return struct.pack("<I", flags)


def pack_mark(stream: int, next_seq: int) -> bytes:
    """The acknowledged progress, as it goes at MARK_AT."""
    body = struct.pack("<QQ", stream, next_seq)
    return body + struct.pack("<I", zlib.crc32(body))


def pack_identity(sender: bytes) -> bytes:
    """The writer's identity (at most MAX_IDENTITY bytes), as it goes at IDENT_AT."""
    return _IDENT.pack(len(sender), zlib.crc32(sender)) + sender


def pack_header(stream: int, next_seq: int, identity: bytes) -> bytes:
    """A whole header: preamble, mark and (when not empty) identity."""
    head = bytearray(HEADER_SIZE)
    _PREAMBLE.pack_into(head, 0, MAGIC, VERSION, 0)
    head[MARK_AT : MARK_AT + _MARK.size] = pack_mark(stream, next_seq)
    if identity:
        _IDENT.pack_into(head, IDENT_AT, len(identity), zlib.crc32(identity))
        head[IDENT_AT + _IDENT.size : IDENT_AT + _IDENT.size + len(identity)] = identity
    return bytes(head)


class SpoolContents(NamedTuple):
    """What a spool file holds, up to its last whole entry."""

    frames: list[bytes]
    mark: tuple[int, int] | None  # (stream, next_seq) acknowledged when the writer last recorded it
    identity: bytes  # the writer's packed sender, or b"" before its first frame
    torn: int  # bytes after the last whole entry (a torn write)
    stopped: bool = False  # the writer stopped appending after a failed write: the frames are a prefix of its stream


def parse_spool(data: bytes) -> SpoolContents:
    """Split a spool file into its frames, ignoring a torn tail.

    Raises:
        ValueError: not a spool file (wrong magic or version).
    """
    if len(data) < HEADER_SIZE:
        raise ValueError(f"{len(data)} bytes is shorter than a spool header")
    magic, version, flags = _PREAMBLE.unpack_from(data, 0)
    if magic != MAGIC or version != VERSION:
        raise ValueError("not an mplog spool file (magic or version)")
    stream, next_seq, crc = _MARK.unpack_from(data, MARK_AT)
    mark = (stream, next_seq) if crc == zlib.crc32(data[MARK_AT : MARK_AT + 16]) else None
    length, crc = _IDENT.unpack_from(data, IDENT_AT)
    identity = data[IDENT_AT + _IDENT.size : IDENT_AT + _IDENT.size + length] if length <= MAX_IDENTITY else b""
    if not identity or zlib.crc32(identity) != crc:
        identity = b""
    frames: list[bytes] = []
    offset = HEADER_SIZE
    while offset + ENTRY.size <= len(data):
        length, crc = ENTRY.unpack_from(data, offset)
        frame = data[offset + ENTRY.size : offset + ENTRY.size + length]
        if not length or len(frame) != length or zlib.crc32(frame) != crc:
            break
        frames.append(frame)
        offset += ENTRY.size + length
    return SpoolContents(frames, mark, identity, len(data) - offset, bool(flags & STOPPED))
