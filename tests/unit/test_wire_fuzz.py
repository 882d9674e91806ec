"""Hostile bytes never get past the decoder as anything but a counted FrameError.

Catalogue C1 (truncation), C2 (garbage and mutations), C14 (decoder state after an
error) and D1 (a pickle payload, also sent over every transport to a real listener).
"""

from __future__ import annotations

import logging
import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
from helpers import file_config, read_lines, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mplog
from mplog.exceptions import FrameError
from mplog.listener.loop import Server
from mplog.transports import open_sender
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


# Runs in a fresh interpreter: hostile frames, then valid ones, through the same module
# state; a crash in the C unpacker would show as a signal exit code, not an exception.
_AFTER_HOSTILE = textwrap.dedent(
    """
    import sys
    from mplog.exceptions import FrameError
    from mplog.wire import decode_frame

    hostile = [bytes.fromhex(h) for h in sys.argv[2:]]
    good = bytes.fromhex(sys.argv[1])
    rejected = decoded = 0
    for round in range(50):
        for data in hostile:
            try:
                decode_frame(data)
            except FrameError:
                rejected += 1
        decoded += len(decode_frame(good).records)
    print(rejected, decoded)
    """
)


@pytest.mark.timeout(60)
def test_valid_frames_decode_after_hostile_ones_in_a_fresh_process():
    hostile = [
        b"\x91" * 3000,
        b"\xdd\xff\xff\xff\xff",
        b"\xc7\x00\x05",
        b"\xd7\xff" + b"\xff" * 8,
        b"\xa2\xff\xfe",
        valid_frame()[:-7],
        b"\x96\x01" + b"\x81\xa1k" * 2000,
        msgpack.packb({1: 2}),
    ]
    proc = subprocess.run(
        [sys.executable, "-c", _AFTER_HOSTILE, valid_frame().hex(), *(h.hex() for h in hostile)],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(50 * len(hostile)), str(50 * 3)]


class _Exploit:
    """Unpickling this creates the marker file: proof that something unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (Path.touch, (self.marker,))


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_pickle_frame_sent_over_each_transport_is_counted_and_never_unpickled(tmp_path, transport):
    marker = tmp_path / "pwned"
    out = tmp_path / "out.log"
    listener = mplog.start_listener(file_config(out), transport=transport, route_parent=False, export_env=False)
    sender = open_sender(listener.endpoint)
    try:
        payloads = [pickle.dumps(_Exploit(marker), protocol=p) for p in range(pickle.HIGHEST_PROTOCOL + 1)]
        for payload in payloads:
            assert wait_for(lambda p=payload: sender.send(p, 1.0), timeout=10)
        record = logging.LogRecord("after", logging.INFO, "/f.py", 1, "still alive", (), None)
        assert sender.send(build_frame(SENDER_BYTES, 0, 0, 0, [encode_record(record)]), 1.0)
        wait_for(lambda: listener.stats()["received"] == 1, timeout=10)
        stats = listener.stats()
    finally:
        sender.close()
        listener.stop()
    assert stats["malformed_total"] == len(payloads)
    assert read_lines(out) == ["still alive"]
    assert not marker.exists()
