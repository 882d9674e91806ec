"""A sender's ledger cannot be written by anyone else (issue 14, item 3; docs/security.md).

A live worker logs 50 numbered records and waits; a forger reads the worker's identity
and next sequence number from the status channel (what ``mplog status --json`` shows)
and sends, over a socket of its own, one of:

- ``next_seq``: 50 forged records at the worker's next sequence number (on main, the
  worker's next 50 real records were then dropped as duplicates and the forgeries
  written as the worker's);
- ``seq_max``: one record at ``seq`` 2^64-2, the furthest a one-record frame may start
  (2^64-1 is refused as ``bad_header`` now: its next number would not fit in uint64; on
  main, every later record of the worker was a duplicate: silenced for good, with 1.8e19
  gaps booked);
- ``empty_ahead``: an empty frame at ``next_seq + 50`` (on main, 50 real records were
  then discarded, and booked as a gap).

Then the worker logs 50 more and closes. Every case must end with the worker's 100
records written exactly once, its ledger exact (no gap, no duplicate) and the forged
frame refused and counted (``claims_refused``), never written. Run over ``mp://`` and the
acknowledging ROUTER (one connection per sender: the identity belongs to the connection
that opened it), over plain ``ipc://`` (no connection identity: only the sequence window
holds, see docs/security.md), and under CURVE with two authorised keys (identities are
namespaced by key: a forgery lands in the forger's own namespace, never the victim's).
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from multiprocessing.connection import Client, Connection
from pathlib import Path
from typing import Any

import pytest
import zmq
from helpers import check_lines, file_config, payload, read_lines, wait_for

import mplog
from mplog.listener.stats import ledger
from mplog.listener.status_channel import request_stats
from mplog.transports import TransportOptions
from mplog.transports import curve as security
from mplog.transports.zeromq import ZmqSender
from mplog.transports.zeromq_ack import DealerSender
from mplog.wire import Sender, build_frame, encode_record, encode_sender

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

SPAWN = multiprocessing.get_context("spawn")
PHASE = 50  # records the worker logs before the forgery, and again after it
FORGED = 50  # records in the forged frame of the next_seq case
CASES = ["next_seq", "seq_max", "empty_ahead"]


def _victim(endpoint: str, options: dict[str, Any], conn: Connection) -> None:
    """Log PHASE records, say so, wait for the go, log PHASE more, close (an orderly end)."""
    handler = mplog.setup_worker(endpoint, **options)
    log = logging.getLogger("victim")
    for seq in range(PHASE):
        log.info("%s", payload(0, seq))
    handler.flush_within(10.0)
    conn.send("ready")
    conn.recv()
    for seq in range(PHASE, 2 * PHASE):
        log.info("%s", payload(0, seq))
    handler.close()
    conn.send(handler.counters)


def _forged_frame(identity: dict[str, Any], case: str) -> bytes:
    sender = encode_sender(Sender(identity["host"], identity["pid"], identity["start_time"], identity["stream"]))
    next_seq = identity["next_seq"]

    def records(n: int) -> list[bytes]:
        made = [logging.LogRecord("victim", logging.INFO, __file__, 1, f"FORGED {i}", None, None) for i in range(n)]
        return [encode_record(record) for record in made]

    if case == "next_seq":
        return build_frame(sender, next_seq, 0, 0, records(FORGED))
    if case == "seq_max":
        return build_frame(sender, 2**64 - 2, 0, 0, records(1))
    return build_frame(sender, next_seq + 50, 0, 0, [])


class _Run:
    """A listener, a victim worker that has logged its first PHASE records, and the victim's identity."""

    def __init__(self, listener: mplog.Listener, out: Path, options: dict[str, Any]) -> None:
        self.listener, self.out = listener, out
        self.conn, child = SPAWN.Pipe()
        self.proc = SPAWN.Process(target=_victim, args=(listener.endpoint, options, child))
        self.proc.start()
        assert self.conn.poll(30) and self.conn.recv() == "ready"
        wait_for(lambda: self._victim_entry(request_stats(listener.endpoint))["next_seq"] == PHASE, timeout=20)
        self.before = request_stats(listener.endpoint)
        self.key, self.identity = self._victim_item(self.before)

    def _victim_item(self, stats: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        found = [(key, s) for key, s in stats["senders"].items() if s["pid"] == self.proc.pid]
        assert len(found) == 1, stats["senders"]
        return found[0]

    def _victim_entry(self, stats: dict[str, Any]) -> dict[str, Any]:
        found = [s for s in stats["senders"].values() if s["pid"] == self.proc.pid]
        return found[0] if found else {"next_seq": -1}

    def settled(self) -> bool:
        """Whether the listener has dealt with the one forged frame (accepted, as on main, or refused)."""
        stats = request_stats(self.listener.endpoint)
        return bool(stats["frames"] + stats.get("claims_refused_total", 0) >= self.before["frames"] + 1)

    def handled(self) -> None:
        wait_for(self.settled, timeout=20)

    def finish(self) -> dict[str, Any]:
        self.conn.send("go")
        assert self.conn.poll(30)
        counters = self.conn.recv()
        self.proc.join(30)
        assert self.proc.exitcode == 0
        assert counters["sent"] == 2 * PHASE and counters["dropped"] == 0
        wait_for(lambda: self._victim_entry(request_stats(self.listener.endpoint)).get("closed"), timeout=20)
        return self.listener.stop()


def _handled_within(run: _Run, seconds: float) -> bool:
    try:
        wait_for(run.settled, timeout=seconds)
    except AssertionError:
        return False
    return True


def _assert_victim_exact(run: _Run, stats: dict[str, Any], case: str, *, forged_elsewhere: bool = False) -> None:
    lines = read_lines(run.out)
    victim = [line for line in lines if not line.startswith("FORGED")]
    check_lines(victim, {0: 2 * PHASE}).assert_exact()  # every real record, each once
    sender = stats["senders"][run.key]
    assert (sender["records"], sender["gaps"], sender["duplicates"], sender["rejected"]) == (2 * PHASE, 0, 0, 0)
    assert sender["next_seq"] == 2 * PHASE and sender["closed"]
    if not forged_elsewhere:
        assert len(lines) == 2 * PHASE, "a forged record was written"
        assert stats["received"] == 2 * PHASE
        assert ledger(stats, 2 * PHASE) == 0
        assert stats["claims_refused_total"] == 1
        assert stats["claims_refused_records"] == {"next_seq": FORGED, "seq_max": 1, "empty_ahead": 0}[case]


# ---------------------------------------------------------------- one connection per sender: mp://, ROUTER


@pytest.mark.parametrize("case", CASES)
def test_over_mp_a_forged_frame_for_a_live_workers_identity_is_refused_and_its_records_are_all_written(
    tmp_path: Path, case: str
) -> None:
    out = tmp_path / "out.log"
    endpoint = f"mp://{tmp_path}/l.sock"
    with mplog.start_listener(file_config(out), endpoint=endpoint, route_parent=False, export_env=False) as listener:
        run = _Run(listener, out, {})
        forger = Client(endpoint[len("mp://") :], family="AF_UNIX")  # a same-user process, a connection of its own
        try:
            forger.send_bytes(_forged_frame(run.identity, case))
            run.handled()
        finally:
            forger.close()
        stats = run.finish()
    _assert_victim_exact(run, stats, case)
    assert stats["claims_refused"] == {"seq_jump" if case == "seq_max" else "taken": 1}


@pytest.mark.parametrize("case", CASES)
def test_over_the_acknowledging_router_a_forged_frame_is_refused_and_its_records_are_all_written(
    tmp_path: Path, case: str
) -> None:
    out = tmp_path / "out.log"
    endpoint = f"ipc://{tmp_path}/l.sock"
    config = file_config(out)
    with mplog.start_listener(config, endpoint=endpoint, ack=True, route_parent=False, export_env=False) as listener:
        run = _Run(listener, out, {"ack": True})
        ctx: zmq.Context[Any] = zmq.Context()
        forger = ctx.socket(zmq.DEALER)  # what the worker uses, on a connection of its own
        forger.linger = 0
        try:
            forger.connect(endpoint)
            forger.send(_forged_frame(run.identity, case))
            run.handled()
            assert forger.poll(300) == 0  # never acknowledged as the worker's
        finally:
            forger.close(0)
            ctx.term()
        stats = run.finish()
    _assert_victim_exact(run, stats, case)
    assert stats["claims_refused"] == {"seq_jump" if case == "seq_max" else "taken": 1}


# ---------------------------------------------------------------- plain ipc://: the window alone


def test_over_plain_ipc_a_frame_far_past_a_workers_next_record_is_refused_never_booked_as_gaps(tmp_path: Path) -> None:
    out = tmp_path / "out.log"
    endpoint = f"ipc://{tmp_path}/l.sock"
    with mplog.start_listener(file_config(out), endpoint=endpoint, route_parent=False, export_env=False) as listener:
        run = _Run(listener, out, {})
        ctx: zmq.Context[Any] = zmq.Context()
        forger = ctx.socket(zmq.PUSH)
        forger.linger = 1000
        try:
            forger.connect(endpoint)
            forger.send(_forged_frame(run.identity, "seq_max"))
            run.handled()
        finally:
            forger.close()
            ctx.term()
        stats = run.finish()
    _assert_victim_exact(run, stats, "seq_max")
    assert stats["claims_refused"] == {"seq_jump": 1}
    assert stats["gaps"] == 0


# ---------------------------------------------------------------- CURVE: one namespace per client key


@pytest.fixture
def curve_keys(tmp_path: Path) -> dict[str, Path]:
    security.generate_key_pair(tmp_path / "server", "server")
    for name in ("victim", "forger"):
        security.generate_key_pair(tmp_path / "authorized", name)
    return {
        "server_secret": tmp_path / "server" / "server.key_secret",
        "server_public": tmp_path / "server" / "server.key",
        "authorized": tmp_path / "authorized",
        "victim": tmp_path / "authorized" / "victim.key_secret",
        "forger": tmp_path / "authorized" / "forger.key_secret",
    }


@pytest.mark.parametrize("ack", [False, True], ids=["pull", "router"])
@pytest.mark.parametrize("case", CASES)
def test_under_curve_an_authorised_client_cannot_touch_another_keys_ledger(
    tmp_path: Path, curve_keys: dict[str, Path], case: str, ack: bool
) -> None:
    out = tmp_path / "out.log"
    config = file_config(out, fmt="%(message)s|%(peer_key)s")
    curve = {"server_secret_key": str(curve_keys["server_secret"]), "authorized_keys": str(curve_keys["authorized"])}
    config["mplog"] = {"curve": curve}
    keys = {"curve_server_key": str(curve_keys["server_public"]), "curve_secret_key": str(curve_keys["victim"])}
    forger_public = security.read_key_pair(curve_keys["forger"]).public
    victim_public = security.read_key_pair(curve_keys["victim"]).public
    start = {"endpoint": "tcp://127.0.0.1:0", "route_parent": False, "export_env": False, "ack": ack}
    with mplog.start_listener(config, **start) as listener:
        run = _Run(listener, out, {**keys, "ack": ack})
        assert run.key.startswith(victim_public + "|")  # the ledger lives in the victim key's namespace
        forger = (DealerSender if ack else ZmqSender)(  # the socket the victim uses, with the forger's own key
            listener.endpoint,
            TransportOptions(
                curve_server_key=str(curve_keys["server_public"]), curve_secret_key=str(curve_keys["forger"])
            ),
        )
        deadline = time.monotonic() + 20
        try:
            # Sent again until handled: an acknowledging listener refuses a sender it does not
            # know that starts past 0 for 1.5 s (its first frames may be on the way), as the
            # forger's namespace does not know this one.
            # Sent again only when it was not handled within 2 s (a loaded listener may take
            # longer than a short pause to handle it: a second copy would then be counted too).
            while not (forger.send(_forged_frame(run.identity, case), 0.1) and _handled_within(run, 2.0)):
                assert time.monotonic() < deadline, "the forged frame was never handled"
        finally:
            forger.close()
        stats = run.finish()
    lines = read_lines(out)
    victim_lines = [line.rsplit("|", 1)[0] for line in lines if line.endswith("|" + victim_public)]
    check_lines(victim_lines, {0: 2 * PHASE}).assert_exact()
    _assert_victim_exact(run, stats, case, forged_elsewhere=True)
    forged_lines = [line for line in lines if line.startswith("FORGED")]
    assert all(line.endswith("|" + forger_public) for line in forged_lines)
    assert len(lines) == 2 * PHASE + len(forged_lines)
    if case == "seq_max":  # refused in the forger's own namespace too: never 1.8e19 gaps
        assert stats["claims_refused"] == {"seq_jump": 1} and stats["gaps"] == 0
    else:  # booked to the forger's key: its own ledger, which it may fill as it likes
        own = stats["senders"][f"{forger_public}|{run.key.split('|', 1)[1]}"]
        assert own["peer_key"] == forger_public
        assert own["records"] == (FORGED if case == "next_seq" else 0)
        assert len(forged_lines) == (FORGED if case == "next_seq" else 0)


def test_a_worker_that_reconnects_after_its_connection_ended_keeps_its_ledger(tmp_path: Path) -> None:
    """The binding lasts as long as the connection: a new connection may take an identity whose first has ended."""
    out = tmp_path / "out.log"
    endpoint = f"mp://{tmp_path}/l.sock"
    identity = encode_sender(Sender("host-r", 4242, time.time(), 7))

    def frame(seq: int, n: int) -> bytes:
        made = [logging.LogRecord("r", logging.INFO, __file__, 1, payload(0, seq + i), None, None) for i in range(n)]
        return build_frame(identity, seq, 0, 0, [encode_record(record) for record in made])

    with mplog.start_listener(file_config(out), endpoint=endpoint, route_parent=False, export_env=False) as listener:
        path = endpoint[len("mp://") :]
        first = Client(path, family="AF_UNIX")
        first.send_bytes(frame(0, 10))
        wait_for(lambda: listener.stats()["received"] == 10)
        second = Client(path, family="AF_UNIX")
        second.send_bytes(frame(10, 10))  # the first is still open: refused
        wait_for(lambda: listener.stats().get("claims_refused_total") == 1)
        first.close()
        third = Client(path, family="AF_UNIX")

        def resend() -> bool:
            third.send_bytes(frame(10, 10))  # the first has ended (once the listener read its EOF): taken over
            time.sleep(0.05)
            return bool(listener.stats()["received"] == 20)

        wait_for(resend, timeout=10)
        stats = listener.stop()
        second.close()
        third.close()
    key = next(iter(stats["senders"]))
    check_lines(read_lines(out), {0: 20}).assert_exact()
    assert (stats["senders"][key]["records"], stats["senders"][key]["gaps"]) == (20, 0)
    assert stats["claims_refused"]["taken"] >= 1


# ---------------------------------------------------------------- a flood that folds the victim away

FLOOD_TABLE = 10  # mplog.limits.max_senders: 40 folded places remembered
FLOOD = 200  # one-shot identities, through one connection: the victim is folded, then due to be forgotten


def _flood_frames() -> list[bytes]:
    made = logging.LogRecord("flood", logging.INFO, __file__, 1, "FORGED flood", None, None)
    return [
        build_frame(encode_sender(Sender("flood-host", 100_000 + i, 1.7e9, i)), 0, 0, 0, [encode_record(made)])
        for i in range(FLOOD)
    ]


@pytest.mark.parametrize("ack", [False, True], ids=["mp", "router"])
def test_a_flood_of_new_identities_cannot_fold_a_connected_worker_away_and_take_its_identity(
    tmp_path: Path, ack: bool
) -> None:
    # A churn outsider folded a quiet, connected worker out of the table and out of the places
    # remembered with 55,000 one-shot identities (26 s), then wrote as that worker from a second
    # connection: the forgeries were written as its records, and its own later records were
    # booked as duplicates (mp://) or refused as "taken" for good (ack): lost, the ledger wrong.
    out = tmp_path / "out.log"
    config = file_config(out)
    config["mplog"] = {"limits": {"max_senders": FLOOD_TABLE}}
    endpoint = f"mp://{tmp_path}/l.sock" if not ack else f"ipc://{tmp_path}/l.sock"
    with mplog.start_listener(config, endpoint=endpoint, ack=ack, route_parent=False, export_env=False) as listener:
        run = _Run(listener, out, {"ack": ack})
        ctx: zmq.Context[Any] = zmq.Context()
        try:
            if ack:
                flooder, forger = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
                for sock in (flooder, forger):
                    sock.linger = 0
                    sock.connect(endpoint)
                send_flood, send_forged = flooder.send, forger.send
            else:
                path = endpoint[len("mp://") :]
                mp_flooder, mp_forger = Client(path, family="AF_UNIX"), Client(path, family="AF_UNIX")
                send_flood, send_forged = mp_flooder.send_bytes, mp_forger.send_bytes
            for frame in _flood_frames():
                send_flood(frame)
            wait_for(lambda: listener.stats()["received"] == PHASE + FLOOD, timeout=30)
            folded = listener.stats()["folded"]
            assert run.key not in listener.stats()["senders"] and folded["forgotten"] > 0  # the scenario holds
            send_forged(_forged_frame(run.identity, "next_seq"))
            run.handled()
            stats = run.finish()
        finally:
            if ack:
                flooder.close(0)
                forger.close(0)
            else:
                mp_flooder.close()
                mp_forger.close()
            ctx.term()
    victim = [line for line in read_lines(out) if not line.startswith("FORGED")]
    check_lines(victim, {0: 2 * PHASE}).assert_exact()  # every real record, each once
    assert sum(line == "FORGED flood" for line in read_lines(out)) == FLOOD
    assert not [line for line in read_lines(out) if line.startswith("FORGED") and line != "FORGED flood"]
    assert stats["claims_refused"] == {"taken": 1}
    sender = stats["senders"][run.key]  # back in the table where it was: no gap, no duplicate
    assert (sender["next_seq"], sender["gaps"], sender["duplicates"], sender["closed"]) == (2 * PHASE, 0, 0, True)
    assert stats["received"] == 2 * PHASE + FLOOD and stats["gaps"] == stats["duplicates"] == 0
