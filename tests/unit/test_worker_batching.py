"""A worker packs its common records a batch at a time: the bytes, the fallbacks, the order.

``plain_fields`` keeps a common record as its field list and ``pack_records`` packs the
whole batch in one msgpack call when the batch is flushed; any other record (extras,
exception, stack) is packed when it is logged. These tests hold that path to the bytes
of packing each record on its own; tests/integration/test_worker_batching_listener.py
follows a mixed batch through a real listener.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import msgpack
import pytest
from helpers import CaptureTransport

from mplog.wire import Sender, decode_frame, encode_record, encode_sender
from mplog.wire import encode as wire_encode
from mplog.wire.encode import frame_of_packed, pack_records, plain_fields

SENDER = encode_sender(Sender("h", 1, 1.0, 1))


def _record(i: int, name: str = "batch", msg: str = "n=%d", args: tuple[Any, ...] | None = None) -> logging.LogRecord:
    return logging.LogRecord(name, logging.INFO, "/src/app.py", 10, msg, (i,) if args is None else args, None, "f")


def _fields(record: logging.LogRecord) -> list[Any]:
    fields = plain_fields(record)
    assert fields is not None
    return fields


@pytest.mark.parametrize("with_ormsgpack", [True, False], ids=["ormsgpack", "msgpack-only"])
@pytest.mark.parametrize("count", [1, 15, 16, 600])
def test_a_batch_of_common_records_packs_to_the_bytes_of_one_pack_per_record(count, with_ormsgpack, monkeypatch):
    # Private on purpose: _pack_batch is the switch between the two packers, both supported;
    # what is asserted is the behaviour, the bytes of one pack per record with either.
    if not with_ormsgpack:  # installed without its dependencies: msgpack packs the batch
        monkeypatch.setattr(wire_encode, "_pack_batch", None)
    else:
        assert wire_encode._pack_batch is not None
    records = [_record(i) for i in range(count)]
    packer = msgpack.Packer(use_bin_type=True)
    assert pack_records(packer, [_fields(r) for r in records]) == b"".join(encode_record(r) for r in records)


def test_records_packed_when_logged_keep_their_place_among_field_lists():
    plain = [_record(i) for i in range(5)]
    extra = _record(99)
    extra.request_id = "r-9"
    items = [_fields(plain[0]), _fields(plain[1]), encode_record(extra), _fields(plain[2])]
    packed = pack_records(msgpack.Packer(use_bin_type=True), items)
    frame = decode_frame(frame_of_packed(SENDER, 0, 0, 0, count=len(items), packed=packed))
    assert [r[3] for r in frame.records] == ["n=0", "n=1", "n=99", "n=2"]
    assert frame.records[2][-1] == {"request_id": "r-9"}


def test_one_unpackable_value_is_sanitized_alone_and_the_batch_still_arrives():
    # Values a filter can put on standard attributes that msgpack cannot pack: a lone
    # surrogate (a name decoded with surrogateescape) and an int past 64 bits. The batch's
    # one-call pack fails, each record is then packed on its own; the line number takes
    # the type the decoder accepts (0, the value kept as an extra), or the listener would
    # reject the record along with its whole frame.
    odd_name, odd_line = _record(1, name="bad\udcffname"), _record(2)
    odd_line.lineno = 2**70
    first = _record(0)
    items = [_fields(r) for r in (first, odd_name, odd_line, _record(3))]
    packed = pack_records(msgpack.Packer(use_bin_type=True), items)
    records = decode_frame(frame_of_packed(SENDER, 0, 0, 0, count=len(items), packed=packed)).records
    assert [r[3] for r in records] == [f"n={i}" for i in range(4)]
    assert records[1][0] == "bad\\udcffname"
    assert (records[2][10], records[2][-1]) == (0, {"mplog_bad_lineno": str(2**70)})
    alone = decode_frame(frame_of_packed(SENDER, 0, 0, 0, count=1, packed=encode_record(first)))
    assert records[0] == alone.records[0]


def test_a_record_that_is_not_common_is_not_kept_as_fields():
    with_extra, with_exc, with_stack = _record(1), _record(2), _record(3)
    with_extra.user = "u"
    try:
        raise ValueError("x")
    except ValueError:
        with_exc.exc_info = sys.exc_info()
    with_stack.stack_info = "Stack (most recent call last): ..."
    assert [plain_fields(r) for r in (with_extra, with_exc, with_stack)] == [None, None, None]


@pytest.mark.parametrize("wire_version", [1, 2])
def test_the_handler_counts_and_sends_its_pending_records_in_the_order_they_were_logged(wire_version, tmp_path):
    # The pending batch is one flat list, 20 slots per record (mplog.wire.columns): a common
    # record's fields, or a record packed when logged as (bytes, PACKED, None, ...). The
    # counters speak of records, and the frames carry them in order, whichever the mix.
    from mplog.wire.columns import MIN_COLUMNS
    from mplog.worker import MplogHandler, WorkerOptions

    handler = MplogHandler(f"ipc://{tmp_path}/none.sock", WorkerOptions(batch_records=10, wire_version=wire_version))
    transport = handler._transport
    collect = handler._transport = CaptureTransport()
    transport.close(0.0)
    try:
        records = [_record(i) for i in range(23)]
        for i in (3, 4, 11, 22):
            records[i].user = f"u{i}"  # an extra: packed when logged
        for record in records[:7]:
            handler.handle(record)
        assert handler.counters["buffered"] == 7 and handler.counters["sent"] == 0
        for record in records[7:]:
            handler.handle(record)
        assert (handler.counters["sent"], handler.counters["buffered"]) == (20, 3)
        assert handler.flush_within(1.0)
        assert (handler.counters["sent"], handler.counters["buffered"]) == (23, 0)
    finally:
        handler.close()
    frames = [decode_frame(f) for f in collect.frames]
    sent = [r for f in frames if f.records for r in f.records]
    assert [r[3] for r in sent] == [f"n={i}" for i in range(23)]
    assert [r[-1].get("user") for r in sent] == [f"u{i}" if i in (3, 4, 11, 22) else None for i in range(23)]
    assert [f.seq for f in frames] == [0, 10, 20, 23]  # the last one: the goodbye
    versions = {f[1] for f in collect.frames[:-1]}
    assert versions == {1}  # every batch held a record packed when logged
    # Batches of common records: version 2 from MIN_COLUMNS records on (unless wire_version=1),
    # version 1 below (a column at a time costs a small batch more than it saves).
    size = MIN_COLUMNS + 3
    plain = MplogHandler(f"ipc://{tmp_path}/none2.sock", WorkerOptions(batch_records=size, wire_version=wire_version))
    plain._transport.close(0.0)
    collect = plain._transport = CaptureTransport()
    try:
        for i in range(size + MIN_COLUMNS - 1):
            plain.handle(_record(i))
    finally:
        plain.close()
    assert [f[1] for f in collect.frames] == [wire_version, 1, 1]  # a full batch, the rest at close, the goodbye
    sent = [r[3] for f in collect.frames for r in decode_frame(f).records]
    assert sent == [f"n={i}" for i in range(size + MIN_COLUMNS - 1)]
