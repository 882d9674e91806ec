"""One bad record costs neither its neighbours nor itself: the listener repairs what it can.

A frame whose envelope is valid but one of whose records is not (a filter set ``levelno``
to a float, a NaN ``created``, an extra nested too deep) used to be rejected whole, every
good record of it with it. ``salvage_records`` repairs such a record (the field takes a
default, its value travels as the extra ``mplog_bad_<field>``) and refuses only what is
no record at all; the ledger still balances exactly.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mplog.exceptions import FrameError
from mplog.listener.loop import Server
from mplog.listener.stats import ledger, merge_snapshots
from mplog.wire import RECORD_FIELDS, VERSION, Sender, record_fields
from mplog.wire.decode import MAX_NAME_CHARS, check_records
from mplog.wire.repair import salvage_records

SENDER = Sender("host-s", 777, 1_700_000_000.5, 3)
LOGGER = "salvage.test"


def good(i: int, **changes: Any) -> list[Any]:
    record = logging.LogRecord(LOGGER, logging.INFO, "/src/app.py", 7, "record %d", (i,), None, "fn")
    fields = dict(zip(RECORD_FIELDS, record_fields(record), strict=True))
    fields.update(changes)
    return list(fields.values())


def frame_bytes(records: list[Any], seq: int = 0) -> bytes:
    return msgpack.packb([VERSION, list(SENDER), seq, 0, 0, records], use_bin_type=True)


@pytest.fixture
def collected() -> Iterator[list[logging.LogRecord]]:
    """Every record the listener dispatches to LOGGER (and to the root, for a repaired name)."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect()
    logger, root = logging.getLogger(LOGGER), logging.getLogger()
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        root.removeHandler(handler)
        root.setLevel(level)


DEEP: Any = "bottom"
for _ in range(12):
    DEEP = [DEEP]


@pytest.mark.parametrize(
    ("field", "value", "repaired", "kept"),
    [
        ("levelno", 20.0, 20, "20.0"),  # a filter's float level keeps its level
        ("levelno", "10", logging.INFO, "10"),  # else the level its levelname names
        ("levelno", None, logging.INFO, "None"),
        ("message", b"bytes", "", "b'bytes'"),
        ("message", None, "", "None"),
        ("lineno", 1.5, 0, "1.5"),
        ("lineno", "12", 0, "12"),
        ("msecs", float("nan"), 0.0, "nan"),
        ("relativeCreated", float("-inf"), 0.0, "-inf"),
        ("exc_text", b"Traceback", None, "b'Traceback'"),
        ("stack_info", 1, None, "1"),
        ("thread", "t", None, "t"),
        ("funcName", ["f"], None, "['f']"),
    ],
)
def test_a_record_with_a_bad_field_is_repaired_and_its_neighbours_are_delivered(
    field, value, repaired, kept, collected
):
    records = [good(0), good(1, **{field: value}), good(2)]
    with pytest.raises(FrameError):  # the frame as a whole does not pass
        check_records(msgpack.unpackb(frame_bytes(records))[-1])
    server = Server(receiver=None)
    server.handle_frame(frame_bytes(records))
    middle = "" if field == "message" else "record 1"
    assert [r.getMessage() for r in collected] == ["record 0", middle, "record 2"]
    bad = collected[1]
    assert getattr(bad, "msg" if field == "message" else field) == repaired
    assert getattr(bad, f"mplog_bad_{field}") == kept
    for other in (collected[0], collected[2]):
        assert not [name for name in vars(other) if name.startswith("mplog_bad_")]
    snap = server.stats.snapshot()
    assert (snap["received"], snap["rejected"], snap["malformed_total"]) == (3, 0, 0)
    assert snap["repaired"] == {"bad_field": 1}
    assert snap["senders"][SENDER.key]["repaired"] == 1
    assert ledger(snap, 3) == 0


@pytest.mark.parametrize("created", [float("nan"), float("inf"), -1.0, float(2**40), "now"])
def test_an_unusable_time_becomes_the_time_of_the_repair(created, collected):
    before = time.time()
    server = Server(receiver=None)
    server.handle_frame(frame_bytes([good(0, created=created)]))
    [record] = collected
    assert before <= record.created <= time.time()
    assert record.mplog_bad_created == (created if isinstance(created, str) else repr(created))
    logging.Formatter("%(asctime)s %(msecs)d %(message)s").format(record)  # a Formatter takes it


def test_a_long_logger_name_goes_to_the_root_logger_with_the_name_kept_bounded(collected):
    name = "x" * (MAX_NAME_CHARS + 1)
    server = Server(receiver=None)
    server.handle_frame(frame_bytes([good(0, name=name), good(1)]))
    assert [r.getMessage() for r in collected] == ["record 0", "record 1"]
    assert collected[0].name == "root"
    assert collected[0].mplog_bad_name == name  # 1025 chars: under max_repr_chars, kept whole
    assert logging.Logger.manager.loggerDict.get(name) is None  # no Logger made for it


def test_bad_extra_values_travel_as_their_repr_and_good_ones_as_they_are(collected):
    extra = {"deep": DEEP, "ok": {"k": [1, 2.5, None]}, "nested_bytes_key": {b"k": 1}, "n": 5}
    server = Server(receiver=None)
    server.handle_frame(frame_bytes([good(0, extra=extra)]))
    [record] = collected
    assert record.deep == repr(DEEP)
    assert record.nested_bytes_key == repr({b"k": 1})
    assert (record.ok, record.n) == ({"k": [1, 2.5, None]}, 5)
    assert server.stats.snapshot()["repaired"] == {"too_deep": 1}


def test_extras_that_are_not_a_map_become_one_repr(collected):
    server = Server(receiver=None)
    server.handle_frame(frame_bytes([good(0, extra=["a", 1])]))
    [record] = collected
    assert record.mplog_bad_extra == "['a', 1]"


def test_items_that_are_no_record_are_refused_and_counted_and_the_rest_delivered(collected):
    items = [good(0), [1, 2, 3], "not a record", good(3), [*good(4), None]]
    server = Server(receiver=None)
    server.handle_frame(frame_bytes(items))
    assert [r.getMessage() for r in collected] == ["record 0", "record 3"]
    snap = server.stats.snapshot()
    assert (snap["received"], snap["rejected"], snap["gaps"]) == (2, 3, 0)
    assert snap["malformed"] == {"bad_record": 3}
    assert snap["repaired_total"] == 0
    assert snap["senders"][SENDER.key]["next_seq"] == 5
    assert ledger(snap, 5) == 0


def test_a_resent_frame_counts_its_repairs_and_refusals_once(collected):
    items = [good(0), good(1, levelno=20.0), "no record", good(3)]
    server = Server(receiver=None)
    server.handle_frame(frame_bytes(items))
    server.handle_frame(frame_bytes(items))  # the same frame again (a resend)
    assert [r.getMessage() for r in collected] == ["record 0", "record 1", "record 3"]
    snap = server.stats.snapshot()
    assert (snap["received"], snap["rejected"], snap["duplicates"]) == (3, 1, 4)
    assert (snap["repaired"], snap["malformed"]) == ({"bad_field": 1}, {"bad_record": 1})
    assert ledger(snap, 4) == 0


def test_salvage_returns_a_reason_per_record_and_records_that_then_pass():
    items = [good(0), good(1, levelno=10.0), [0], good(3, created=math.nan, extra={"d": DEEP})]
    fixed, reasons = salvage_records(items)
    assert reasons == ["", "bad_field", "bad_record", "bad_field"]
    assert fixed[2] is None
    check_records([r for r in fixed if r is not None])  # every record left passes the decoder
    assert fixed[3] is not None
    assert fixed[3][-1]["d"] == repr(DEEP)


def test_repaired_counts_survive_a_merge_of_collectors():
    snaps = []
    for _ in range(2):
        server = Server(receiver=None)
        logging.getLogger(LOGGER).disabled = True
        try:
            server.handle_frame(frame_bytes([good(0, lineno="x")]))
        finally:
            logging.getLogger(LOGGER).disabled = False
        snaps.append(server.stats.snapshot())
    merged = merge_snapshots(snaps)
    assert merged["repaired"] == {"bad_field": 2}
    assert merged["senders"][SENDER.key]["repaired"] == 2


def test_a_frame_of_good_records_takes_no_repair(collected):
    server = Server(receiver=None)
    server.handle_frame(frame_bytes([good(i) for i in range(5)]))
    assert len(collected) == 5
    assert server.stats.snapshot()["repaired"] == {}


_MSGPACK_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5) | st.binary(max_size=3), inner, max_size=3)
    ),
    max_leaves=12,
)


@st.composite
def spoiled_frames(draw: st.DrawFn) -> list[Any]:
    """Valid records some of whose fields (or whole items) are replaced by any msgpack value."""
    items: list[Any] = [good(i) for i in range(draw(st.integers(1, 6)))]
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(items) - 1))
        if draw(st.integers(0, 9)) == 0:
            items[at] = draw(_MSGPACK_VALUES)  # no record at all
        elif type(items[at]) is list and len(items[at]) == len(RECORD_FIELDS):
            items[at][draw(st.integers(0, len(RECORD_FIELDS) - 1))] = draw(_MSGPACK_VALUES)
    return items


RICH = (
    "%(asctime)s.%(msecs)03d %(relativeCreated)d %(levelname)s:%(levelno)d %(name)s %(pathname)s:%(lineno)d "
    "%(funcName)s %(thread)s %(process)s %(message)s"
)


@settings(max_examples=300, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
@given(spoiled_frames())
def test_any_spoiled_frame_is_delivered_record_by_record_and_every_record_formats(items):
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler, root = Collect(), logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.NOTSET)
    logger = logging.getLogger(LOGGER)
    logger.setLevel(logging.NOTSET)
    try:
        server = Server(receiver=None)
        server.handle_frame(frame_bytes(items))
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    snap = server.stats.snapshot()
    refused = sum(1 for item in items if type(item) is not list or len(item) != len(RECORD_FIELDS))
    assert (snap["received"], snap["rejected"], snap["gaps"]) == (len(items) - refused, refused, 0)
    assert ledger(snap, len(items)) == 0
    assert snap["malformed_total"] == refused
    # every record reached the root logger's handler but those at a level <= 0, which a logger
    # never handles (Logger.isEnabledFor, as in one process)
    fixed, _ = salvage_records(copy.deepcopy(items))
    assert len(records) == sum(1 for fields in fixed if fields is not None and fields[1] > 0)
    formatter = logging.Formatter(RICH)
    for record in records:
        formatter.format(record)  # no field a Formatter uses can make it raise
