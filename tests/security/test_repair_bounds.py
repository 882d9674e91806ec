"""What one frame can cost the listener to decode and repair, checked without a listener process.

The listener's decoder counts the values a long frame decodes to (``Limits.max_items``),
refuses a record with nothing in it instead of inventing one, and writes the repr() of a
refused value at a cost that does not grow with the value (docs/security.md, Bounds).
"""

from __future__ import annotations

import time
from typing import Any

import msgpack
import pytest
from hostile import NoReceiver

from mplog.exceptions import FrameError
from mplog.listener.loop import Server
from mplog.wire import Limits, decode_frame
from mplog.wire.repair import salvage_records
from mplog.wire.schema import RECORD_FIELDS

SENDER = ["host-r", 5, 1.0, 9]


def rec(name: str = "a", message: str = "m", extra: Any = None) -> list[Any]:
    return [name, 20, "INFO", message, 1.7e9, 0.0, 0.0, "p.py", "p.py", "p", 1] + [None] * 8 + [extra or {}]


def packed(records: list[Any], seq: int = 0) -> bytes:
    data: bytes = msgpack.packb([1, SENDER, seq, 0, 0, records], use_bin_type=True)
    return data


def test_the_item_budget_costs_frames_below_it_nothing_and_bounds_those_above():
    """A frame no longer than max_items bytes cannot hold more values; a longer one is counted as it decodes."""
    limits = Limits(max_items=1000)
    ok = packed([rec("a", "m" * 2000)])  # 2 KB, 30 values
    assert len(ok) > limits.max_items
    assert len(decode_frame(ok, limits).records) == 1
    # 48 records of 22 values (the array, 20 fields, the extra map), the records array, the header: 1,117.
    many = packed([rec()] * 48)
    assert len(many) > limits.max_items
    with pytest.raises(FrameError) as refused:
        decode_frame(many, limits)
    assert refused.value.reason == "over_limit"
    assert len(decode_frame(many, Limits(max_items=1117)).records) == 48
    with pytest.raises(FrameError):
        decode_frame(many, Limits(max_items=1116))


def test_four_million_nils_in_one_extra_are_refused_while_they_decode():
    data = packed([rec(extra={"x": [[None] * 100_000] * 40})])
    assert len(data) <= Limits().max_frame_bytes
    start = time.perf_counter()
    with pytest.raises(FrameError) as refused:
        decode_frame(data)
    assert refused.value.reason == "over_limit"
    assert time.perf_counter() - start < 0.5  # stopped after max_items values, not 4 million


def test_a_record_with_nothing_valid_is_refused_and_one_with_a_message_is_repaired():
    nothing = [None] * 20
    extras_only = [None] * 19 + [{"user": "x"}]  # nothing of a record's own fields
    message_only = [None] * 3 + ["kept"] + [None] * 16
    fixed, reasons = salvage_records([nothing, extras_only, message_only, rec()], Limits())
    assert reasons == ["empty_record", "empty_record", "bad_field", ""]
    assert fixed[0] is None and fixed[1] is None
    assert fixed[2] is not None
    repaired = dict(zip(RECORD_FIELDS, fixed[2], strict=True))
    assert (repaired["message"], repaired["name"], repaired["levelno"]) == ("kept", "root", 30)


def test_the_repr_of_a_refused_value_costs_the_same_whatever_its_size():
    """An extra nested past max_depth travels as its repr(), written until max_repr_chars and no further."""
    limits = Limits()

    def nested(width: int) -> Any:
        value: Any = [None] * width
        for _ in range(limits.max_depth + 2):
            value = [value]
        return value

    def repair_seconds(width: int) -> tuple[float, str]:
        records = [rec(extra={"deep": nested(width)})]
        start = time.perf_counter()
        fixed, reasons = salvage_records(records, limits)
        elapsed = time.perf_counter() - start
        assert reasons == ["too_deep"]
        assert fixed[0] is not None
        text: str = fixed[0][-1]["deep"]
        return elapsed, text

    _, small_text = repair_seconds(10)
    assert small_text == repr(nested(10))  # a repr that fits is written exactly
    large, large_text = repair_seconds(100_000)
    assert large_text.startswith("[" * (limits.max_depth + 3) + "None, None")
    assert large_text.endswith("...[mplog: cut]")
    assert len(large_text) == limits.max_repr_chars + len("...[mplog: cut]")
    assert large < 0.05  # stops at max_repr_chars instead of writing 600,000 characters first


def test_refused_records_are_counted_and_their_neighbours_delivered():
    server = Server(NoReceiver())  # type: ignore[arg-type]  # the receive path only: frames handed in directly
    server.handle_frame(packed([rec("keep.a"), [None] * 20, rec("keep.b")]))
    stats = server.snapshot()
    assert stats["received"] == 2
    assert stats["rejected"] == 1
    assert stats["malformed"] == {"empty_record": 1}
    assert stats["repaired_total"] == 0
