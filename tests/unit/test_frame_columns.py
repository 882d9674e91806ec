"""The column-at-a-time frame check (mplog.wire.column_check) decides what the record-by-record check decides."""

from __future__ import annotations

from typing import Any

import pytest

from mplog.exceptions import FrameError
from mplog.wire import RECORD_FIELDS, Limits
from mplog.wire.column_check import plain_columns, value_passes
from mplog.wire.decode import check_record, check_records

SAMPLES: list[Any] = [
    "s",
    "",
    7,
    0,
    1,
    -1,
    True,
    False,
    2**63 - 1,
    2**63,  # past array('q'): the column is looked at by its types
    -(2**63) - 1,
    2**64,
    2**40,
    1.5,
    -0.5,
    float("nan"),
    float("inf"),
    float("-inf"),
    1e308,  # finite, but a column of them sums to an infinity
    None,
    b"b",
    [1],
    {},
    {"k": 1},
]


def _record(i: int, **fields: Any) -> list[Any]:
    values = {
        "name": "app",
        "levelno": 20,
        "levelname": "INFO",
        "message": f"m{i}",
        "created": 1_700_000_000.0 + i,
        "msecs": float(i),
        "relativeCreated": 5.0,
        "pathname": "/a/b.py",
        "filename": "b.py",
        "module": "b",
        "lineno": 3,
        "funcName": "f",
        "thread": 11,
        "threadName": "MainThread",
        "process": 22,
        "processName": "MainProcess",
        "taskName": None,
        "exc_text": None,
        "stack_info": None,
        "extra": {},
    }
    values.update(fields)
    return [values[name] for name in RECORD_FIELDS]


def _passes_record_by_record(records: list[Any]) -> bool:
    try:
        for fields in records:
            check_record(fields, Limits())
    except (FrameError, OverflowError):  # OverflowError: an int too large for a float time check
        return False
    return not any(fields[-1] for fields in records)


@pytest.mark.parametrize("index", range(len(RECORD_FIELDS)), ids=RECORD_FIELDS)
def test_the_column_check_passes_a_frame_exactly_when_every_record_passes_alone(index: int) -> None:
    good = [_record(i) for i in range(30)]
    for value in SAMPLES:
        for where, count in ((0, 1), (15, 1), (30, 1), (0, 31)):  # one odd record, or all of them
            odd = [_record(100 + k, **{RECORD_FIELDS[index]: value}) for k in range(count)]
            records = [*good[:where], *odd, *good[where:]][: max(31, count)]
            expected = _passes_record_by_record(records)
            passed = plain_columns(records) is not None
            # Never passes a frame a record of which fails; passes every plain frame, except one
            # whose time sums overflow to an infinity (then each record is looked at: still exact).
            assert passed == expected or (expected and value == 1e308), (RECORD_FIELDS[index], value, where, count)
            try:
                check_records(records)
                checked = not any(fields[-1] for fields in records)
            except (FrameError, OverflowError):
                checked = False
            assert checked == expected


def test_the_columns_are_the_records_transposed_and_check_records_hands_them_on() -> None:
    records = [_record(i, process=None if i % 2 else 5) for i in range(40)]
    columns = check_records(records)
    assert columns is not None
    assert columns == [list(column) for column in zip(*records, strict=True)]
    assert check_records([_record(0, extra={"k": 1})]) is None  # extras: checked record by record
    assert check_records([]) is None


@pytest.mark.parametrize(
    "odd_item", [[*_record(0), None], _record(0)[:-1], "no record", tuple(_record(0)), None, {"a": 1}]
)
def test_an_item_that_is_not_a_record_of_twenty_fields_is_left_to_the_record_check(odd_item: Any) -> None:
    records = [*(_record(i) for i in range(10)), odd_item]
    assert plain_columns(records) is None
    with pytest.raises(FrameError) as caught:
        check_records(records)
    assert caught.value.reason == "bad_record"


@pytest.mark.parametrize("index", range(len(RECORD_FIELDS)), ids=RECORD_FIELDS)
def test_one_value_standing_for_a_column_passes_exactly_when_a_record_holding_it_passes(index: int) -> None:
    for value in SAMPLES:
        expected = _passes_record_by_record([_record(0, **{RECORD_FIELDS[index]: value})])
        assert value_passes(index, value) == expected, (RECORD_FIELDS[index], value)
