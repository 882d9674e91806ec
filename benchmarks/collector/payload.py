"""What the senders send, and the check of what the collector wrote.

Every record is one line of exactly ``length`` bytes (plus ``\\n``) in the collector's file:
``CCCC SSSSSSSSSS xxx...x``: the connection that sent it (4 digits), its sequence number
on that connection (10 digits) and padding. Both systems write the message only, so
their lines are byte-for-byte the same, and :func:`check_output` can tell exactly which
records arrived, which are missing and which came twice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

from mplog.wire import Sender, build_frame, encode_record, encode_sender
from mplog.wire.columns import frame_of_body, pack_body
from mplog.wire.encode import plain_fields
from mplog.wire.schema import DEFAULT_LIMITS

HEAD = len("0000 0000000000 ")  # connection, sequence number, their separators
PAD = b"x"
MIN_LENGTH = HEAD + 8
MAX_CONNECTIONS = 10_000  # four digits
# RFC 5424 header of every syslog record: PRI 134 (local0.info), version 1, a fixed time, then
# HOSTNAME APP-NAME PROCID MSGID and no STRUCTURED-DATA; the message follows after one space.
SYSLOG_HEAD = "<134>1 2026-01-01T00:00:00.000000Z sender{connection} bench {pid} - - "


def line_text(connection: int, seq: int, length: int) -> str:
    """The message of record ``seq`` of ``connection``: exactly ``length`` ASCII characters."""
    head = f"{connection:04d} {seq:010d} "
    return head + "x" * (length - HEAD)


def split_lines(total: int, connections: int) -> list[int]:
    """How many of ``total`` lines each connection sends (the first ones one more if it does not divide)."""
    base, extra = divmod(total, connections)
    return [base + (1 if c < extra else 0) for c in range(connections)]


def syslog_chunks(connection: int, count: int, length: int, per_chunk: int, pid: int) -> list[bytes]:
    """``count`` RFC 5424 records, octet-counted (RFC 6587 3.4.1), ``per_chunk`` to a ``sendall``."""
    head = SYSLOG_HEAD.format(connection=connection, pid=pid)
    chunks = []
    for start in range(0, count, per_chunk):
        parts = []
        for seq in range(start, min(count, start + per_chunk)):
            message = (head + line_text(connection, seq, length)).encode("ascii")
            parts.append(b"%d %s" % (len(message), message))
        chunks.append(b"".join(parts))
    return chunks


def mplog_frames(connection: int, count: int, length: int, per_frame: int, pid: int, version: int = 2) -> list[bytes]:
    """``count`` records as mplog frames of ``per_frame`` records, packed as a worker packs them.

    The bytes are those a worker sends for ``logging.getLogger("bench").info(text)``: wire
    version 2 (records as columns, mplog.wire.columns), or with ``version=1`` version 1 (what a
    sender written to the version 1 spec sends, and what every listener reads). Each
    connection is a sender of its own (host ``sender<connection>``, stream ``connection``)
    with its own sequence numbers, as a worker on another host would be: the listener never
    holds these frames back for busy workers of its own host (mplog.listener.holding).
    """
    record = logging.LogRecord("bench", logging.INFO, __file__, 1, "", None, None)
    sender = encode_sender(Sender(f"sender{connection}", pid, time.time(), connection))
    version_1 = version == 1
    packer = msgpack.Packer(use_bin_type=True)
    frames = []
    for start in range(0, count, per_frame):
        batch = []
        for seq in range(start, min(count, start + per_frame)):
            record.msg = line_text(connection, seq, length)
            batch.append(encode_record(record) if version_1 else plain_fields(record))
        if version_1:
            frames.append(build_frame(sender, start, 0, 0, batch))
        else:
            frames.append(frame_of_body(sender, start, 0, 0, pack_body(packer, batch, DEFAULT_LIMITS)))
    return frames


@dataclass
class Verdict:
    """Exact counts found in the collector's file."""

    lines: int = 0
    lost: int = 0
    duplicated: int = 0
    malformed: int = 0  # a line of the wrong length or shape, or naming a record nobody sent
    out_of_order: int = 0  # lines whose sequence number is below an earlier one of the same connection (not an error)
    samples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.malformed)


def check_output(path: Path, counts: list[int], length: int) -> Verdict:
    """Check that ``path`` holds every ``(connection, seq < counts[connection])`` exactly once."""
    verdict = Verdict()
    seen = [bytearray(n) for n in counts]
    last = [-1] * len(counts)
    pad = PAD * (length - HEAD) + b"\n"
    size = length + 1
    with open(path, "rb") as lines:
        for line in lines:
            verdict.lines += 1
            conn, seq = line[:4], line[5:15]
            if (
                len(line) != size
                or line[HEAD:] != pad
                or line[4:5] != b" "
                or line[15:16] != b" "
                or not (conn.isdigit() and seq.isdigit())
                or int(conn) >= len(counts)
                or int(seq) >= counts[int(conn)]
            ):
                verdict.malformed += 1
                if len(verdict.samples) < 3:
                    verdict.samples.append(line[:200].decode("ascii", "replace"))
                continue
            c, s = int(conn), int(seq)
            if seen[c][s]:
                verdict.duplicated += 1
            else:
                seen[c][s] = 1
            if s < last[c]:
                verdict.out_of_order += 1
            last[c] = s
    verdict.lost = sum(marks.count(0) for marks in seen)
    return verdict
