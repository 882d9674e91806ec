"""The codec in real processes: a line formatted in a worker equals the line after the wire;
hostile frames leave a fresh interpreter's decoder sound; a pickle frame sent to a real
listener over each transport is counted and never unpickled (catalogue C14, D1).

Moved from tests/unit/test_wire.py and tests/unit/test_wire_fuzz.py (unit tests start no processes).
"""

from __future__ import annotations

import base64
import json
import logging
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import msgpack
import pytest
from helpers import file_config, read_lines, wait_for

import mplog
from mplog.listener.loop import Server
from mplog.transports import open_sender
from mplog.wire import Sender, build_frame, encode_record, encode_sender

SENDER_BYTES = encode_sender(Sender("fuzz-host", 99, 1_700_000_000.5, 7))


def valid_frame(seq: int = 0, count: int = 3) -> bytes:
    """As in tests/unit/test_wire_fuzz.py: records with an exception, extras and nested data."""
    records = []
    for i in range(count):
        try:
            raise RuntimeError(f"boom {i}")
        except RuntimeError:
            record = logging.LogRecord("fuzz", logging.ERROR, "/f.py", i, "rec %d ü", (i,), sys.exc_info())
        record.__dict__.update(request_id=f"r-{i}", data={"list": [1, 2.5, None, b"\x00"], "deep": {"a": {"b": "c"}}})
        records.append(encode_record(record))
    return build_frame(SENDER_BYTES, seq, 0, 0, records)


# ---------------------------------------------------------------- same line before and after the wire

_FORMAT = (
    "%(name)s|%(levelno)s|%(levelname)s|%(pathname)s|%(filename)s|%(module)s|%(lineno)d|%(funcName)s|"
    "%(created)f|%(asctime)s|%(msecs)d|%(relativeCreated)d|%(thread)d|%(threadName)s|%(process)d|"
    "%(processName)s|" + ("%(taskName)s|" if sys.version_info >= (3, 12) else "") + "%(message)s|%(request_id)s"
)

# Runs in a real worker process: logs through a logger, formats the original LogRecord
# there and encodes it with the codec, then prints both for the test to compare.
_WORKER = textwrap.dedent(
    """
    import asyncio, base64, json, logging, sys
    from mplog.wire import Sender, build_frame, encode_record, encode_sender

    fmt, variant = sys.argv[1], sys.argv[2]
    out = []

    class Capture(logging.Handler):
        def emit(self, record):
            frame = build_frame(encode_sender(Sender("w", 1, 1.0, 1)), 0, 0, 0, [encode_record(record)])
            line = logging.Formatter(fmt).format(record)
            out.append({"line": line, "frame": base64.b64encode(frame).decode()})

    log = logging.getLogger("worker.fmt")
    log.addHandler(Capture())
    log.setLevel(logging.DEBUG)

    def fail():
        raise KeyError("missing \\u00fc")

    def run():
        if variant == "plain":
            log.warning("job %d of %s done", 3, "ü", extra={"request_id": "r-1"})
        elif variant == "exc_info":
            try:
                fail()
            except KeyError:
                log.exception("failed %s", "x", extra={"request_id": "r-2"})
        elif variant == "stack_info":
            log.info("here", stack_info=True, extra={"request_id": "r-3"})
        else:
            try:
                fail()
            except KeyError:
                log.error("both", exc_info=True, stack_info=True, extra={"request_id": "r-4"})

    async def in_task():
        run()

    if sys.version_info >= (3, 12):
        asyncio.run(in_task())  # taskName set by asyncio
    else:
        run()
    print(json.dumps(out))
    """
)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("variant", ["plain", "exc_info", "stack_info", "exc_info_and_stack_info"])
def test_every_standard_attribute_formats_the_same_in_the_worker_and_after_the_wire(variant):
    proc = subprocess.run(
        [sys.executable, "-c", _WORKER, _FORMAT, variant], capture_output=True, text=True, timeout=30, check=True
    )
    [item] = json.loads(proc.stdout)
    worker_line, frame = item["line"], base64.b64decode(item["frame"])

    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(logging.Formatter(_FORMAT).format(record))

    listener_logger = logging.getLogger("worker.fmt")
    collect = Collect()
    listener_logger.addHandler(collect)
    listener_logger.propagate = False
    listener_logger.setLevel(logging.DEBUG)
    try:
        server = Server(receiver=None)  # handle_frame never touches the receiver
        server.handle_frame(frame)  # decode -> accept -> make_log_record -> logger.handle
    finally:
        listener_logger.removeHandler(collect)
        listener_logger.propagate = True
        listener_logger.setLevel(logging.NOTSET)
    assert server.stats.records == 1
    assert lines == [worker_line]
    if sys.version_info >= (3, 12):
        assert "|Task-" in worker_line
    expected_tracebacks = 1 if "exc_info" in variant else 0
    assert worker_line.count("Traceback (most recent call last)") == expected_tracebacks
    assert worker_line.count("Stack (most recent call last)") == (1 if "stack_info" in variant else 0)
    if "exc_info" in variant:
        assert worker_line.count("KeyError: 'missing \u00fc'") == 1


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
