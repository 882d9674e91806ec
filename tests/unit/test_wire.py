"""The wire codec: what a worker encodes is what the listener dispatches, and bad frames are named.

Round trips are property tests over any LogRecord content; the Formatter test that renders
the same record in a real worker process and after decoding is in
tests/integration/test_wire_processes.py.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import pickle
import sys
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from mplog.exceptions import FrameError
from mplog.listener.loop import Server
from mplog.transports.base import default_collector_endpoint
from mplog.wire import (
    FLAG_FINAL,
    RECORD_FIELDS,
    VERSION,
    Limits,
    Sender,
    build_frame,
    decode_frame,
    encode_record,
    encode_sender,
    make_log_record,
    record_fields,
)
from mplog.wire import decode as wire_decode
from mplog.wire import encode as wire_encode

SENDER = Sender("host-a", 4242, 1_700_000_000.25, 0xDEADBEEF)
SENDER_BYTES = encode_sender(SENDER)
# No "explain" phase: its failure analysis imports modules that warn, and warnings are errors.
PHASES = [Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink]
PROPERTY = settings(
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
    phases=PHASES,
    suppress_health_check=[HealthCheck.too_slow],
)
# Attribute names a logging call refuses as extras, or that the record class defines.
_RESERVED = (
    frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__)
    | frozenset(dir(logging.LogRecord))
    | {
        "message",
        "asctime",
        "taskName",
    }
)


def frame_of(*records: logging.LogRecord, seq: int = 0, dropped: int = 0, flags: int = 0) -> bytes:
    return build_frame(SENDER_BYTES, seq, dropped, flags, [encode_record(r) for r in records])


def new_record(msg: Any = "hello %s", args: Any = ("world",), **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("app.db", logging.INFO, "/src/app/db.py", 42, msg, args, None, "query")
    record.__dict__.update(extra)
    return record


def wire_text(text: str) -> str:
    """What a str becomes on the wire: lone surrogates are backslash-escaped."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def wire_value(value: Any) -> Any:
    """What an extra becomes on the wire (small values, fewer than Limits.max_depth levels)."""
    if isinstance(value, str):
        return wire_text(value)
    if value is None or isinstance(value, (bool, float, bytes)):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else repr(value)
    if isinstance(value, (list, tuple)):
        return [wire_value(v) for v in value]
    if isinstance(value, dict):
        return {wire_text(k) if isinstance(k, str) else repr(k): wire_value(v) for k, v in value.items()}
    return wire_text(repr(value))


def same(a: Any, b: Any) -> bool:
    """Equality where NaN equals NaN (a float extra may be NaN)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


# ---------------------------------------------------------------- strategies

texts = st.text(st.characters(codec=None), max_size=40) | st.sampled_from(["\udcff", "a\ud800b", "ü€😀", "", "%"])
native = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | texts | st.binary(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)


class Opaque:
    """A value msgpack cannot carry: it travels as its repr()."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __repr__(self) -> str:
        return f"Opaque({self.tag!r})"


non_native = (
    st.integers(min_value=2**64)
    | st.integers(max_value=-(2**63) - 1)
    | texts.map(Opaque)
    | st.frozensets(st.integers(0, 9))
)
extra_keys = texts.filter(lambda k: k not in _RESERVED)


def raised(message: str) -> Any:
    try:
        raise ValueError(message)
    except ValueError:
        return sys.exc_info()


# ---------------------------------------------------------------- round trips


@PROPERTY
@given(
    name=texts,
    level=st.integers(0, 2**31 - 1),
    template=texts,
    args=st.lists(native | non_native, max_size=3),
    extras=st.dictionaries(extra_keys, native | non_native, max_size=5),
    exc_message=st.none() | texts,
    stack=st.none() | texts.filter(bool),
)
def test_any_record_content_round_trips_through_a_frame(name, level, template, args, extras, exc_message, stack):
    msg = template + " %s" * len(args)
    exc_info = raised(exc_message) if exc_message is not None else None
    record = logging.LogRecord(name, level, "/src/pkg/mod.py", 7, msg, tuple(args), exc_info, "fn", stack)
    record.__dict__.update(extras)

    data = encode_record(record)  # never raises, whatever the content
    frame = decode_frame(build_frame(SENDER_BYTES, 5, 2, 0, [data, data]))

    assert (frame.sender, frame.seq, frame.dropped, frame.flags) == (SENDER, 5, 2, 0)
    assert len(frame.records) == 2
    fields = dict(zip(RECORD_FIELDS, frame.records[0], strict=True))
    assert fields["name"] == wire_text(name)
    assert fields["levelno"] == level
    assert fields["levelname"] == wire_text(logging.getLevelName(level))
    try:
        assert fields["message"] == wire_text(record.getMessage())
    except (TypeError, ValueError, KeyError):  # a template that does not fit its args
        assert fields["message"].startswith(wire_text(repr(msg)) + " <unformattable: ")
    assert fields["exc_text"] == (wire_text(logging.Formatter().formatException(exc_info)) if exc_info else None)
    assert fields["stack_info"] == (wire_text(stack) if stack else None)
    for key in ("created", "msecs", "relativeCreated", "lineno", "thread", "process"):
        assert fields[key] == getattr(record, key), key
    for key in ("pathname", "filename", "module", "funcName", "threadName", "processName"):
        assert fields[key] == getattr(record, key), key
    expected_extra = {wire_text(k): wire_value(v) for k, v in extras.items()}
    if exc_info and "exc_type" in fields["extra"]:  # the sender adds the exception's type and message apart
        expected_extra.setdefault("exc_type", "ValueError")
        expected_extra.setdefault("exc_message", wire_text(exc_message or ""))
    assert same(fields["extra"], expected_extra)

    rebuilt = make_log_record(frame.records[0], frame.sender.host)
    assert isinstance(rebuilt, logging.LogRecord)
    assert rebuilt.getMessage() == fields["message"]
    assert (rebuilt.name, rebuilt.levelno, rebuilt.args, rebuilt.exc_info) == (fields["name"], level, None, None)
    assert rebuilt.exc_text == fields["exc_text"]
    assert same(rebuilt.hostname, fields["extra"].get("hostname", SENDER.host))
    for key, value in fields["extra"].items():
        assert same(getattr(rebuilt, key), value)


@PROPERTY
@given(records=st.lists(st.tuples(texts, st.integers(0, 60)), min_size=0, max_size=40), seq=st.integers(0, 2**64 - 41))
def test_a_frame_keeps_its_records_in_order(records, seq):
    encoded = [encode_record(new_record("%s", (text,), n=n)) for text, n in records]
    frame = decode_frame(build_frame(SENDER_BYTES, seq, 0, FLAG_FINAL, encoded))
    assert frame.seq == seq and frame.flags == FLAG_FINAL
    assert [(r[3], r[-1]["n"]) for r in frame.records] == [(wire_text(t), n) for t, n in records]


@pytest.mark.parametrize("count", [0, 1, 15, 16, 65535, 65536])
def test_build_frame_writes_every_msgpack_array_header_size(count):
    data = encode_record(new_record())
    # 65,536 records are 8 MB and 1.4 million values
    limits = Limits(max_frame_bytes=16 * 1024 * 1024, max_records=70_000, max_items=2_000_000)
    frame = decode_frame(build_frame(SENDER_BYTES, 1, 0, 0, [data] * count), limits)
    assert len(frame.records) == count
    assert all(r == frame.records[0] for r in frame.records[:: max(count // 64, 1)])


def test_a_frame_is_the_documented_six_item_array():
    data = frame_of(new_record(), seq=7, dropped=3)
    raw = msgpack.unpackb(data)
    assert raw[:5] == [VERSION, list(SENDER), 7, 3, 0]
    assert len(raw[5][0]) == len(RECORD_FIELDS) == 20


def test_extras_that_msgpack_cannot_carry_travel_as_their_repr():
    record = new_record(obj=Opaque("x"), big=2**70, neg=-(2**64), items={1, 2}, nested={"t": (1, Opaque("y"))})
    [fields] = decode_frame(frame_of(record)).records
    assert fields[-1] == {
        "obj": "Opaque('x')",
        "big": str(2**70),
        "neg": str(-(2**64)),
        "items": "{1, 2}",
        "nested": {"t": [1, "Opaque('y')"]},
    }


def test_extras_over_the_decoder_limits_are_bounded_not_rejected():
    limits = Limits()
    deep: Any = "leaf"
    for _ in range(20):
        deep = [deep]
    record = new_record(
        deep=deep,
        long_text="y" * (limits.max_message_chars + 10),
        blob=b"z" * (limits.max_bin_len + 1),
        wide={str(i): i for i in range(limits.max_extra_fields + 1)},
        int_keys={1: "one", None: "none"},
    )
    [fields] = decode_frame(frame_of(record)).records  # the frame decodes: no batch is lost
    extra = fields[-1]
    level = extra["deep"]
    for _ in range(limits.max_depth - 1):
        level = level[0]
    assert isinstance(level, str) and level.startswith("[[")  # cut to its repr at max_depth
    assert extra["long_text"].startswith("y" * limits.max_message_chars)
    assert extra["long_text"].endswith("...[mplog: truncated 10 chars]")
    assert isinstance(extra["blob"], str) and extra["blob"].startswith("b'zzz")
    assert len(extra["blob"]) <= limits.max_repr_chars + 64
    assert isinstance(extra["wide"], str)
    assert extra["int_keys"] == {"1": "one", "None": "none"}


def test_too_many_extras_keep_the_first_max_extra_fields():
    record = new_record(**{f"k{i:04d}": i for i in range(300)})
    [fields] = decode_frame(frame_of(record)).records
    assert fields[-1] == {f"k{i:04d}": i for i in range(Limits().max_extra_fields)}


def test_a_failing_str_repr_or_message_never_raises_into_the_caller():
    class Hostile:
        def __str__(self) -> str:
            raise RuntimeError("no str")

        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    class NotText:
        def __str__(self) -> Any:
            return 42  # noqa: PLE0307  # the point of the test

    record = new_record("value %s", (Hostile(),), hostile=Hostile())
    [fields] = decode_frame(frame_of(record, new_record(NotText(), ()))).records[:1]
    assert fields[3].startswith("'value %s' <unformattable: RuntimeError>")
    assert fields[-1] == {"hostile": "<unrepresentable Hostile: RuntimeError>"}
    second = decode_frame(frame_of(new_record(NotText(), ()))).records[0]
    assert "<unformattable: TypeError>" in second[3]


def test_a_huge_message_is_cut_to_max_message_chars_with_a_marker():
    limits = Limits(max_message_chars=1000)
    data = encode_record(new_record("%s", ("m" * 5000,)), limits)
    [fields] = decode_frame(build_frame(SENDER_BYTES, 0, 0, 0, [data])).records
    assert fields[3] == "m" * 1000 + "...[mplog: truncated 4000 chars]"


def _extra_by_filter(logger: logging.Logger) -> logging.LogRecord:
    def add(record: logging.LogRecord) -> bool:
        record.request_id = "r-1"  # set as an attribute: stays inline in the record
        return True

    logger.addFilter(add)
    try:
        return _captured(logger, lambda: logger.info("x"))
    finally:
        logger.removeFilter(add)


def _extra_by_factory(logger: logging.Logger) -> logging.LogRecord:
    made = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = made(*args, **kwargs)
        record.request_id = "r-1"
        return record

    logging.setLogRecordFactory(factory)
    try:
        return _captured(logger, lambda: logger.info("x"))
    finally:
        logging.setLogRecordFactory(made)


def _captured(logger: logging.Logger, log: Any) -> logging.LogRecord:
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    logger.propagate, propagate = False, logger.propagate
    try:
        log()
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
    return seen[0]


EXTRA_CHANNELS = {
    "extra= keyword": lambda lg: _captured(lg, lambda: lg.info("x", extra={"request_id": "r-1"})),
    "LoggerAdapter": lambda lg: _captured(lg, lambda: logging.LoggerAdapter(lg, {"request_id": "r-1"}).info("x")),
    "filter sets an attribute": _extra_by_filter,
    "record factory": _extra_by_factory,
}


@pytest.mark.parametrize("channel", list(EXTRA_CHANNELS))
def test_an_extra_arriving_by_any_channel_is_shipped(channel):
    # The plain-record shortcut skips the extras check (see wire_encode._plain_referents):
    # every way an extra reaches a record must still turn it off.
    logger = logging.getLogger(f"test.extras.{channel}")
    logger.setLevel(logging.INFO)
    record = EXTRA_CHANNELS[channel](logger)
    fields = decode_frame(frame_of(record)).records[0]
    assert fields[-1] == {"request_id": "r-1"}
    assert fields[3] == "x"


def test_a_plain_record_is_packed_without_building_its_attribute_dict():
    # Asking a record for its __dict__ builds one on CPython 3.11+ (~0.4 us per logging call).
    if sys.version_info < (3, 11):
        assert wire_encode._PLAIN_REFERENTS == 0  # every instance has its dict from the start: no shortcut
        return
    logger = logging.getLogger("test.plain")
    logger.setLevel(logging.INFO)
    record = _captured(logger, lambda: logger.info("request %d handled in %.3f ms user=%s", 7, 1.234, "alice"))
    # Private on purpose: that the record's __dict__ is never built is the saving docs/benchmarks.md
    # states, and counting its referents is the only way to see it; the bytes check is the behaviour.
    assert len(gc.get_referents(record)) == wire_encode._PLAIN_REFERENTS, "no shortcut on this interpreter"
    data = encode_record(record)
    assert len(gc.get_referents(record)) == wire_encode._PLAIN_REFERENTS  # its dict was never built
    assert data == msgpack.packb(record_fields(record), use_bin_type=True)  # same bytes as the general path
    assert decode_frame(frame_of(record)).records[0][3] == "request 7 handled in 1.234 ms user=alice"


def test_an_extra_named_like_a_record_method_cannot_break_formatting():
    fields = record_fields(new_record())
    fields[-1] = {"getMessage": "shadow", "request_id": "r-1"}  # as a foreign sender could send it
    data = build_frame(SENDER_BYTES, 0, 0, 0, [msgpack.packb(fields)])
    rebuilt = make_log_record(decode_frame(data).records[0])
    assert logging.Formatter("%(message)s %(request_id)s").format(rebuilt) == "hello world r-1"


# ---------------------------------------------------------------- rejections, each with its reason


def header(version: Any = VERSION, sender: Any = None, seq: Any = 0, dropped: Any = 0, flags: Any = 0) -> list[Any]:
    return [version, list(SENDER) if sender is None else sender, seq, dropped, flags]


def record_list(**changes: Any) -> list[Any]:
    fields = dict(zip(RECORD_FIELDS, record_fields(new_record()), strict=True))
    fields.update(changes)
    return list(fields.values())


def reason_of(data: bytes, limits: Limits | None = None) -> str:
    with pytest.raises(FrameError) as info:
        decode_frame(data, limits or Limits())
    return info.value.reason


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ([*header(version=2), []], "bad_version"),
        ([*header(version=0), []], "bad_version"),
        ([*header(version=999), []], "bad_version"),
        ([*header(version="1"), []], "bad_version"),
        ([*header(version=None), []], "bad_version"),
        ([*header(version=1.0), []], "bad_version"),
        ([1, list(SENDER), 0, 0, 0], "not_a_frame"),
        ([], "not_a_frame"),
        ({"v": 1}, "not_a_frame"),
        ("a string", "not_a_frame"),
        ([*header(sender=["h", 1, 2.0]), []], "bad_header"),
        ([*header(sender=[1, 1, 2.0, 3]), []], "bad_header"),
        ([*header(sender=["h", "1", 2.0, 3]), []], "bad_header"),
        ([*header(sender="h/1"), []], "bad_header"),
        # The envelope's ranges (docs/wire-format.md, "Sender identity"): refused, never booked.
        ([*header(sender=["h", 1, 2.0, -1]), []], "bad_header"),  # was keyed .../-0000001
        ([*header(sender=["h", 1, 2.0, 2**32]), []], "bad_header"),
        ([*header(sender=["h", 1, 2.0, 2**40 + 5]), []], "bad_header"),  # was 11 hex digits
        ([*header(sender=["h", -1, 2.0, 3]), []], "bad_header"),
        ([*header(sender=["h", 2**32, 2.0, 3]), []], "bad_header"),
        ([*header(sender=["h", 1, float("nan"), 3]), []], "bad_header"),
        ([*header(sender=["h", 1, float("inf"), 3]), []], "bad_header"),
        ([*header(sender=["h", 1, -1.0, 3]), []], "bad_header"),
        ([*header(sender=["h", 1, float(2**40), 3]), []], "bad_header"),
        ([*header(sender=["h", 1, "now", 3]), []], "bad_header"),
        ([*header(sender=["h" * 256, 1, 2.0, 3]), []], "bad_header"),
        ([*header(seq=2**64 - 1), [record_list()]], "bad_header"),  # its next number would not fit in uint64
        ([*header(seq=2**64 - 2), [record_list(), record_list()]], "bad_header"),
        # A msgpack boolean is no int in the envelope (only in a record's int fields).
        ([*header(version=True), []], "bad_version"),
        ([*header(sender=["h", True, 2.0, 3]), []], "bad_header"),
        ([*header(sender=["h", 1, True, 3]), []], "bad_header"),
        ([*header(sender=["h", 1, 2.0, False]), []], "bad_header"),
        ([*header(seq=True), []], "bad_header"),
        ([*header(dropped=False), []], "bad_header"),
        ([*header(flags=True), []], "bad_header"),
        ([*header(seq=-1), []], "bad_header"),
        ([*header(seq="0"), []], "bad_header"),
        ([*header(dropped=-5), []], "bad_header"),
        ([*header(flags=None), []], "bad_header"),
        ([*header(), {"r": 1}], "bad_header"),
        ([*header(), [[1, 2, 3]]], "bad_record"),
        ([*header(), ["not a record"]], "bad_record"),
        ([*header(), [record_list()[:-1]]], "bad_record"),
        ([*header(), [[*record_list(), None]]], "bad_record"),
        ([*header(), [record_list(levelno="10")]], "bad_field"),
        ([*header(), [record_list(levelno=None)]], "bad_field"),
        ([*header(), [record_list(levelno=10.0)]], "bad_field"),
        ([*header(), [record_list(name=5)]], "bad_field"),
        ([*header(), [record_list(message=b"bytes")]], "bad_field"),
        ([*header(), [record_list(message=None)]], "bad_field"),
        ([*header(), [record_list(created=float("nan"))]], "bad_field"),
        ([*header(), [record_list(created=float("inf"))]], "bad_field"),
        ([*header(), [record_list(created=-1e300)]], "bad_field"),
        ([*header(), [record_list(created="now")]], "bad_field"),
        ([*header(), [record_list(msecs=float("nan"))]], "bad_field"),
        ([*header(), [record_list(relativeCreated=float("-inf"))]], "bad_field"),
        ([*header(), [record_list(lineno=1.5)]], "bad_field"),
        ([*header(), [record_list(exc_text=b"Traceback")]], "bad_field"),
        ([*header(), [record_list(stack_info=1)]], "bad_field"),
        ([*header(), [record_list(extra=["args"])]], "bad_field"),
        ([*header(), [record_list(extra=None)]], "bad_field"),
        ([*header(), [record_list(), record_list(thread="t")]], "bad_field"),
    ],
)
def test_wrong_envelopes_and_field_types_are_rejected_with_their_reason(obj, reason):
    assert reason_of(msgpack.packb(obj, use_bin_type=True)) == reason


DEEP_EXTRA: Any = 1
for _ in range(40):
    DEEP_EXTRA = [DEEP_EXTRA]


@pytest.mark.parametrize(
    "bad",
    [
        {"created": float("nan")},
        {"created": float("inf")},
        {"created": -0.5},
        {"created": float(2**40)},
        {"msecs": float("nan")},
        {"relativeCreated": float("inf")},
        {"created": 2**63 - 1},  # an int past the time bound
        {"thread": "t"},
        {"extra": {"deep": DEEP_EXTRA}},
    ],
)
@pytest.mark.parametrize("where", [0, 17, 39])
def test_one_bad_record_among_many_good_ones_is_found_by_the_whole_frame_check(bad, where):
    # check_records compares a frame's type signatures and time sums at once (wire._all_plain);
    # a single bad record anywhere must still be rejected with its own reason.
    good = [record_list(created=1_700_000_000.0 + i, msecs=float(i)) for i in range(40)]
    assert decode_frame(msgpack.packb([*header(), good], use_bin_type=True)).records == good
    records = [*good[:where], record_list(**bad), *good[where:]]
    assert reason_of(msgpack.packb([*header(), records], use_bin_type=True)) in ("bad_field", "too_deep")


def test_the_whole_frame_check_passes_exactly_the_frames_every_record_of_which_passes_alone():
    # wire_decode._all_plain checks a frame by its columns; it must never pass a frame the
    # record-by-record check refuses (and it passes every plain frame, or nothing is gained).
    samples = ["s", 7, True, 1.5, None, b"b", [1], {"k": 1}, float("nan"), 2**40]
    good = [record_list(created=1_700_000_000.0 + i, msecs=float(i)) for i in range(40)]
    assert wire_decode._all_plain(good)
    for index in range(len(RECORD_FIELDS)):
        for value in samples:
            odd = record_list(**{RECORD_FIELDS[index]: value})
            for where in (0, 20, 40):
                records = [*good[:where], odd, *good[where:]]
                try:
                    for fields in records:
                        wire_decode.check_record(fields, Limits())
                    alone = not any(fields[-1] for fields in records)
                except FrameError:
                    alone = False
                assert wire_decode._all_plain(records) == alone, (RECORD_FIELDS[index], value, where)
    for odd_item in ([*good[0], None], good[0][:-1], "no record", tuple(good[0])):
        assert not wire_decode._all_plain([*good, odd_item])


def test_a_record_with_a_missing_args_list_cannot_exist_args_are_merged_at_the_sender():
    # The wire has no args field: a sender merges the message, so a listener never formats foreign args.
    assert "args" not in RECORD_FIELDS
    assert make_log_record(record_list()).args is None


def test_unknown_record_keys_cannot_be_smuggled_as_a_map():
    fields = dict(zip(RECORD_FIELDS, record_fields(new_record()), strict=True))
    assert reason_of(msgpack.packb([*header(), [fields]])) == "bad_record"


def test_a_record_with_extras_nested_deeper_than_max_depth_is_rejected():
    limits = Limits()
    deep: Any = 1
    for _ in range(limits.max_depth):
        deep = [deep]
    ok: Any = deep[0]
    decode_frame(msgpack.packb([*header(), [record_list(extra={"k": ok})]]))  # max_depth - 1 levels: fine
    assert reason_of(msgpack.packb([*header(), [record_list(extra={"k": deep})]])) == "too_deep"
    deeper: Any = {"a": 1}
    for _ in range(100):
        deeper = {"a": deeper}
    assert reason_of(msgpack.packb([*header(), [record_list(extra=deeper)]])) == "too_deep"


def test_nesting_past_msgpacks_stack_is_rejected():
    assert reason_of(b"\x91" * 3000) == "too_deep"
    assert reason_of(b"\x81\xa1k" * 3000) == "too_deep"


@pytest.mark.parametrize("where", ["extra", "nested", "alone"])
@pytest.mark.parametrize("key", [1, -1, 1.5, None, True, b"bytes", [1, 2]])
def test_map_keys_that_are_not_strings_are_rejected(where, key):
    packed_key = msgpack.packb(key, use_bin_type=True)
    extra = {"PLACEHOLDER": 1} if where == "extra" else {"n": {"PLACEHOLDER": 1}}
    data = msgpack.packb([*header(), [record_list(extra=extra)]], use_bin_type=True)
    data = data.replace(b"\xabPLACEHOLDER", packed_key)
    if where == "alone":
        data = b"\x81" + packed_key + b"\x01"
    # msgpack's strict_map_key admits bytes keys; the frame check then refuses them
    expected = "not_a_frame" if (where, key) == ("alone", b"bytes") else "bad_key"
    assert reason_of(data) == expected


def test_invalid_utf8_in_any_string_is_rejected():
    fields = record_fields(new_record("MARKER", ()))
    data = msgpack.packb([*header(), [fields]], use_bin_type=True)
    assert reason_of(data.replace(b"MARKER", b"MA\xffER")) == "bad_utf8"
    assert reason_of(data.replace(b"MARKER", b"\xed\xb3\xbfKER")) == "bad_utf8"  # an encoded lone surrogate
    assert reason_of(b"\xa2\xc3\x28") == "bad_utf8"


def ext_frames() -> list[tuple[int, int, bytes]]:
    """Every ext code at several lengths, hand-encoded (msgpack refuses to build negative codes)."""
    cases = []
    fixext = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}
    for code in range(-128, 128):
        tag = (code & 0xFF).to_bytes(1, "big")
        for length in (0, 1, 4, 8, 12, 16, 65535):
            body = b"\x00" * length
            if length in fixext:
                cases.append((code, length, bytes([fixext[length]]) + tag + body))
            cases.append((code, length, b"\xc7" + bytes([length]) + tag + body if length < 256 else b""))
            cases.append((code, length, b"\xc8" + length.to_bytes(2, "big") + tag + body))
            if length == 12:
                cases.append((code, length, b"\xc9" + length.to_bytes(4, "big") + tag + body))
    return [case for case in cases if case[2]]


def test_every_ext_type_at_every_length_is_rejected_and_never_decoded():
    seen = 0
    for code, length, ext in ext_frames():
        alone = reason_of(ext)
        inside_extra = msgpack.packb([*header(), [record_list(extra={"PLACEHOLDER": 0})]], use_bin_type=True)
        inside_extra = inside_extra.replace(b"\xabPLACEHOLDER\x00", b"\xa1k" + ext)
        inside_message = msgpack.packb([*header(), [record_list(message="PLACEHOLDER")]], use_bin_type=True)
        inside_message = inside_message.replace(b"\xabPLACEHOLDER", ext)
        assert (alone, reason_of(inside_extra), reason_of(inside_message)) == ("ext_type",) * 3, (code, length)
        seen += 1
    assert seen > 256 * 7


def test_msgpack_timestamps_are_rejected_not_decoded():
    for ts in (msgpack.Timestamp(0, 0), msgpack.Timestamp(2**33, 999_999_999), msgpack.Timestamp(-1, 0)):
        packed = msgpack.packb(ts)
        assert reason_of(packed) == "ext_type"
        frame = msgpack.packb([*header(), [record_list(extra={"PLACEHOLDER": 0})]], use_bin_type=True)
        assert reason_of(frame.replace(b"\xabPLACEHOLDER\x00", b"\xa1t" + packed)) == "ext_type"
    assert reason_of(b"\xd7\xff" + b"\xff" * 8) == "ext_type"  # nsec >= 1e9


def test_an_oversized_frame_is_rejected_before_it_is_unpacked():
    limits = Limits(max_frame_bytes=1024 * 1024)
    data = msgpack.packb([*header(), [record_list(message="x" * 4 * 1024 * 1024)]])
    tracemalloc.start()
    try:
        assert reason_of(data, limits) == "oversized"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024  # nothing of the 4 MiB frame was unpacked


@pytest.mark.parametrize(
    ("bomb", "reason"),
    [
        (b"\xdd\xff\xff\xff\xff", "over_limit"),  # array32 of 2**32-1 items
        (b"\xdf\xff\xff\xff\xff", "over_limit"),  # map32
        (b"\xc6\xff\xff\xff\xff", "truncated"),  # bin32 of 4 GiB, 0 bytes present
        (b"\xdb\xff\xff\xff\xff", "truncated"),  # str32
        (b"\xc9\xff\xff\xff\xff\x01", "ext_type"),  # ext32
        (b"\x96\x01\xdd\xff\xff\xff\xff", "over_limit"),  # nested one level down
        (b"\xc6\x00\x20\x00\x00" + b"\x00" * 2 * 1024 * 1024, "over_limit"),  # bin32 of 2 MiB > max_bin_len
    ],
    ids=["array32", "map32", "bin32", "str32", "ext32", "nested_array32", "bin_over_max_bin_len"],
)
def test_length_headers_declaring_huge_sizes_are_rejected_cheaply(bomb, reason):
    tracemalloc.start()
    try:
        assert reason_of(bomb) == reason
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024


def test_a_string_longer_than_max_str_len_is_rejected():
    data = msgpack.packb([*header(), [record_list(message="s" * 2000)]])
    assert reason_of(data, Limits(max_str_len=1000)) == "over_limit"
    decode_frame(data, Limits(max_str_len=2000))


def test_more_records_than_max_records_are_rejected():
    data = frame_of(*[new_record()] * 30)
    assert reason_of(data, Limits(max_records=25)) == "over_limit"
    assert len(decode_frame(data, Limits(max_records=30)).records) == 30
    # Fewer than a record's 20 fields: msgpack's array limit lets the frame through, and the
    # records check names the same reason.
    assert reason_of(frame_of(*[new_record()] * 15), Limits(max_records=10)) == "over_limit"


def test_more_extra_fields_than_max_extra_fields_fail_the_record_not_the_decode():
    # The frame decodes; the record is refused by the strict check, and repaired by the
    # listener, which keeps the first max_extra_fields (see the spec tests below).
    data = msgpack.packb([*header(), [record_list(extra={str(i): i for i in range(11)})]])
    assert reason_of(data, Limits(max_extra_fields=10)) == "bad_field"


def test_bytes_after_the_frame_are_rejected():
    assert reason_of(frame_of(new_record()) + b"\xc0") == "trailing_data"


def test_a_reserved_byte_is_rejected_as_undecodable():
    assert reason_of(b"\xc1") == "undecodable"


def test_a_pickle_payload_is_rejected_and_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> Any:
            return (Path.touch, (marker,))

    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        payload = pickle.dumps(Exploit(), protocol=protocol)
        with pytest.raises(FrameError):
            decode_frame(payload)
        server = Server(receiver=None)  # handle_frame never touches the receiver
        server.handle_frame(payload)
        assert server.stats.snapshot()["malformed_total"] == 1
    assert not marker.exists()
    pickle.loads(pickle.dumps(Exploit()))  # the control: unpickling it does create the file
    assert marker.exists()


# ---------------------------------------------------------------- the spec answers a foreign sender's questions
# Each test pins one answer of docs/wire-format.md that a sender written from that page alone
# had to guess (issue 16, item 7), against the decoder, Stats and Server in this process.

FOREIGN = ["foreign-host", 4242, 1_700_000_000.5, 7]
FOREIGN_KEY = "foreign-host/4242/00000007"


def packed(records: list[Any], seq: int = 0, flags: int = 0, sender: list[Any] | None = None) -> bytes:
    data: bytes = msgpack.packb([VERSION, sender or FOREIGN, seq, 0, flags, records], use_bin_type=True)
    return data


class Captured(logging.Handler):
    """The records one logger handled, and each as ``fmt`` formats it (an error fails the test)."""

    def __init__(self, fmt: str = "%(message)s") -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []
        self.formatter_ = logging.Formatter(fmt)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.formatter_.format(record))


def capture(name: str = "app.db", fmt: str = "%(message)s") -> Captured:
    handler = Captured(fmt)
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return handler


def sender_stats(server: Server, key: str = FOREIGN_KEY) -> dict[str, Any]:
    return dict(server.stats.snapshot()["senders"][key])


def test_more_records_than_max_records_is_over_limit_and_charged_to_the_sender_it_names():
    # One reason whichever check finds it (msgpack's array limit, or the records check when
    # max_records is under a record's 20 fields), and the records are their sender's rejected.
    for limits, count, item in ((Limits(), 100_001, None), (Limits(max_records=10), 15, record_list())):
        server = Server(receiver=None, limits=limits)
        assert server.handle_frame(packed([item] * count)) is not None
        after = server.handle_frame(packed([record_list(message="next")], seq=count))
        assert after is not None
        snap = server.stats.snapshot()
        assert snap["malformed"] == {"over_limit": 1}
        assert (snap["received"], snap["rejected"], snap["gaps"]) == (1, count, 0)
        assert sender_stats(server)["next_seq"] == count + 1


def test_a_frame_over_the_item_budget_is_charged_to_its_sender():
    # 13,000 records of 21 values pass max_items (262,144): refused whole as they decode.
    server = Server(receiver=None)
    server.handle_frame(packed([record_list()] * 13_000))
    snap = server.stats.snapshot()
    assert snap["malformed"] == {"over_limit": 1}
    assert (snap["received"], snap["rejected"]) == (0, 13_000)


def test_an_oversized_frame_is_charged_to_the_sender_its_envelope_names():
    server = Server(receiver=None, limits=Limits(max_frame_bytes=2048))
    big = packed([record_list(message="x" * 900)] * 3)
    assert len(big) > 2048
    capture()
    assert server.handle_frame(big) is not None
    server.handle_frame(packed([record_list()], seq=3))
    server.handle_frame(b"\x00" * 4096)  # no envelope: only the counter
    snap = server.stats.snapshot()
    assert snap["malformed"] == {"oversized": 2}
    assert (snap["received"], snap["rejected"], snap["gaps"]) == (1, 3, 0)


def test_a_frame_refused_whole_with_an_invalid_envelope_is_charged_to_no_sender():
    small = Server(receiver=None, limits=Limits(max_frame_bytes=2048))
    small.handle_frame(packed([record_list(message="x" * 900)] * 3, sender=["h", -1, 1.0, 7]))  # bad pid
    server = Server(receiver=None)
    server.handle_frame(packed([None] * 100_001, sender=["h", 1, 1.0, 2**32]))  # bad stream
    # A records array declaring more records than the frame has bytes: not believed.
    server.handle_frame(packed([])[:-1] + b"\xdd\xff\xff\xff\xff")
    assert small.stats.snapshot()["senders"] == server.stats.snapshot()["senders"] == {}
    assert small.stats.snapshot()["malformed"] == {"oversized": 1}
    assert server.stats.snapshot()["malformed"] == {"over_limit": 2}


def test_the_hostname_attribute_is_set_on_every_record_even_for_an_empty_host():
    server = Server(receiver=None)
    lines = capture(fmt="%(hostname)s|%(message)s")
    server.handle_frame(packed([record_list(message="a")], sender=["", 1, 1.0, 1]))
    server.handle_frame(packed([record_list(message="b")], sender=["web-1", 1, 1.0, 2]))
    server.handle_frame(packed([record_list(message="c", extra={"hostname": "own"})], sender=["web-1", 1, 1.0, 3]))
    assert lines.lines == ["|a", "web-1|b", "own|c"]
    assert server.stats.snapshot()["handler_errors"] == {}


@pytest.mark.parametrize(
    "sender",
    [
        ["", 0, 0, 0],  # an empty host, pid 0, start_time 0 (unknown), an int start_time
        ["h" * 255, 2**32 - 1, 2.0**40 - 1, 2**32 - 1],
        ["ü" * 255, 1, 1_700_000_000.5, 1],  # characters, not bytes
    ],
)
def test_the_envelopes_boundary_values_are_accepted(sender):
    frame = decode_frame(packed([record_list()], sender=sender))
    assert list(frame.sender) == sender
    assert len(frame.sender.key.rsplit("/", 1)[1]) == 8  # the stream as 8 hex digits
    decode_frame(packed([record_list()], seq=2**64 - 2))  # the last number a record can have
    decode_frame(packed([], seq=2**64 - 1, flags=FLAG_FINAL))  # a FINAL frame saying 2**64 - 1 were numbered


def test_a_boolean_is_accepted_for_a_records_int_field_but_not_in_the_envelope():
    frame = decode_frame(packed([record_list(levelno=True, lineno=False, thread=True, process=False)]))
    assert frame.records[0][1] is True
    assert reason_of(packed([record_list()], sender=["h", True, 1.0, 1])) == "bad_header"


def test_extra_containers_within_the_decode_limits_cost_at_most_their_own_record():
    server = Server(receiver=None)
    handler = capture()
    wide = {str(i): i for i in range(300)}
    records = [
        record_list(message="nested", extra={"wide": wide, "long": list(range(1000))}),
        record_list(message="top", extra=wide),
        record_list(message="plain"),
    ]
    server.handle_frame(packed(records))
    assert handler.lines == ["nested", "top", "plain"]
    nested, top, _ = handler.records
    assert nested.wide == wide and nested.long == list(range(1000))  # type: ignore[attr-defined]
    kept = {key: getattr(top, key) for key in wide if hasattr(top, key)}
    assert kept == {str(i): i for i in range(Limits().max_extra_fields)}  # the first 256 extras
    snap = server.stats.snapshot()
    assert snap["repaired"] == {"bad_field": 1} and snap["malformed"] == {}
    assert sender_stats(server)["repaired"] == 1 and snap["received"] == 3


def test_a_container_past_the_decode_limits_refuses_its_frame_charged_to_its_sender():
    # No array may hold more than max_records values, no map more than max_records / 2 entries:
    # msgpack checks them while it decodes, before it knows which record they belong to.
    limits = Limits()
    for value in ([0] * (limits.max_records + 1), {str(i): 0 for i in range(limits.max_records // 2 + 1)}):
        server = Server(receiver=None)
        server.handle_frame(packed([record_list(message="neighbour"), record_list(extra={"big": value})]))
        snap = server.stats.snapshot()
        assert snap["malformed"] == {"over_limit": 1}
        assert (snap["received"], snap["rejected"], snap["gaps"]) == (0, 2, 0)
    decode_frame(packed([record_list(extra={"big": [0] * limits.max_records})]))  # at the limit: fine
    decode_frame(packed([record_list(extra={"big": {str(i): 0 for i in range(limits.max_records // 2)}})]))


def test_a_string_declared_longer_than_the_frame_is_truncated_not_over_limit():
    cut = packed([record_list(message="PLACEHOLDER")]).replace(b"\xabPLACEHOLDER", b"\xdb\x7f\xff\xff\xff")
    assert reason_of(cut) == "truncated"  # msgpack meets the frame's end before the length check
    whole = packed([record_list(message="s" * 2000)])
    assert reason_of(whole, Limits(max_str_len=1000)) == "over_limit"  # present: over the limit


def test_frames_after_a_final_frame_are_delivered_and_the_sender_stays_closed():
    server = Server(receiver=None)
    handler = capture()
    server.handle_frame(packed([record_list(message="before")]))
    server.handle_frame(packed([], seq=1, flags=FLAG_FINAL))
    server.handle_frame(packed([record_list(message="after")], seq=1))
    assert handler.lines == ["before", "after"]
    stats = sender_stats(server)
    assert (stats["closed"], stats["records"], stats["gaps"], stats["next_seq"]) == (True, 2, 0, 2)


def test_a_duplicate_map_key_keeps_the_last_value():
    data = packed([record_list(extra={"aa": 1, "bb": 2})]).replace(b"\xa2bb", b"\xa2aa")
    assert decode_frame(data).records[0][-1] == {"aa": 2}


def test_a_peer_key_extra_on_a_plaintext_listener_is_passed_through():
    server = Server(receiver=None)
    handler = capture()
    server.handle_frame(packed([record_list(extra={"peer_key": "claimed"})]))
    assert handler.records[0].peer_key == "claimed"  # type: ignore[attr-defined]  # proves nothing without CURVE


def test_extras_named_like_record_attributes_are_kept_under_mplog_extra():
    server = Server(receiver=None)
    handler = capture(fmt="%(message)s|%(mplog_extra_message)s|%(mplog_extra_msg)s|%(mplog_extra_getMessage)s")
    extra = {
        "message": "m",
        "asctime": "a",
        "msg": "M",
        "args": [1],
        "exc_info": "e",
        "levelno": "l",
        "getMessage": "g",
        "request_id": "r-1",
        "mplog_extra_args": "own",  # already there: kept
    }
    server.handle_frame(packed([record_list(message="text", extra=extra)]))
    assert handler.lines == ["text|m|M|g"]
    record = handler.records[0]
    renamed = {key: value for key, value in vars(record).items() if key.startswith("mplog_extra_")}
    assert renamed == {
        "mplog_extra_message": "m",
        "mplog_extra_asctime": "a",
        "mplog_extra_msg": "M",
        "mplog_extra_args": "own",
        "mplog_extra_exc_info": "e",
        "mplog_extra_levelno": "l",
        "mplog_extra_getMessage": "g",
    }
    assert (record.msg, record.args, record.exc_info, record.levelno) == ("text", None, None, logging.INFO)
    assert record.request_id == "r-1"  # type: ignore[attr-defined]
    assert "asctime" not in vars(record) and "message" in vars(record)  # set by the Formatter


def test_stats_name_the_total_received_and_each_senders_records():
    server = Server(receiver=None)
    server.handle_frame(packed([record_list()] * 3))
    snap = server.stats.snapshot()
    assert snap["received"] == 3 and "records" not in snap
    sender = snap["senders"][FOREIGN_KEY]
    assert sender["records"] == 3 and "received" not in sender
    assert {"rejected", "repaired", "dropped", "gaps", "duplicates", "next_seq", "closed"} <= set(sender)


def test_the_default_collector_socket_is_the_path_the_spec_names():
    spec = (Path(__file__).resolve().parents[2] / "docs" / "wire-format.md").read_text()
    assert "`ipc://$TMPDIR/mplog-UID/collector.sock`" in spec
    expected = f"ipc://{tempfile.gettempdir()}/mplog-{os.getuid()}/collector.sock"
    assert default_collector_endpoint() == expected
