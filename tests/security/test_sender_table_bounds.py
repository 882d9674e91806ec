"""The per-sender table is bounded; what is folded out of it stays exact in the totals (issue 14, item 5).

On main, 100,000 one-shot sender identities grew a listener by about 155 MB for good and
made ``mplog status`` time out. Now the table holds at most ``mplog.limits.max_senders``
(10,000 by default) senders; beyond that the closed, then the longest silent, are folded:
their counts move into ``stats()["folded"]`` and the totals (received, gaps, dropped,
rejected, duplicates) stay exact; a folded sender that comes back continues where it was.
"""

from __future__ import annotations

import gc
import logging
import os
import random
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq
from helpers import wait_for

import mplog
from mplog.listener.ack_loop import MarksFile
from mplog.listener.stats import SenderLimits, Stats, merge_snapshots
from mplog.listener.status_channel import format_status, request_stats
from mplog.listener.supervisor import load_checkpoint, stats_path
from mplog.wire import FLAG_FINAL, Frame, Sender, build_frame, encode_record, encode_sender

_STATUS_TIMEOUT = 2.0  # `mplog status --timeout`'s default
QUIET = {"version": 1, "handlers": {"null": {"class": "logging.NullHandler"}}, "root": {"handlers": ["null"]}}
TOTALS = ("received", "frames", "gaps", "dropped", "duplicates", "rejected")


def _frame(sender: Sender, seq: int, n: int, dropped: int = 0, flags: int = 0) -> Frame:
    return Frame(sender, seq, dropped, flags, [["record"]] * n)


def _traffic(senders: int, seed: int = 7) -> list[tuple[str, Frame]]:
    """Frames of many senders, interleaved, with gaps, duplicates, drops, rejects and goodbyes."""
    rng = random.Random(seed)
    streams = dict.fromkeys(range(senders), 0)
    dropped = dict.fromkeys(range(senders), 0)
    out: list[tuple[str, Frame]] = []
    for _ in range(senders * 6):
        i = rng.randrange(senders) if rng.random() < 0.7 else rng.randrange(max(1, senders // 20))
        sender = Sender(f"host-{i % 7}", 1000 + i, 1.7e9, i)
        seq, n = streams[i], rng.randrange(0, 5)
        kind = rng.random()
        if kind < 0.1:
            seq += rng.randrange(1, 4)  # a gap
        elif kind < 0.15 and seq:
            seq -= 1  # one duplicate
        dropped[i] += rng.randrange(0, 2)
        out.append(("reject" if kind > 0.95 else "accept", _frame(sender, seq, n, dropped[i])))
        streams[i] = max(streams[i], seq + n)
        if rng.random() < 0.05:
            out.append(("accept", _frame(sender, streams[i], 0, dropped[i], FLAG_FINAL)))
    return out


def _feed(stats: Stats, traffic: list[tuple[str, Frame]]) -> None:
    for how, frame in traffic:
        if how == "accept":
            stats.accept(frame)
        else:
            stats.reject(frame, "bad_field")


def test_the_table_never_holds_more_than_max_senders_and_every_total_stays_exact() -> None:
    traffic = _traffic(400)  # max_senders 100 and 400 places remembered: nobody is forgotten
    unbounded, bounded = Stats(SenderLimits(max_senders=10**9)), Stats(SenderLimits(max_senders=100))
    _feed(unbounded, traffic)
    peak = 0
    for how, frame in traffic:
        if how == "accept":
            bounded.accept(frame)
        else:
            bounded.reject(frame, "bad_field")
        peak = max(peak, len(bounded.senders))
    want, got = unbounded.snapshot(), bounded.snapshot()
    assert peak <= 100
    assert {name: got[name] for name in TOTALS} == {name: want[name] for name in TOTALS}
    folded = got["folded"]
    assert folded["senders"] - folded["returned"] == len(want["senders"]) - len(got["senders"])
    assert folded["returned"] > 0  # senders heard from again after being folded, continued exactly
    assert folded["dormant"] <= 400 and folded["forgotten"] == 0
    assert sum(s["records"] for s in got["senders"].values()) + folded["records"] == got["received"]
    assert f"(+{folded['senders'] - folded['returned']} folded)" in format_status(got)


def test_a_folded_sender_that_comes_back_continues_where_it_was() -> None:
    stats = Stats(SenderLimits(max_senders=10))
    a = Sender("host-a", 1, 1.7e9, 1)
    stats.accept(_frame(a, 0, 5, dropped=3))
    for i in range(30):  # a is silent the longest: folded
        stats.accept(_frame(Sender("other", 2, 1.7e9, i), 0, 1))
    assert a.key not in stats.senders
    stats.accept(_frame(a, 5, 2, dropped=4))  # its running drop count went from 3 to 4
    sender = stats.senders[a.key]
    assert (sender.next_seq, sender.gaps, sender.duplicates, sender.dropped) == (7, 0, 0, 4)
    snap = stats.snapshot()
    assert (snap["received"], snap["gaps"], snap["dropped"], snap["duplicates"]) == (37, 0, 4, 0)
    assert snap["folded"]["returned"] == 1


def test_closed_senders_are_folded_first_then_the_longest_silent() -> None:
    stats = Stats(SenderLimits(max_senders=20))
    for i in range(20):
        stats.accept(_frame(Sender("h", 1, 1.7e9, i), 0, 1, flags=FLAG_FINAL if i % 2 else 0))
    stats.accept(_frame(Sender("h", 1, 1.7e9, 99), 0, 1))  # one more: two closed ones make room
    assert len(stats.senders) == 19
    assert all(not s.closed for s in stats.senders.values() if s.stream < 20 and s.stream % 2 == 0)
    assert not stats.all_closed()


def test_a_sender_silent_through_many_folds_is_forgotten_counted_and_its_mark_dropped() -> None:
    stats = Stats(SenderLimits(max_senders=10))
    forgotten: list[str] = []
    stats.table.on_forget = forgotten.append
    first = Sender("host-a", 1, 1.7e9, 1)
    stats.accept(_frame(first, 0, 1))
    for i in range(100):
        stats.accept(_frame(Sender("other", 2, 1.7e9, i), 0, 1))
    snap = stats.snapshot()
    assert snap["folded"]["dormant"] <= 40 and snap["folded"]["forgotten"] == len(forgotten) > 0
    assert forgotten[0] == first.key
    assert snap["received"] == 101 and snap["gaps"] == 0


def test_folded_totals_survive_a_checkpoint_restore_and_a_merge() -> None:
    traffic = _traffic(500, seed=3)
    one = Stats(SenderLimits(max_senders=50))
    _feed(one, traffic)
    snap = one.snapshot()
    again = Stats(SenderLimits(max_senders=50))
    again.restore(snap)  # what a supervised restart does with the checkpoint
    restored = again.snapshot()
    assert {name: restored[name] for name in TOTALS} == {name: snap[name] for name in TOTALS}
    assert restored["folded"]["senders"] == snap["folded"]["senders"]
    merged = merge_snapshots([snap])
    assert {name: merged[name] for name in ("received", "dropped", "rejected")} == {
        name: snap[name] for name in ("received", "dropped", "rejected")
    }


def test_marks_of_senders_that_said_goodbye_are_reused_so_the_file_stays_small(tmp_path: Path) -> None:
    path = str(tmp_path / "acked.json")
    marks = MarksFile(path)
    for i in range(5000):  # one-shot senders: a mark, then a goodbye
        key = f"host/{i}/{i:08x}"
        marks.set(key, 1)
        marks.forget(key)
    marks.set("host/open/00000001", 7)
    marks.close()
    assert os.path.getsize(path) <= 16 + 256 * 256  # the first 256 slots, never grown
    assert MarksFile(path).marks == {"host/open/00000001": 7}


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_folded_sender_that_comes_back_after_a_supervised_restart_continues_where_it_was(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    config: dict[str, Any] = {**QUIET, "mplog": {"limits": {"max_senders": 10}, "state_dir": str(state)}}
    endpoint = f"ipc://{tmp_path}/l.sock"
    record = encode_record(logging.LogRecord("folded", logging.INFO, __file__, 1, "hello", None, None))
    a = Sender("host-a", 1, 1.7e9, 1)
    with mplog.start_listener(config, endpoint=endpoint, route_parent=False, export_env=False) as listener:
        ctx: zmq.Context[Any] = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        push.linger = 5000
        try:
            push.connect(endpoint)
            push.send(build_frame(encode_sender(a), 0, 3, 0, [record] * 50))  # 50 records, 3 dropped by policy
            for i in range(30):  # thirty others, still open: a is silent the longest, so folded
                push.send(build_frame(encode_sender(Sender("other", 2, 1.7e9, i)), 0, 0, 0, [record]))
            wait_for(lambda: listener.stats()["received"] == 80)
            assert a.key not in listener.stats()["senders"]
            # Killed once the stats checkpoint counts all of it: only the folded places are in question.
            wait_for(lambda: (load_checkpoint(stats_path(str(state))) or {}).get("received") == 80)
            old = listener.pid
            os.kill(old, signal.SIGKILL)
            wait_for(lambda: listener.restarts == 1 and listener.pid != old, timeout=20)
            push.send(build_frame(encode_sender(a), 50, 3, FLAG_FINAL, [record] * 10))  # a comes back
            stats = wait_for(lambda: (s := listener.stats())["received"] == 90 and s)
        finally:
            push.close()
            ctx.term()
    # Before: a restarted listener knew the folded totals but not a's place in its stream,
    # so a was a new sender: its 50 earlier records were a gap, its 3 drops counted twice.
    assert (stats["received"], stats["gaps"], stats["dropped"], stats["duplicates"]) == (90, 0, 3, 0)
    assert stats["folded"]["returned"] == 1 and stats["restarts"] == 1
    assert stats["senders"][a.key]["next_seq"] == 60 and stats["senders"][a.key]["closed"]


# ---------------------------------------------------------------- a real listener, measured


def _one_shot_frames(count: int) -> list[bytes]:
    """``count`` senders of one record each; every other one says goodbye in the same frame."""
    record = encode_record(logging.LogRecord("one.shot", logging.INFO, __file__, 1, "hello", None, None))
    host = socket.gethostname()
    return [
        build_frame(encode_sender(Sender(host, 4_000_000 + i, 1.7e9, i)), 0, 0, FLAG_FINAL * (i % 2), [record])
        for i in range(count)
    ]


# The listener's growth for the test below, table held at 10,000 senders: +37.3 MiB on CPython
# 3.11.7, +40.5 on 3.13.0, +51.2 and +52.7 on 3.10.13, whose objects are larger (no inline
# attribute values before 3.11). The bound keeps 3.11's ~25 % margin on each; unbounded, the
# table grew by about 155 MB.
_RSS_BOUND = (48 if sys.version_info >= (3, 11) else 64) * 2**20


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_100000_one_shot_senders_cost_a_bounded_rss_and_stats_stay_fast(tmp_path: Path) -> None:
    count = 100_000
    frames = _one_shot_frames(count)
    gc.collect()
    endpoint = f"ipc://{tmp_path}/l.sock"
    with mplog.start_listener(QUIET, endpoint=endpoint, route_parent=False, export_env=False) as listener:
        process = psutil.Process(listener.pid)
        ctx: zmq.Context[Any] = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        push.linger = 5000
        try:
            push.connect(endpoint)
            push.send(frames[0])  # the listener's first sender, logger and frame: its idle size after them
            wait_for(lambda: listener.stats()["received"] == 1, timeout=20)
            idle = process.memory_info().rss
            for frame in frames[1:]:
                push.send(frame)
            wait_for(lambda: listener.stats()["received"] == count, timeout=120, interval=0.2)
        finally:
            push.close()
            ctx.term()
        grown = process.memory_info().rss - idle
        started = time.monotonic()
        stats = listener.stats()
        stats_seconds = time.monotonic() - started
        started = time.monotonic()
        status = request_stats(endpoint, timeout=_STATUS_TIMEOUT)  # what `mplog status` asks, as patient
        status_seconds = time.monotonic() - started
        final = listener.stop()
    limit = SenderLimits().max_senders
    print(
        f"100,000 one-shot senders: RSS +{grown / 2**20:.1f} MiB, stats() {stats_seconds * 1000:.0f} ms, "
        f"status {status_seconds * 1000:.0f} ms, table {len(stats['senders'])}, folded {stats['folded']}"
    )
    assert grown < _RSS_BOUND  # main: about +155 MB, never freed
    # The user-facing failure was `mplog status` timing out (its default, 2 s) with such a table.
    # Answering within that is the test; the times are printed, not held to a tighter bound
    # (a shared 2-CPU machine measured 0.35-1.2 s for stats() on one day, 0.16 s on another).
    assert stats_seconds < _STATUS_TIMEOUT and status_seconds < _STATUS_TIMEOUT
    assert len(stats["senders"]) <= limit and len(status["senders"]) <= limit
    assert final["received"] == count and final["gaps"] == final["dropped"] == final["duplicates"] == 0
    folded = final["folded"]
    assert folded["senders"] - folded["returned"] == count - len(final["senders"])
    assert folded["records"] + sum(s["records"] for s in final["senders"].values()) == count


def test_places_kept_for_open_connections_are_bounded_per_connection_and_in_all() -> None:
    # A folded sender whose connection still speaks for it keeps its place past the places'
    # bound (test_ledger_identity.py), but never more than 16 per connection nor max_senders in
    # all, and one whose connection ended is forgotten when the kept places are looked at again.
    from mplog.transports import Origin

    open_connections = {b"victim", b"flood"}
    stats = Stats(SenderLimits(max_senders=10), lambda conn, host, pid, start: conn in open_connections)
    victim = Sender("vm", 1, 1.7e9, 1)
    stats.accept(_frame(victim, 0, 5), Origin(b"victim", ""))
    for i in range(200):
        stats.accept(_frame(Sender("flood", 2, 1.7e9, i), 0, 1), Origin(b"flood", ""))
    table = stats.table
    kept = dict(table._kept_by)
    assert kept[b"victim"] == 1 and kept[b"flood"] <= 16 and sum(kept.values()) <= 10
    assert table.place(victim.key)[0] == 5  # first come keeps: the flood did not push it out
    snap = stats.snapshot()
    assert snap["folded"]["dormant"] == 40 + sum(kept.values()) and snap["received"] == 205
    # Both connections end: their places are forgotten as the kept ones are looked at again,
    # which a place due to be kept for another open connection does.
    open_connections.clear()
    open_connections.add(b"later")
    for i in range(200, 300):
        stats.accept(_frame(Sender("later", 3, 1.7e9, i), 0, 1), Origin(b"later", ""))
    assert not table.known(victim.key) and set(table._kept_by) == {b"later"}
    assert stats.snapshot()["received"] == 305
