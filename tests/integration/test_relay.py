"""Relays: frames cross one or more `mplog relay` hops byte for byte; identity, sequence and drops survive."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq
from helpers import check_lines, file_config, read_lines, wait_for

import mplog
from mplog.transports import curve as security
from mplog.wire import Sender, build_frame, decode_frame, encode_record, encode_sender

pytestmark = pytest.mark.integration

WORKER = """
import json, logging, os, sys, time
import mplog
endpoint, producer, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
options = {"close_timeout": 20, **json.loads(sys.argv[4])}
pause = float(sys.argv[5]) if len(sys.argv) > 5 else 0.005  # seconds after every 200 records
handler = mplog.setup_worker(endpoint, **options)
log = logging.getLogger("relayed")
for seq in range(count):
    log.info("P%d:%08d:00000:", producer, seq)
    if seq % 200 == 199:
        time.sleep(pause)
handler.close()
print(json.dumps({"pid": os.getpid(), **handler.counters}), flush=True)
"""


def start_worker(
    endpoint: str, producer: int, count: int, options: dict | None = None, pause: float = 0.005
) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPLOG_")}
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, endpoint, str(producer), str(count), json.dumps(options or {}), str(pause)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


class RelayProcess:
    """`mplog relay` in a subprocess; ``endpoint`` is where it bound (port 0 resolved)."""

    def __init__(self, connect: str, *flags: str, bind: str = "tcp://127.0.0.1:0") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mplog", "relay", "--bind", bind, "--connect", connect, *flags],
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stderr.readline()
        match = re.match(r"mplog: relaying (\S+) -> ", line)
        assert match, line + self.proc.stderr.read()
        self.endpoint = match[1]

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=20)
        assert self.proc.returncode == 0, err
        return err


@pytest.fixture
def relays():
    """Start relays with ``relays(connect, *flags)``; any still running are stopped at teardown."""
    started: list[RelayProcess] = []

    def start(connect: str, *flags: str) -> RelayProcess:
        started.append(RelayProcess(connect, *flags))
        return started[-1]

    yield start
    for relay in started:
        if relay.proc.poll() is None:
            relay.proc.kill()
            relay.proc.communicate(timeout=10)


def numbered_frames(count: int) -> list[bytes]:
    """Valid frames from one made-up sender, each with a distinct payload."""
    sender = encode_sender(Sender("elsewhere", 4242, 1.5, 7))
    frames = []
    for seq in range(count):
        record = logging.LogRecord("raw", logging.INFO, __file__, 1, "P5:%08d:00000:", (seq,), None)
        frames.append(build_frame(sender, seq, seq // 10, 0, [encode_record(record)]))
    return frames


@pytest.mark.timeout(60)
def test_a_chain_of_two_relays_delivers_every_frame_byte_for_byte(relays):
    ctx = zmq.Context()
    collector = ctx.socket(zmq.PULL)
    collector.linger = 0
    port = collector.bind_to_random_port("tcp://127.0.0.1")
    second = relays(f"tcp://127.0.0.1:{port}")
    first = relays(second.endpoint)
    source = ctx.socket(zmq.PUSH)
    source.linger = 0
    try:
        source.connect(first.endpoint)
        frames = numbered_frames(500)
        for frame in frames:
            source.send(frame)
        received = []
        while len(received) < len(frames) and collector.poll(10_000):
            received.append(collector.recv())
    finally:
        source.close()
        errs = [first.stop(), second.stop()]
        collector.close()
        ctx.term()
    assert received == frames  # same bytes, same order: nothing decoded, nothing re-encoded
    decoded = decode_frame(received[-1])
    assert (decoded.sender.host, decoded.sender.pid, decoded.seq, decoded.dropped) == ("elsewhere", 4242, 499, 49)
    for err in errs:
        assert "forwarded 500 frames" in err


@pytest.mark.timeout(90)
def test_workers_behind_relays_reach_a_curve_collector_with_identity_sequence_and_keys_intact(tmp_path: Path, relays):
    for directory, name in (
        ("collector", "collector"),
        ("relay_in", "relay_in"),
        ("workers", "worker"),
        ("collector_clients", "edge_relay"),
    ):
        security.generate_key_pair(tmp_path / directory, name)
    out = tmp_path / "out.log"
    config = file_config(out, fmt="%(hostname)s %(process)d %(peer_key)s %(message)s")
    config["mplog"] = {
        "curve": {
            "server_secret_key": str(tmp_path / "collector" / "collector.key_secret"),
            "authorized_keys": str(tmp_path / "collector_clients"),
        }
    }
    edge_key = security.read_public_key(tmp_path / "collector_clients" / "edge_relay.key")
    with mplog.start_listener(config, endpoint="tcp://127.0.0.1:0", route_parent=False, export_env=False) as listener:
        # worker --CURVE--> host relay --plain loopback--> edge relay --CURVE--> collector
        edge = relays(
            listener.endpoint,
            "--server-key",
            str(tmp_path / "collector" / "collector.key"),
            "--client-secret-key",
            str(tmp_path / "collector_clients" / "edge_relay.key_secret"),
        )
        host = relays(
            edge.endpoint,
            "--curve-secret-key",
            str(tmp_path / "relay_in" / "relay_in.key_secret"),
            "--authorized-keys",
            str(tmp_path / "workers"),
        )
        options = {
            "curve_server_key": str(tmp_path / "relay_in" / "relay_in.key"),
            "curve_secret_key": str(tmp_path / "workers" / "worker.key_secret"),
        }
        workers = [start_worker(host.endpoint, p, 5000, options) for p in range(2)]
        intruder = start_worker(host.endpoint, 9, 100, {"close_timeout": 0.5})  # no keys: refused at the host relay
        results = [finish(w) for w in workers]
        finish(intruder)
        wait_for(lambda: len(listener.stats()["senders"]) == 2, timeout=20)
        wait_for(lambda: all(s["closed"] for s in listener.stats()["senders"].values()), timeout=20)
        stats = listener.stats()
        host_err, edge_err = host.stop(), edge.stop()
    check_lines(read_lines(out), {0: 5000, 1: 5000}).assert_exact()
    assert stats["received"] == 10_000 and stats["gaps"] == stats["dropped"] == 0
    assert sorted(s["pid"] for s in stats["senders"].values()) == sorted(r["pid"] for r in results)
    assert all(s["next_seq"] == 5000 for s in stats["senders"].values())
    # Every record names its original process and the key of the last hop the collector authenticated.
    pids = {str(r["pid"]) for r in results}
    lines = read_lines(out)
    assert {line.split()[1] for line in lines} == pids
    assert {line.split()[2] for line in lines} == {edge_key}
    assert "refused" in host_err and not re.search(r"refused 0 connections", host_err), host_err
    assert "forwarded" in edge_err


def _unbound_endpoint() -> str:
    """A loopback tcp:// endpoint where nothing listens yet (a collector that binds later)."""
    probe = zmq.Context.instance().socket(zmq.PULL)
    port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(0)
    return f"tcp://127.0.0.1:{port}"


@pytest.mark.timeout(60)
def test_a_relay_holds_frames_while_the_collector_is_absent_and_delivers_them_when_it_binds(tmp_path, relays):
    collector_endpoint = _unbound_endpoint()
    relay = relays(collector_endpoint)
    try:
        worker = start_worker(relay.endpoint, 0, 3000)
        time.sleep(1.0)  # the scenario, not synchronisation: the worker logs through the relay into nowhere
        out = tmp_path / "out.log"
        endpoint = collector_endpoint
        with mplog.start_listener(file_config(out), endpoint=endpoint, route_parent=False, export_env=False) as lsn:
            result = finish(worker)
            wait_for(lambda: any(s["closed"] for s in lsn.stats()["senders"].values()), timeout=20)
            stats = lsn.stats()
    finally:
        relay.stop()
    assert result["dropped"] == 0
    check_lines(read_lines(out), {0: 3000}).assert_exact()
    assert stats["received"] == 3000 and stats["gaps"] == 0


@pytest.mark.timeout(90)
def test_workers_that_log_through_a_relay_while_the_collector_is_absent_for_seconds_lose_nothing(tmp_path, relays):
    # The relay stops reading while its collector is away, so the workers' connections to it
    # keep their receive windows shut for as long: backpressure, which must not cost a
    # connection (an outsider lost 14,535 of 30,000 records this way with a collector that
    # started 10 s after the workers, when TCP_MAXRT dropped a window shut for 3 s).
    collector_endpoint = _unbound_endpoint()
    relay = relays(collector_endpoint)
    count = 40_000  # over about 8 s: more than the relay and the kernels hold while the collector is away
    try:
        workers = [start_worker(relay.endpoint, p, count, pause=0.04) for p in range(2)]
        time.sleep(6.0)  # the scenario, not synchronisation: twice the 3 s TCP_MAXRT used to allow
        out = tmp_path / "out.log"
        with mplog.start_listener(
            file_config(out), endpoint=collector_endpoint, route_parent=False, export_env=False
        ) as lsn:
            results = [finish(worker) for worker in workers]
            wait_for(lambda: sum(s["closed"] for s in lsn.stats()["senders"].values()) == 2, timeout=60)
            stats = lsn.stats()
    finally:
        relay.stop()
    assert [r["dropped"] for r in results] == [0, 0]
    check_lines(read_lines(out), {0: count, 1: count}).assert_exact()
    assert stats["received"] == 2 * count and stats["gaps"] == stats["duplicates"] == 0


@pytest.mark.timeout(90)
def test_a_relay_whose_key_the_collector_refuses_says_so_and_counts_what_it_could_not_pass_on(tmp_path, relays):
    # The collector never hears of the workers behind such a relay (no gap, no unclosed
    # sender), and the workers handed everything to the relay: the relay is the one place the
    # loss can show. An outsider lost 150,000 of 150,000 records this way with nothing said.
    security.generate_key_pair(tmp_path / "collector", "collector")
    security.generate_key_pair(tmp_path / "clients", "allowed")
    _, intruder_secret = security.generate_key_pair(tmp_path / "elsewhere", "relay")
    config = file_config(tmp_path / "out.log")
    config["mplog"] = {
        "curve": {
            "server_secret_key": str(tmp_path / "collector" / "collector.key_secret"),
            "authorized_keys": str(tmp_path / "clients"),
        }
    }
    with mplog.start_listener(config, endpoint="tcp://127.0.0.1:0", route_parent=False, export_env=False) as listener:
        relay = relays(
            listener.endpoint,
            "--server-key",
            str(tmp_path / "collector" / "collector.key"),
            "--client-secret-key",
            str(intruder_secret),
        )
        worker = start_worker(relay.endpoint, 0, 2000, {"close_timeout": 2})
        result = finish(worker)
        wait_for(lambda: listener.stats()["connections"].get("refused_auth", 0) >= 1, timeout=20)
        err = relay.stop()
        stats = listener.stats()
    public = security.read_public_key(tmp_path / "elsewhere" / "relay.key")
    lines = err.splitlines()
    refusals = [line for line in lines if "refused this relay's CURVE handshake" in line]
    assert refusals == [
        f"mplog: the collector at {listener.endpoint} refused this relay's CURVE handshake: its key is not allowed "
        f"in (status 400); this relay used key file {intruder_secret}, public key {public}: add that public key's "
        ".key file to the collector's authorized_keys; until it is let in, this relay passes nothing on and its "
        "workers' frames wait in it and in their own buffers"
    ]
    assert result["sent"] == 2000 and result["dropped"] == 0  # the worker handed everything to the relay
    assert stats["received"] == 0 and not stats["senders"]
    stop = lines[-1]
    found = re.fullmatch(
        r"mplog: relay stopped; forwarded 0 frames \(0 bytes\), refused 0 connections; (\d+) records in (\d+) "
        r"frames \(\d+ bytes\) could not be passed on and are lost \(the collector shows them as gaps, or their "
        r"senders as ended without a goodbye, if it ever heard of them\)",
        stop,
    )
    assert found, stop
    # Every record the worker handed over, counted once: what the relay held, queued, and what
    # still waited in the kernels (an outsider's relay counted 8 of 34 frames when it only
    # looked at its queue).
    assert int(found[1]) == 2000 and int(found[2]) >= 2  # the worker's batches and its goodbye
