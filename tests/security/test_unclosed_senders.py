"""Senders whose end was never seen: flagged in the stats, counted in the ledger as possible loss.

A sender that ends without its goodbye frame may have lost its last records with no later
frame to reveal them as a gap. The listener flags it (``unclosed``): on this host once its
process is gone (pid and start time), elsewhere once it has been silent for
``SILENT_AFTER`` seconds, and on transports that name connections (``mp://``, the
acknowledging ROUTER) as soon as the connection that owned it ended. ``mplog.ledger``
carries the count beside the remainder.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from typing import Any

import psutil
import pytest
import zmq
from helpers import wait_for

import mplog
from mplog.listener.stats import CONNECTION_ENDED, PROCESS_GONE, SILENT, SILENT_AFTER, Stats, ledger, merge_snapshots
from mplog.transports.base import TransportOptions
from mplog.transports.mpqueue import MpSender
from mplog.wire import FLAG_FINAL, Frame, Sender, build_frame, encode_record, encode_sender

HERE = socket.gethostname()


def frame(sender: Sender, seq: int, n: int, flags: int = 0) -> Frame:
    return Frame(sender, seq, 0, flags, [["record"]] * n)


@pytest.fixture
def process():
    """A real process on this host: its pid and start time make a sender identity."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def test_a_sender_on_this_host_whose_process_ended_without_a_goodbye_is_flagged_until_its_goodbye_arrives(process):
    me = Sender(HERE, process.pid, psutil.Process(process.pid).create_time(), 7)
    stats = Stats()
    stats.accept(frame(me, 0, 10))
    assert stats.note_ends(now=True) == 0 and stats.snapshot()["senders"][me.key]["unclosed"] == ""
    process.kill()
    process.wait(timeout=10)
    assert stats.note_ends(now=True) == 1
    snap = stats.snapshot()
    assert snap["unclosed"] == 1 and snap["senders"][me.key]["unclosed"] == PROCESS_GONE
    assert snap["gaps"] == 0  # nothing else would say that its last records may be missing
    # A goodbye still queued behind a backlog arrives after all: closed, no longer flagged.
    stats.accept(frame(me, 10, 0, FLAG_FINAL))
    stats.note_ends(now=True)
    snap = stats.snapshot()
    assert snap["unclosed"] == 0
    assert (snap["senders"][me.key]["closed"], snap["senders"][me.key]["unclosed"]) == (True, "")


def test_a_reused_pid_is_not_mistaken_for_the_sender(process):
    started = psutil.Process(process.pid).create_time()
    stats = Stats()
    stats.accept(frame(Sender(HERE, process.pid, started - 3600.0, 1), 0, 1))  # an earlier process, same pid
    stats.accept(frame(Sender(HERE, process.pid, started, 2), 0, 1))
    stats.note_ends(now=True)
    flags = sorted((s.stream, s.unclosed) for s in stats.senders.values())
    assert flags == [(1, PROCESS_GONE), (2, "")]


def test_a_sender_on_another_host_counts_as_ended_once_silent_and_as_open_again_when_it_sends():
    remote = Sender("elsewhere.example", 4242, 1_700_000_000.0, 1)
    stats = Stats()
    stats.accept(frame(remote, 0, 5))
    stats.note_ends(now=True)
    assert stats.senders[remote.key].unclosed == ""
    stats.senders[remote.key].last_seen -= SILENT_AFTER + 1
    stats.senders[remote.key].first_seen -= SILENT_AFTER + 1
    assert stats.note_ends(now=True) == 1 and stats.senders[remote.key].unclosed == SILENT
    stats.accept(frame(remote, 5, 5))
    assert stats.note_ends(now=True) == 0 and stats.senders[remote.key].unclosed == ""


def test_the_ledger_keeps_its_number_and_names_the_senders_whose_end_was_never_seen(process):
    gone = Sender(HERE, process.pid, psutil.Process(process.pid).create_time(), 1)
    closed = Sender("elsewhere.example", 1, 1_700_000_000.0, 1)
    stats = Stats()
    stats.accept(frame(gone, 0, 8))
    stats.accept(frame(closed, 0, 4))
    stats.accept(frame(closed, 4, 0, FLAG_FINAL))
    clean = ledger(stats.snapshot(), 12)
    assert clean == 0 and not clean.possible_loss and repr(clean) == "Balance(0)"
    process.kill()
    process.wait(timeout=10)
    stats.note_ends(now=True)
    snap = stats.snapshot()
    short = ledger(snap, 20)  # 8 more were logged than arrived: the gone sender's tail, perhaps
    assert short == 8 and isinstance(short, int) and short.unclosed == 1 and short.possible_loss
    assert repr(short) == "Balance(8, possible loss: 1 senders ended without a goodbye)"
    assert mplog.ledger(snap, 12) == 0 and mplog.ledger(snap, 12).possible_loss  # balanced, yet not clean
    # Merged across collectors: flagged unless one of them got the goodbye.
    other = Stats()
    other.accept(frame(gone, 8, 0, FLAG_FINAL))
    assert merge_snapshots([snap, snap])["unclosed"] == 1
    merged = merge_snapshots([snap, other.snapshot()])
    assert merged["unclosed"] == 0 and merged["senders"][gone.key]["unclosed"] == ""


# ---------------------------------------------------------------- a connection that ended, on a real listener

QUIET = {"version": 1, "handlers": {"null": {"class": "logging.NullHandler"}}, "root": {"handlers": ["null"]}}


def _raw(sender: Sender, seq: int, n: int, flags: int = 0) -> bytes:
    record = encode_record(logging.LogRecord("raw", logging.INFO, __file__, 1, "hello", None, None))
    return build_frame(encode_sender(sender), seq, 0, flags, [record] * n)


class _Connection:
    """One connection of its own to a listener that names connections: mp:// (MpSender) or the ack ROUTER (DEALER)."""

    def __init__(self, kind: str, endpoint: str) -> None:
        self.kind = kind
        if kind == "mp":
            self.mp = MpSender(endpoint, TransportOptions())
        else:
            self.ctx: zmq.Context[Any] = zmq.Context()
            self.sock = self.ctx.socket(zmq.DEALER)
            self.sock.linger = 5000
            self.sock.connect(endpoint)

    def send(self, frame: bytes) -> None:
        if self.kind == "mp":
            assert self.mp.send(frame, timeout=5.0)
        else:
            self.sock.send(frame)

    def close(self) -> None:
        if self.kind == "mp":
            self.mp.close()
        else:
            self.sock.close()
            self.ctx.term()


@pytest.mark.integration
@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["mp", "ack"])
def test_a_sender_whose_connection_ended_without_a_goodbye_is_flagged_until_it_sends_again(kind):
    # On another host: no process to look at, and silent for far less than SILENT_AFTER.
    away, done = Sender("elsewhere.example", 4242, 1_700_000_000.0, 1), Sender("elsewhere.example", 4243, 1.7e9, 1)
    options = {"transport": "multiprocessing"} if kind == "mp" else {"ack": True}
    with mplog.start_listener(QUIET, route_parent=False, export_env=False, **options) as listener:
        first = _Connection(kind, listener.endpoint)
        first.send(_raw(away, 0, 10))
        first.send(_raw(done, 0, 5))
        first.send(_raw(done, 5, 0, FLAG_FINAL))  # this one said goodbye before the connection ended
        wait_for(lambda: listener.stats()["received"] == 15)
        assert listener.stats()["senders"][away.key]["unclosed"] == ""
        first.close()  # no goodbye for `away`
        # Before: "open" until 300 s of silence; now flagged as soon as the end is noticed.
        stats = wait_for(lambda: (s := listener.stats())["unclosed"] == 1 and s, timeout=10)
        assert stats["senders"][away.key]["unclosed"] == CONNECTION_ENDED
        assert stats["senders"][done.key]["unclosed"] == "" and stats["senders"][done.key]["closed"]
        assert ledger(stats, 15) == 0 and ledger(stats, 15).possible_loss
        assert "1 ended without goodbye (possible loss)" in str(stats)
        second = _Connection(kind, listener.endpoint)  # the same sender, back on a new connection
        second.send(_raw(away, 10, 5))
        stats = wait_for(lambda: (s := listener.stats())["received"] == 20 and s)
        assert (stats["unclosed"], stats["senders"][away.key]["unclosed"]) == (0, "")
        second.send(_raw(away, 15, 0, FLAG_FINAL))
        wait_for(lambda: listener.stats()["senders"][away.key]["closed"])
        second.close()
        final = listener.stop()
    assert final["unclosed"] == 0 and final["gaps"] == 0 and final["received"] == 20
