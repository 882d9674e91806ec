"""The listener's accounting as docs/wire-format.md states it, end to end (issue 16, item 7).

A raw sender (a ZeroMQ PUSH socket or a ``multiprocessing.connection`` client, nothing of
mplog's worker) sends hand-built frames to a running listener; the records written and
the stats must be what the spec says: a frame a little over ``max_frame_bytes`` is
counted and charged to its sender and costs nothing else, a frame over twice it costs its
connection (and only what the sender's numbers then show as a gap), a bad envelope is
refused without harm, each part of a multipart message is a frame, and the status
channel answers ``{"stats": ...}``.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import socket
from multiprocessing import connection as mpc
from pathlib import Path
from typing import Any

import pytest
import zmq
from helpers import check_lines, file_config, payload, read_lines, wait_for

import mplog
from mplog.listener.status_channel import control_endpoint_for
from mplog.wire import FLAG_FINAL, Sender, build_frame, encode_record, encode_sender

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

LIMIT = 64 * 1024
SENDER = Sender("spec-host", 4242, 1_700_000_000.5, 0x5EC)
KEY = "spec-host/4242/000005ec"


def _config(out: Path) -> dict[str, Any]:
    config = file_config(out)
    config["mplog"] = {"limits": {"max_frame_bytes": LIMIT}}
    return config


def _record(n: int, size: int = 0) -> bytes:
    record = logging.LogRecord("spec", logging.INFO, __file__, 1, "%s", (payload(0, n, size),), None)
    return encode_record(record)


def _frame(seq: int, n: int = 1, size: int = 0, flags: int = 0, sender: Sender = SENDER) -> bytes:
    return build_frame(encode_sender(sender), seq, 0, flags, [_record(i, size) for i in range(seq, seq + n)])


class _Raw:
    """A raw connection to the listener: a PUSH socket, or the ``mp://`` framing."""

    def __init__(self, transport: str, endpoint: str) -> None:
        self.transport = transport
        if transport == "zmq":
            self.context = zmq.Context()
            self.sock = self.context.socket(zmq.PUSH)
            self.sock.setsockopt(zmq.LINGER, 5000)
            self.sock.connect(endpoint)
        else:
            self.conn = mpc.Client(endpoint[len("mp://") :], family="AF_UNIX")

    def send(self, data: bytes) -> bool:
        """Send one frame; False when the listener had closed the connection (what a sender sees)."""
        try:
            if self.transport == "zmq":
                self.sock.send(data)
            else:
                self.conn.send_bytes(data)
        except OSError:
            return False
        return True

    def close(self) -> None:
        if self.transport == "zmq":
            self.sock.close()
            self.context.term()
        else:
            self.conn.close()


@pytest.mark.parametrize("transport", ["zmq", "multiprocessing"])
def test_a_frame_a_little_over_max_frame_bytes_is_counted_charged_and_costs_nothing_else(tmp_path, transport):
    out = tmp_path / "out.log"
    with mplog.start_listener(_config(out), transport=transport, route_parent=False) as listener:
        raw = _Raw(transport, listener.endpoint)
        for seq in range(10):
            raw.send(_frame(seq))
        big = _frame(10, size=LIMIT + 1024)
        assert LIMIT < len(big) <= 2 * LIMIT
        raw.send(big)
        for seq in range(11, 21):
            raw.send(_frame(seq))
        raw.send(_frame(21, n=0, flags=FLAG_FINAL))
        wait_for(lambda: listener.stats()["senders"].get(KEY, {}).get("closed"), timeout=20)
        raw.close()
        stats = listener.stats()
    sender = stats["senders"][KEY]
    assert (sender["records"], sender["rejected"], sender["gaps"], sender["next_seq"]) == (20, 1, 0, 21)
    assert stats["malformed"] == {"oversized": 1}
    assert stats["connections"].get("disconnected", 0) <= 1  # only the sender's own close
    assert read_lines(out) == [payload(0, n) for n in range(21) if n != 10]


@pytest.mark.parametrize("transport", ["zmq", "multiprocessing"])
def test_a_frame_over_twice_max_frame_bytes_costs_its_connection_and_the_ledger_still_balances(tmp_path, transport):
    out = tmp_path / "out.log"
    with mplog.start_listener(_config(out), transport=transport, route_parent=False) as listener:
        raw = _Raw(transport, listener.endpoint)
        for seq in range(10):
            raw.send(_frame(seq))
        wait_for(lambda: listener.stats()["received"] == 10, timeout=20)
        raw.send(_frame(10, size=2 * LIMIT + 1024))
        # Written behind it, on the connection it costs: lost. Over mp:// the sender's writes
        # fail once the listener has closed the connection; over ZeroMQ they seem to succeed.
        accepted = [raw.send(_frame(seq)) for seq in range(11, 21)]
        if transport == "zmq":
            assert all(accepted)
        disconnected = "disconnected" if transport == "zmq" else "oversized"
        wait_for(lambda: listener.stats()["connections" if transport == "zmq" else "malformed"].get(disconnected))
        if transport == "multiprocessing":  # the sender reconnects (a PUSH socket does so by itself)
            raw.close()
            raw = _Raw(transport, listener.endpoint)
        for seq in range(21, 31):  # and numbers on
            raw.send(_frame(seq))
        raw.send(_frame(31, n=0, flags=FLAG_FINAL))
        wait_for(lambda: listener.stats()["senders"][KEY]["closed"], timeout=20)
        raw.close()
        stats = listener.stats()
    sender = stats["senders"][KEY]
    lines = read_lines(out)
    assert lines[:10] == [payload(0, n) for n in range(10)] and lines[-10:] == [payload(0, n) for n in range(21, 31)]
    assert sender["records"] == len(lines) and sender["duplicates"] == 0
    assert sender["records"] + sender["gaps"] + sender["rejected"] == 31  # every numbered record accounted for
    assert sender["gaps"] >= 1  # the frame over twice the limit, at least
    if transport == "multiprocessing":
        assert stats["malformed"] == {"oversized": 1}  # counted by the transport, charged to no sender
    else:
        assert stats["malformed"] == {}  # libzmq drops the connection without a word


def test_a_negative_pid_is_refused_and_cannot_stop_the_listener(tmp_path):
    # Two mp:// connections claiming one sender of this host make the listener ask whether its
    # process still runs: with a negative pid that question raised and ended the receive loop.
    out = tmp_path / "out.log"
    bad = Sender(socket.gethostname(), -1, 0.0, 9)
    with mplog.start_listener(_config(out), transport="multiprocessing", route_parent=False) as listener:
        first, second = (_Raw("multiprocessing", listener.endpoint) for _ in range(2))
        first.send(_frame(0, sender=bad))
        second.send(_frame(1, sender=bad))
        good = _Raw("multiprocessing", listener.endpoint)
        good.send(_frame(0, n=3))
        wait_for(lambda: listener.stats()["received"] == 3, timeout=20)
        for raw in (first, second, good):
            raw.close()
        assert listener.running
        stats = listener.stats()
    assert stats["malformed"] == {"bad_header": 2}
    assert list(stats["senders"]) == [KEY]
    check_lines(read_lines(out), {0: 3}).assert_exact()


def test_each_part_of_a_multipart_message_is_a_frame(tmp_path):
    out = tmp_path / "out.log"
    with mplog.start_listener(_config(out), transport="zmq", route_parent=False) as listener:
        raw = _Raw("zmq", listener.endpoint)
        raw.sock.send_multipart([_frame(0, n=2), _frame(2, n=3), _frame(5, n=0, flags=FLAG_FINAL)])
        wait_for(lambda: listener.stats()["senders"].get(KEY, {}).get("closed"), timeout=20)
        raw.close()
        stats = listener.stats()
    assert (stats["received"], stats["frames"], stats["gaps"]) == (5, 3, 0)
    check_lines(read_lines(out), {0: 5}).assert_exact()


def test_the_status_channel_answers_stats_wrapped_in_a_stats_key(tmp_path):
    out = tmp_path / "out.log"
    with mplog.start_listener(_config(out), transport="zmq", route_parent=False) as listener:
        raw = _Raw("zmq", listener.endpoint)
        raw.send(_frame(0, n=4))
        wait_for(lambda: listener.stats()["received"] == 4, timeout=20)
        context = zmq.Context()
        try:
            req = context.socket(zmq.REQ)
            req.setsockopt(zmq.LINGER, 0)
            req.connect(control_endpoint_for(listener.endpoint))
            req.send(json.dumps({"cmd": "stats"}).encode())
            assert req.poll(5000)
            reply = json.loads(req.recv())
            req.close()
        finally:
            context.term()
        raw.close()
    assert set(reply) == {"stats"}
    assert reply["stats"]["received"] == 4
    assert reply["stats"]["senders"][KEY]["records"] == 4


def _ack_producer(count: int, big: int) -> None:
    mplog.setup_worker()  # acknowledged delivery: the listener exported MPLOG_ACK=1
    log = logging.getLogger("spec")
    for n in range(count):
        log.info("%s", payload(0, n, LIMIT + 1024 if n == big else 0))


@pytest.mark.timeout(90)
def test_under_acknowledged_delivery_a_frame_over_max_frame_bytes_is_acknowledged_as_rejected(tmp_path):
    # The frame is refused and charged to its sender, then acknowledged: the worker's stream
    # goes on. Before, it was never acknowledged: resent every ack_timeout, and every later
    # frame of the worker refused as out of order until it gave up at exit.
    out = tmp_path / "out.log"
    count, big = 200, 100
    with mplog.start_listener(_config(out), ack=True, route_parent=False) as listener:
        proc = multiprocessing.get_context("fork").Process(target=_ack_producer, args=(count, big))
        proc.start()
        proc.join(60)
        assert proc.exitcode == 0
        stats = listener.stats()
    [sender] = stats["senders"].values()
    lines = read_lines(out)
    written = {int(line.split(":")[1]) for line in lines}
    assert big not in written and len(lines) == len(written)  # the big record's batch refused, nothing twice
    assert sender["rejected"] == count - len(written) >= 1
    assert (sender["gaps"], sender["duplicates"], sender["closed"]) == (0, 0, True)
    assert stats["malformed"] == {"oversized": 1}
    assert set(range(big + 1, count)) <= written  # every record after it delivered
