"""Bad frames at a running listener (RELIABILITY C1, C3, D1c), over ZeroMQ ipc and the
multiprocessing transport, written with a raw PUSH socket or a raw
``multiprocessing.connection.Client``: the listener stays up, counts every bad frame by
reason, never unpickles anything, and writes the next valid record.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import random
import time
from collections import Counter
from multiprocessing import connection as mpc
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any

import pytest
import zmq
from helpers import check_lines, file_config, payload, read_lines, wait_for

import mplog
from mplog.exceptions import FrameError
from mplog.wire import Limits, Sender, build_frame, decode_frame, encode_record, encode_sender
from mplog.wire.repair import decode_escaped

pytestmark = pytest.mark.integration

MAX_FRAME = 4096
LIMITS = Limits(max_frame_bytes=MAX_FRAME)


class Poison:
    """Unpickling this creates ``path``: proof that someone unpickled it."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> Any:
        return (open, (self.path, "w"))


class RawSender:
    """Numbered valid frames from one made-up sender, with its own sequence numbers."""

    def __init__(self) -> None:
        self.identity = encode_sender(Sender("raw-host", 424242, 1.0, 7))
        self.seq = 0

    def frame(self, producer: int, number: int) -> bytes:
        record = logging.LogRecord("raw", logging.INFO, __file__, 1, "%s", (payload(producer, number),), None)
        data = build_frame(self.identity, self.seq, 0, 0, [encode_record(record)])
        self.seq += 1
        return data


def _reason(data: bytes) -> str:
    """The counter a bad frame must land in, as the codec names it."""
    try:
        decode_frame(data, LIMITS)
    except FrameError as exc:
        if exc.reason != "bad_utf8":
            return exc.reason
    try:  # the listener decodes a frame msgpack refused for invalid UTF-8 again, the bad bytes kept
        decode_escaped(data, LIMITS)
    except FrameError as exc:
        return exc.reason
    raise AssertionError(f"{data[:20]!r} is a valid frame")


def _bad_frames(marker: Path) -> tuple[list[bytes], list[bytes]]:
    """Return (random byte strings, pickles whose unpickling would create ``marker``)."""
    rng = random.Random(1)
    garbage = [rng.randbytes(rng.randint(1, 300)) for _ in range(100)]
    poison = Poison(marker)
    pickles = [pickle.dumps(poison, protocol=p) for p in range(2, pickle.HIGHEST_PROTOCOL + 1)]
    pickles.append(bytes(ForkingPickler.dumps(poison)))  # what Connection.send() would write
    return garbage, pickles


def _config(out: Path) -> dict[str, Any]:
    config = file_config(out)
    config["mplog"] = {"limits": {"max_frame_bytes": MAX_FRAME}}
    return config


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["zmq", "multiprocessing"])
def test_bad_frames_are_counted_by_reason_and_the_listener_keeps_writing(tmp_path, transport):
    out, marker = tmp_path / "out.log", tmp_path / "pwned"
    raw = RawSender()
    garbage, pickles = _bad_frames(marker)
    expected: Counter[str] = Counter(_reason(data) for data in garbage + pickles)
    valid = 0

    with mplog.start_listener(_config(out), transport=transport, route_parent=False) as listener:
        send, close, fresh = _raw_channel(transport, listener.endpoint)
        for data in garbage + pickles:
            send(data)
        # Every truncation of a valid frame, each followed by a valid frame (C1).
        template = raw.frame(0, 0)
        raw.seq = 0
        truncations = [template[:cut] for cut in range(len(template))]
        assert {_reason(data) for data in truncations} == {"truncated"}
        expected["truncated"] += len(truncations)
        for data in truncations:
            send(data)
            send(raw.frame(0, valid))
            valid += 1
        # An oversized frame on a connection of its own (C3): within twice max_frame_bytes the
        # transport hands it over and the decoder counts it; past that, the transport refuses it
        # (mp:// counts it too, libzmq drops the connection without a word).
        big_send, big_close, _ = fresh()
        big_send(b"\x00" * (MAX_FRAME + 1))
        big_send(b"\x00" * (2 * MAX_FRAME + 1))
        big_close()
        expected["oversized"] += 2 if transport == "multiprocessing" else 1
        wait_for(lambda: listener.stats()["malformed_total"] == sum(expected.values()), what="the oversized counted")
        send(raw.frame(0, valid))  # the next valid record after all of it
        valid += 1

        def settled() -> bool:
            stats = listener.stats()
            return bool(stats["received"] == valid and stats["malformed_total"] == sum(expected.values()))

        wait_for(settled, timeout=20)
        close()
        assert listener.running
        stats = listener.stats()
    assert stats["malformed"] == dict(expected)
    assert stats["received"] == valid
    assert stats["gaps"] == stats["duplicates"] == 0
    check_lines(read_lines(out), {0: valid}).assert_exact()
    assert not marker.exists()


def _raw_channel(transport: str, endpoint: str) -> tuple[Any, Any, Any]:
    """Return (send, close, fresh) for a raw connection to ``endpoint``."""
    if transport == "zmq":
        context = zmq.Context.instance()

        def fresh() -> tuple[Any, Any, Any]:
            sock = context.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 2000)
            sock.connect(endpoint)
            return sock.send, sock.close, fresh

        return fresh()

    path = endpoint[len("mp://") :]

    def fresh_mp() -> tuple[Any, Any, Any]:
        conn = mpc.Client(path, family="AF_UNIX")
        return conn.send_bytes, conn.close, fresh_mp

    return fresh_mp()


@pytest.mark.timeout(30)
def test_a_pickle_sent_with_connection_send_is_never_unpickled(tmp_path):
    out, marker = tmp_path / "out.log", tmp_path / "pwned"
    with mplog.start_listener(_config(out), transport="multiprocessing", route_parent=False) as listener:
        conn = mpc.Client(listener.endpoint[len("mp://") :], family="AF_UNIX")
        conn.send(Poison(marker))  # the API a careless receiver would answer with recv()
        raw = RawSender()
        conn.send_bytes(raw.frame(0, 0))
        wait_for(lambda: listener.stats()["received"] == 1, timeout=10)
        conn.close()
        stats = listener.stats()
    assert stats["malformed_total"] == 1
    assert not marker.exists()
    assert read_lines(out) == [payload(0, 0)]
    assert os.path.exists(out)


class _Spoiler(logging.Filter):
    """A worker-side filter that gives some records a standard field of the wrong type."""

    def filter(self, record: logging.LogRecord) -> bool:
        seq = int(str(record.args[0]).split(":")[1]) if isinstance(record.args, tuple) else 0
        if seq % 50 == 7:
            record.levelno = 20.0  # type: ignore[assignment]
        elif seq % 50 == 13:
            record.created = float("nan")
        elif seq % 50 == 21:
            record.lineno = "n/a"  # type: ignore[assignment]
        return True


def _spoiled_worker(producer: int, count: int) -> None:
    handler = mplog.setup_worker()
    handler.addFilter(_Spoiler())
    log = logging.getLogger("spoiled")
    for seq in range(count):
        log.info("%s", payload(producer, seq))


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("method", "ack"), [("fork", False), ("spawn", False), ("fork", True)])
def test_records_a_worker_filter_spoiled_are_repaired_and_their_batches_delivered(tmp_path, method, ack):
    """Packable but wrongly typed fields (a float levelno, a NaN created, a str lineno) cost
    neither the record nor the other records of its batch (they shared frames of up to 512)."""
    out, count = tmp_path / "out.log", 500
    config = file_config(out, fmt="%(levelname)s %(levelno)d %(lineno)d %(created)d %(message)s")
    started = time.time()
    # ack: acknowledged delivery (the workers learn it from MPLOG_ACK): a repaired frame is
    # acknowledged once, its records written once, none resent
    with mplog.start_listener(config, route_parent=False, ack=ack) as listener:
        ctx = multiprocessing.get_context(method)
        procs = [ctx.Process(target=_spoiled_worker, args=(p, count)) for p in range(2)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(30)
        wait_for(lambda: listener.stats()["received"] == 2 * count, timeout=20)
        stats = listener.stats()
    assert [proc.exitcode for proc in procs] == [0, 0]
    lines = read_lines(out)
    check_lines(lines, {0: count, 1: count}).assert_exact()
    assert stats["repaired"] == {"bad_field": 2 * 3 * (count // 50)}
    assert (stats["rejected"], stats["malformed_total"], stats["gaps"], stats["dropped"]) == (0, 0, 0, 0)
    assert stats["duplicates"] == 0
    assert ("rolled_back" in stats) == ack  # the acknowledging server ran
    by_seq: dict[int, list[list[str]]] = {}
    for line in lines:
        by_seq.setdefault(int(line.split(":")[1]) % 50, []).append(line.split())
    assert {(level, levelno) for level, levelno, *_ in by_seq[7]} == {("INFO", "20")}  # 20.0 kept its level
    assert {lineno for _, _, lineno, *_ in by_seq[21]} == {"0"}  # "n/a" took the default
    assert all(started - 1 <= int(created) <= time.time() for _, _, _, created, _ in by_seq[13])  # NaN: now
    assert {lineno for _, _, lineno, *_ in by_seq[0]} != {"0"}  # the others kept theirs
