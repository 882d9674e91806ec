"""Hostile bytes never get past the decoder as anything but a counted FrameError.

Catalogue C1 (truncation), C2 (garbage and mutations) and C14 (decoder state after an
error); C14 in a fresh process and D1 (a pickle payload sent over every transport to a real
listener) are in tests/integration/test_wire_processes.py.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mplog.exceptions import FrameError
from mplog.listener.loop import Server
from mplog.wire import Limits, Sender, build_frame, decode_frame, encode_record, encode_sender

SENDER_BYTES = encode_sender(Sender("fuzz-host", 99, 1_700_000_000.5, 7))
# Performance is never asserted; this only catches a pathological (super-linear) decode.
# CPU time of this thread, so a loaded machine that deschedules the test does not count.
SLOW_DECODE_CPU_S = 0.5
REASONS = {
    "oversized",
    "truncated",
    "trailing_data",
    "bad_utf8",
    "too_deep",
    "ext_type",
    "over_limit",
    "bad_key",
    "undecodable",
    "not_a_frame",
    "bad_version",
    "bad_header",
    "bad_record",
    "bad_field",
}


def valid_frame(seq: int = 0, count: int = 3) -> bytes:
    records = []
    for i in range(count):
        try:
            raise RuntimeError(f"boom {i}")
        except RuntimeError:
            record = logging.LogRecord("fuzz", logging.ERROR, "/f.py", i, "rec %d ü", (i,), sys.exc_info())
        record.__dict__.update(request_id=f"r-{i}", data={"list": [1, 2.5, None, b"\x00"], "deep": {"a": {"b": "c"}}})
        records.append(encode_record(record))
    return build_frame(SENDER_BYTES, seq, 0, 0, records)


def decode_only_frame_errors(data: bytes, limits: Limits | None = None) -> str | None:
    """Decode ``data``: returns None if it is valid, else the reason; anything else escapes."""
    started = time.thread_time()
    try:
        decode_frame(data, limits or Limits())
    except FrameError as exc:
        assert exc.reason in REASONS
        return exc.reason
    finally:
        assert time.thread_time() - started < SLOW_DECODE_CPU_S
    return None


def test_every_prefix_of_a_valid_frame_is_rejected_as_truncated_and_the_next_frame_decodes():
    good = valid_frame()
    server = Server(receiver=None)  # handle_frame never touches the receiver
    logger = logging.getLogger("fuzz")
    logger.disabled = True  # accounted, not written anywhere
    try:
        for cut in range(len(good)):
            with pytest.raises(FrameError) as info:
                decode_frame(good[:cut])
            assert info.value.reason == "truncated", cut
            server.handle_frame(good[:cut])
            server.handle_frame(valid_frame(seq=3 * cut))
    finally:
        logger.disabled = False
    snap = server.stats.snapshot()
    assert snap["malformed"] == {"truncated": len(good)}
    assert snap["received"] == 3 * len(good)
    assert snap["gaps"] == snap["duplicates"] == 0


@settings(max_examples=2000, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=64 * 1024))
def test_random_bytes_raise_only_frame_error_quickly(data):
    reason = decode_only_frame_errors(data)
    assert reason is not None or data.startswith(b"\x96\x01")


def test_large_random_frames_raise_only_frame_error_quickly():
    rng = __import__("random").Random(20261125)
    for _ in range(200):
        data = rng.randbytes(64 * 1024)
        assert decode_only_frame_errors(data) is not None
        assert decode_only_frame_errors(b"\x96\x01" + SENDER_BYTES + b"\x00\x00\x00\xdc\xff\xff" + data) is not None


_GOOD = valid_frame(count=2)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(_GOOD)
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "splice"]))
        pos = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[pos] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xC1, 0xC7, 0xD4, 0xDC, 0xDD, 0xDF, 0xFF]))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        else:
            other = draw(st.integers(0, len(_GOOD) - 1))
            data[pos:pos] = _GOOD[other : other + draw(st.integers(1, 64))]
        if not data:
            data = bytearray(b"\x00")
    return bytes(data)


@settings(max_examples=800, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutated())
def test_mutated_valid_frames_raise_only_frame_error_and_decoded_ones_hold_only_plain_values(data):
    if decode_only_frame_errors(data) is None:
        frame = decode_frame(data)  # a mutation that still decodes: it must hold only plain values
        assert_plain(frame.records)


def assert_plain(value: Any) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            assert type(key) is str
            assert_plain(item)
    elif isinstance(value, list):
        for item in value:
            assert_plain(item)
    else:
        assert type(value) in (str, int, float, bool, bytes, type(None)), type(value)
