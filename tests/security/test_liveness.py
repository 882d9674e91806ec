"""Liveness: no malformed request or slow connection stops the listener serving the others.

- The status channel answers the next well-formed request after any malformed one (it
  used to be a REP socket that one request of two parts left unable to answer again).
- On ``mp://``, a connection that stalls or dribbles inside a frame does not hold up the
  other producers' records; it is dropped once its frame is late, and counted.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from typing import Any

import pytest
import zmq
from helpers import wait_for
from hostile import GoodSender, listener_config

import mplog
from mplog.listener.status_channel import control_endpoint_for, request_stats

pytestmark = pytest.mark.integration

MALFORMED: list[tuple[str, int, list[bytes]]] = [
    ("two parts", zmq.REQ, [b'{"cmd": "stats"}', b"more"]),
    ("three parts", zmq.REQ, [b"a", b"b", b"c"]),
    ("no envelope", zmq.DEALER, [b'{"cmd": "stats"}']),
    ("an empty part first", zmq.DEALER, [b"", b"", b'{"cmd": "stats"}']),
    ("not JSON", zmq.REQ, [b"\xff\xfe not json"]),
    ("not an object", zmq.REQ, [b"[1, 2, 3]"]),
    ("an unknown command", zmq.REQ, [b'{"cmd": "shutdown"}']),
]


@pytest.mark.timeout(60)
def test_the_status_channel_answers_well_formed_requests_after_any_malformed_one(tmp_path):
    with mplog.start_listener(listener_config(tmp_path / "out.log"), route_parent=False, export_env=False) as listener:
        control = control_endpoint_for(listener.endpoint)
        ctx: zmq.Context[Any] = zmq.Context()
        try:
            for name, kind, parts in MALFORMED:
                sock = ctx.socket(kind)
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(control)
                sock.send_multipart(parts)
                assert sock.poll(5000), f"no answer to {name}"
                reply = json.loads(sock.recv_multipart()[-1])
                assert "error" in reply, name
                sock.close()
                assert request_stats(listener.endpoint, timeout=5)["received"] == 0, f"no answer after {name}"
        finally:
            ctx.term()


def _dribbler(path: str, declared: int) -> socket.socket:
    """A raw connection that starts a frame of ``declared`` bytes (multiprocessing.connection framing)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.sendall(struct.pack("!i", declared))
    return sock


@pytest.mark.timeout(90)
@pytest.mark.parametrize("pace", [1.5, None], ids=["one byte every 1.5 s", "silent after the length"])
def test_a_connection_stalling_inside_a_frame_holds_up_no_other_producer(tmp_path, pace):
    out = tmp_path / "out.log"
    path = f"{tmp_path}/l.sock"
    with mplog.start_listener(
        listener_config(out), endpoint=f"mp://{path}", route_parent=False, export_env=False
    ) as listener:
        with GoodSender(listener.endpoint, out) as good:
            good.wait_seen(5)
            start = good.mark()
            slow = _dribbler(path, 100)
            began = time.monotonic()
            try:
                while time.monotonic() - began < 6.0:  # a frame must be whole 2 s after its first byte
                    if pace is not None:
                        try:
                            slow.send(b"\x00")
                        except OSError:  # the listener dropped it
                            pass
                    time.sleep(pace or 0.5)
                delay = good.max_delay(since=start)
                wait_for(lambda: listener.stats()["malformed"].get("stalled") == 1, 10)
            finally:
                slow.close()
            good.wait_seen(good.mark())
        stats = listener.stats()
    print(f"\nstalled connection ({pace}): good sender's delay {delay:.3f} s")
    assert delay < 0.5
    assert stats["malformed"] == {"stalled": 1}
    assert stats["gaps"] == 0


@pytest.mark.timeout(90)
def test_frames_half_sent_on_many_connections_hold_at_most_max_queued_bytes(tmp_path):
    """Frames being assembled are bounded: past max_queued_bytes the oldest is dropped (counted)."""
    from hostile import MiB, measured

    out = tmp_path / "out.log"
    path = f"{tmp_path}/l.sock"
    config = listener_config(out, socket={"max_queued_bytes": 8 * MiB})
    with mplog.start_listener(config, endpoint=f"mp://{path}", route_parent=False, export_env=False) as listener:
        with GoodSender(listener.endpoint, out) as good:
            good.wait_seen(5)
            start = good.mark()
            conns: list[socket.socket] = []
            with measured(listener.pid) as memory:
                try:
                    for _ in range(12):  # 12 frames of 4 MiB, all but their last byte: 48 MiB
                        sock = _dribbler(path, 4 * MiB)
                        sock.sendall(b"\x00" * (4 * MiB - 1))
                        conns.append(sock)
                    wait_for(lambda: listener.stats()["malformed"].get("stalled", 0) >= 10, 20)
                    delay = good.max_delay(since=start)
                finally:
                    for sock in conns:
                        sock.close()
            good.wait_seen(good.mark())
        stats = listener.stats()
    growth = (memory["peak"] - memory["idle"]) / MiB
    print(f"\nhalf-sent frames: peak +{growth:.1f} MiB, good sender's delay {delay:.3f} s, {stats['malformed']}")
    assert growth < 8 + 4 + 16  # the bound, one frame over it, and the interpreter's own slack
    assert delay < 0.5
    assert stats["gaps"] == 0
