"""Wire version 2 (mplog.wire.columns): a frame's records as columns, handled exactly as its version 1 twin.

Each test sends the same records once as a version 1 frame and once as version 2, through a
real Server (frames handed to handle_frame), and compares what was written and counted.
"""

from __future__ import annotations

import logging
import logging.config
import math
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
from frame_cases import FRAME, VARIANTS, frame_config, frame_records
from helpers import payload

from mplog.listener.dispatch import BatchDispatcher
from mplog.listener.loop import Server
from mplog.wire import RECORD_FIELDS, Limits, Sender, decode_frame, encode_sender
from mplog.wire.columns import columns_of, frame_of_body, pack_body
from mplog.wire.encode import plain_fields

SENDER = Sender("host-a", 4242, 1.7e9, 7)


class _NoReceiver:
    endpoint = "test://"

    def __init__(self) -> None:
        self.events: dict[str, int] = {}


def _v1(records: list[list[Any]], seq: int = 0) -> bytes:
    return msgpack.packb([1, list(SENDER), seq, 0, 0, records], use_bin_type=True)


def _v2(records: list[list[Any]], seq: int = 0) -> bytes:
    body = pack_body(msgpack.Packer(use_bin_type=True), records, Limits())
    frame = frame_of_body(encode_sender(SENDER), seq, 0, 0, body)
    assert frame[:2] == b"\x97\x02", "packed as version 2"
    return frame


def _v2_raw(count: Any, columns: Any, seq: int = 0) -> bytes:
    """A version 2 frame exactly as given, right or wrong."""
    return msgpack.packb([2, list(SENDER), seq, 0, 0, count, columns], use_bin_type=True)


_VOLATILE = ("uptime", "pid", "endpoint", "started", "_seen", "since")


def _counters(server: Server) -> dict[str, Any]:
    """The snapshot without what differs from run to run (times, pid)."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if not any(part in k for part in _VOLATILE)}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return clean(server.snapshot())  # type: ignore[no-any-return]


def _serve(directory: Path, frames: list[bytes], *, fast: bool = True, limits: Limits | None = None) -> tuple:
    """Hand ``frames`` to a Server writing with frame_config's handlers; the files and the counters."""
    directory.mkdir()
    logging.config.dictConfig(frame_config(directory))
    server = Server(_NoReceiver(), limits=limits)  # type: ignore[arg-type]  # frames handed in
    server.dispatcher = BatchDispatcher(fast=fast)
    try:
        for data in frames:
            server.handle_frame(data)
    finally:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})  # closes every file
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.log"))}, _counters(server)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_version_2_frame_writes_the_bytes_its_version_1_twin_writes_for_every_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variant: str
) -> None:
    errors: list[str] = []
    monkeypatch.setattr(logging.Handler, "handleError", lambda self, record: errors.append(self.get_name()))
    records = frame_records(variant)
    chunks = [records[i : i + FRAME] for i in range(0, len(records), FRAME)]
    v1 = [_v1(chunk, seq=i * FRAME) for i, chunk in enumerate(chunks)]
    v2 = [_v2(chunk, seq=i * FRAME) for i, chunk in enumerate(chunks)]
    for v1_frame, v2_frame in zip(v1, v2, strict=True):
        assert decode_frame(v2_frame).records == decode_frame(v1_frame).records
        assert len(v2_frame) < len(v1_frame)
    generic, generic_counts = _serve(tmp_path / "generic-v1", v1, fast=False)
    generic_errors, errors[:] = sorted(errors), []
    written, counts = _serve(tmp_path / "v2", v2)
    assert sorted(errors) == generic_errors
    assert written.keys() == generic.keys()
    for name in generic:
        assert written[name] == generic[name], name
    assert counts == generic_counts
    assert counts["received"] == len(records)


def test_the_worker_sends_a_column_once_when_every_record_has_the_same_value_and_never_mixes_equal_values() -> None:
    record = logging.LogRecord("app", logging.INFO, "/a/b.py", 300, "m", None, None, "f")
    fields = plain_fields(record)
    assert fields is not None
    batch = [list(fields) for _ in range(5)]
    for i, row in enumerate(batch):
        row[3] = f"m{i}"
        row[10] = True if i == 0 else 1  # lineno 1 and True: equal, but packed differently
        row[12] = int("12345")  # thread: equal ints, each its own object
        row[14] = 4242.0 if i == 2 else 4242  # equal to the process 4242, but a float
    by_name = dict(zip(RECORD_FIELDS, columns_of(batch), strict=True))
    assert by_name["name"] == "app" and by_name["levelno"] == logging.INFO and by_name["thread"] == 12345
    assert by_name["extra"] == {} and by_name["exc_text"] is None
    assert by_name["message"] == [f"m{i}" for i in range(5)]  # never folded
    assert by_name["lineno"] == [True, 1, 1, 1, 1]
    assert by_name["process"] == [4242, 4242, 4242.0, 4242, 4242]
    batch[2][14] = 4242  # (a float is no valid process: the listener would repair it)
    frame = frame_of_body(encode_sender(SENDER), 0, 0, 0, pack_body(msgpack.Packer(), batch, Limits()))
    assert frame[:2] == b"\x97\x02"
    decoded = decode_frame(frame).records
    assert decoded == batch
    assert [type(row[10]) for row in decoded] == [bool, int, int, int, int]


class _EqualToAnything:
    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = object.__hash__


def test_a_column_is_sent_once_only_when_every_value_packs_to_the_same_bytes_and_is_no_array() -> None:
    fields = plain_fields(logging.LogRecord("app", logging.INFO, "/a/b.py", 1, "m", None, None, "f"))
    assert fields is not None
    batch = [list(fields) for _ in range(4)]
    by_name = dict(zip(RECORD_FIELDS, columns_of(batch), strict=True))
    assert by_name["lineno"] == 1  # the bytes decide: a 1 in every record is sent once
    for row in batch:
        row[0] = ["not", "a", "name"]  # an array in every record: one value would read as the column
    assert dict(zip(RECORD_FIELDS, columns_of(batch), strict=True))["name"] == [["not", "a", "name"]] * 4
    body = pack_body(msgpack.Packer(use_bin_type=True), batch, Limits())
    sent = msgpack.unpackb(frame_of_body(encode_sender(SENDER), 0, 0, 0, body))
    assert sent[0] == 2 and sent[6][0] == [["not", "a", "name"]] * 4  # the listener refuses each record
    # A value equal to the others that the packer refuses is never hidden behind the first:
    # the batch goes as version 1, where the record is packed on its own (repr'd).
    batch = [list(fields) for _ in range(3)]
    batch[1][0] = _EqualToAnything()
    assert batch[1][0] == "app"
    frame = frame_of_body(encode_sender(SENDER), 0, 0, 0, pack_body(msgpack.Packer(), batch, Limits()))
    assert frame[:2] == b"\x96\x01"
    names = [row[0] for row in decode_frame(frame).records]
    assert names[0] == names[2] == "app" and names[1] != "app"


def test_a_batch_with_a_record_already_packed_or_a_value_the_batch_packer_refuses_goes_as_version_1() -> None:
    fields = plain_fields(logging.LogRecord("app", logging.INFO, "/a/b.py", 3, "m", None, None))
    assert fields is not None
    odd = [*fields[:3], "lone \udcff surrogate", *fields[4:]]
    for batch in ([fields, msgpack.packb(fields)], [fields, odd]):
        body = pack_body(msgpack.Packer(use_bin_type=True), batch, Limits())
        frame = frame_of_body(encode_sender(SENDER), 0, 0, 0, body)
        assert frame[:2] == b"\x96\x01"
        assert len(decode_frame(frame).records) == 2
    # A worker's pending batch mixes both kinds in the order they were logged, each its own record.
    mixed = [fields, msgpack.packb([*fields[:3], "packed", *fields[4:]]), [*fields[:3], "last", *fields[4:]]]
    for columns in (True, False):
        body = pack_body(msgpack.Packer(use_bin_type=True), mixed, Limits(), columns=columns)
        decoded = decode_frame(frame_of_body(encode_sender(SENDER), 0, 0, 0, body)).records
        assert [row[3] for row in decoded] == ["m", "packed", "last"]


def _good(n: int, **fields: Any) -> list[list[Any]]:
    record = logging.LogRecord("bulk", logging.INFO, "/a/b.py", 3, "", None, None, "f")
    rows = []
    for i in range(n):
        record.msg = payload(1, i, 10)
        row = plain_fields(record)
        assert row is not None
        rows.append([*row])
        for name, value in fields.items():
            rows[-1][RECORD_FIELDS.index(name)] = value(i) if callable(value) else value
    return rows


# Records the listener must repair or refuse one by one; as a version 2 frame the odd value is
# either a constant (every record has it) or one item of a column.
BAD_RECORDS = {
    "message_int_in_one": {"message": lambda i: 5 if i == 3 else payload(1, i, 10)},
    "levelno_str_everywhere": {"levelno": "x"},
    "created_nan_in_one": {"created": lambda i: math.nan if i == 4 else 1.7e9 + i},
    "created_negative_everywhere": {"created": -1.0},
    "thread_str_in_one": {"thread": lambda i: "t" if i == 0 else 77},
    "name_dict_everywhere": {"name": {"a": 1}},
    "name_too_long_everywhere": {"name": "n" * 2000},
    "extras_everywhere": {"extra": {"user": "u", "getMessage": 1}},
    "extras_in_one": {"extra": lambda i: {"user": f"u{i}"} if i == 2 else {}},
    "extras_not_a_map": {"extra": lambda i: [1] if i == 1 else {}},
    "exc_text_int_everywhere": {"exc_text": 12},
}


@pytest.mark.parametrize("case", BAD_RECORDS)
def test_bad_records_in_a_version_2_frame_are_repaired_and_counted_as_in_their_version_1_twin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.5)  # a repaired created is "now": the same in both runs
    records, tail = _good(8, **BAD_RECORDS[case]), _good(2)
    v2 = msgpack.packb([2, list(SENDER), 0, 0, 0, 8, columns_of(records)], use_bin_type=True)
    v1_written, v1_counts = _serve(tmp_path / "v1", [_v1(records), _v1(tail, seq=8)])
    v2_written, v2_counts = _serve(tmp_path / "v2", [v2, _v2(tail, seq=8)])
    assert v2_counts == v1_counts
    assert v2_written == v1_written
    assert v1_counts["received"] + v1_counts["rejected"] == 10


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (_v2_raw(8, [[1]] * 20), "bad_header"),  # every column one value short
        (_v2_raw(2, ["bulk", 20]), "bad_header"),  # 2 columns, not 20
        (_v2_raw(2, {"name": "bulk"}), "bad_header"),  # columns not an array
        (_v2_raw("2", ["x"] * 20), "bad_header"),  # a count that is no int
        (_v2_raw(-1, ["x"] * 20), "bad_header"),
        (_v2_raw(2.0, ["x"] * 20), "bad_header"),
        (_v2_raw(10**9, ["x"] * 20), "over_limit"),  # one value per column standing for 10**9 records
        (_v2_raw(20, ["x"] * 20, seq=2**64 - 10), "bad_header"),  # seq + count past 2**64
        (msgpack.packb([2, list(SENDER), 0, 0, 0, [["x"] * 20]]), "bad_version"),  # version 1's shape
        (msgpack.packb([2, list(SENDER), 0, 0, 0, 1, ["x"] * 20, "more"]), "not_a_frame"),
        (msgpack.packb([2, ["h"], 0, 0, 0, 1, ["x"] * 20]), "bad_header"),  # a bad sender
    ],
)
def test_a_version_2_frame_of_the_wrong_shape_or_size_is_counted_never_a_crash(
    tmp_path: Path, frame: bytes, reason: str
) -> None:
    written, counts = _serve(tmp_path / "bad", [frame, _v2(_good(2), seq=0)])
    assert counts["malformed"] == {reason: 1}
    assert counts["received"] == 2  # the sender's next good frame is delivered
    assert written["plain.log"].decode().splitlines() == [payload(1, i, 10) for i in range(2)]


def test_a_version_2_frame_over_max_items_is_charged_to_its_sender_as_a_version_1_frame_is(tmp_path: Path) -> None:
    limits = Limits(max_items=200)  # fewer values than 10 records of version 1 decode to
    records, tail = _good(10), _good(2)
    v1_written, v1_counts = _serve(tmp_path / "v1", [_v1(records), _v1(tail, seq=10)], limits=limits)
    v2_written, v2_counts = _serve(tmp_path / "v2", [_v2(records), _v2(tail, seq=10)], limits=limits)
    assert v1_counts["malformed"] == v2_counts["malformed"] == {"over_limit": 1}
    assert v2_counts["rejected"] == v1_counts["rejected"] == 10
    assert v2_counts["received"] == v1_counts["received"] == 2
    assert v2_written == v1_written


def _one_value_columns(count: int, **one: Any) -> list[Any]:
    """Columns of ``count`` good records, the fields named in ``one`` sent as that one value."""
    columns: list[Any] = [list(column) for column in zip(*_good(count), strict=True)]
    for name, value in one.items():
        columns[RECORD_FIELDS.index(name)] = value
    return columns


@pytest.mark.parametrize(
    ("count", "one"),
    [
        (11_000, {"message": "A" * 100_000}),  # an outsider's: 100 KB of frame, 1.1 GB of lines
        (11_000, {"message": "é" * 400}),  # 4.4 M characters, up to 4 bytes each
        (5_000, {"extra": {f"k{i}": "v" * 8 for i in range(256)}}),  # a copy of 256 extras per record
        (2_000, {"extra": {f"k{i}": i for i in range(120)}}),  # 241 values a record: past max_items
        (11_000, {"name": {"x": "y" * 1000}}),  # a map where a name goes: repaired, a repr per record
    ],
    ids=["message", "non-ascii", "extras-bytes", "extras-items", "map-as-name"],
)
def test_a_version_2_frame_whose_one_value_columns_stand_for_more_than_the_limits_is_refused_whole(
    tmp_path: Path, count: int, one: dict[str, Any]
) -> None:
    # Before: accepted, each record got the value (a 100 KB frame wrote 1.1 GB and took the
    # listener to 3.2 GB of RSS in an outsider's run).
    data = _v2_raw(count, _one_value_columns(count, **one))
    assert len(data) < Limits().max_frame_bytes
    written, counts = _serve(tmp_path / "one", [data, _v2(_good(2), seq=count)])
    assert counts["malformed"] == {"over_limit": 1}
    assert counts["rejected"] == count  # charged to its sender, as any refused frame is
    assert counts["received"] == 2
    assert written["plain.log"].decode().splitlines() == [payload(1, i, 10) for i in range(2)]


def test_a_version_2_frame_whose_one_value_columns_stand_for_what_a_version_1_frame_may_hold_is_written() -> None:
    # A worker folds the fields a whole batch shares; at the edge of the limits, still accepted.
    count = 4_000
    limits = Limits()
    message = "m" * (limits.max_frame_bytes // (count - 1) - 8)  # with the extras' 5 bytes a record
    frame = decode_frame(_v2_raw(count, _one_value_columns(count, message=message, extra={"k": "v"})))
    assert len(frame.records) == count
    assert frame.records[-1][RECORD_FIELDS.index("message")] == message


@pytest.mark.parametrize("count", [0, 1, 15, 16, 127, 128, 512, 65_535, 65_536])
def test_the_frame_around_a_body_says_version_1_for_a_records_array_and_2_for_a_count_in_any_int_encoding(
    count: int,
) -> None:
    identity = encode_sender(SENDER)
    records_array = msgpack.packb([None] * min(count, 20))[:1] if count < 16 else msgpack.packb([None] * count)[:5]
    assert frame_of_body(identity, 0, 0, 0, records_array)[:2] == b"\x96\x01"
    for packed_count in (msgpack.packb(count), b"\xcf" + count.to_bytes(8, "big"), b"\xd2" + count.to_bytes(4, "big")):
        assert frame_of_body(identity, 0, 0, 0, packed_count + msgpack.packb(["x"] * 20))[:2] == b"\x97\x02"
