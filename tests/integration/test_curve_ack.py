"""CURVE in acknowledged delivery: the ROUTER admits only allow-listed keys, counts refusals,
stamps the proven key, and its acknowledgements return over the encrypted connection.

The PULL side of the same checks is tests/integration/test_curve.py; across real hosts
with a listener restart, tests/netns/test_hosts.py.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import check_lines, file_config, log_numbered, read_lines, wait_for

import mplog
from mplog.listener.process import build_receiver
from mplog.transports import TransportOptions
from mplog.transports import curve as security
from mplog.transports.zeromq_ack import DealerSender, RouterReceiver

pytestmark = pytest.mark.integration

SPAWN = multiprocessing.get_context("spawn")
REFUSED_WORKER = {"close_timeout": 0.5}  # it never connects: do not wait out the ack-mode exit bound


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    """The server's pair; worker0 and worker1 on the allow-list (authorized/); a stranger off it."""
    security.generate_key_pair(tmp_path / "server", "server")
    for name in ("worker0", "worker1"):
        security.generate_key_pair(tmp_path / "authorized", name)
    security.generate_key_pair(tmp_path / "stranger", "stranger")
    return {
        "server": str(tmp_path / "server" / "server.key"),
        "server_secret": str(tmp_path / "server" / "server.key_secret"),
        "authorized": str(tmp_path / "authorized"),
        "worker0": str(tmp_path / "authorized" / "worker0.key_secret"),
        "worker1": str(tmp_path / "authorized" / "worker1.key_secret"),
        "stranger": str(tmp_path / "stranger" / "stranger.key_secret"),
    }


def client_options(keys: dict[str, Any], name: str) -> dict[str, Any]:
    return {"curve_server_key": keys["server"], "curve_secret_key": keys[name]}


def produce(endpoint: str, producer: int, count: int, options: dict[str, Any], results: Any) -> None:
    """A spawn worker in ack mode: logs numbered payloads, closes, reports what stayed unacknowledged."""
    handler = mplog.setup_worker(endpoint, ack=True, **options)
    log_numbered(producer, count)
    handler.close()
    acking = handler._transport  # the AckingSender (mplog.ack): what the listener never acknowledged
    results.put(
        {
            "producer": producer,
            **handler.counters,
            "unacked": acking.unacked,  # type: ignore[attr-defined]
            "unacknowledged_at_close": acking.unacknowledged_at_close,  # type: ignore[attr-defined]
        }
    )


@pytest.mark.timeout(90)
def test_ack_mode_with_curve_writes_each_allowed_record_once_and_refuses_unknown_and_plaintext_workers(tmp_path, keys):
    out = tmp_path / "out.log"
    config = file_config(out, fmt="%(peer_key)s %(message)s")
    config["mplog"] = {"curve": {"server_secret_key": keys["server_secret"], "authorized_keys": keys["authorized"]}}
    per = 5_000
    results = SPAWN.Queue()
    with mplog.start_listener(
        config, endpoint="tcp://127.0.0.1:0", ack=True, route_parent=False, export_env=False
    ) as listener:
        specs = [
            (0, per, client_options(keys, "worker0")),
            (1, per, client_options(keys, "worker1")),
            (8, 100, {**client_options(keys, "stranger"), **REFUSED_WORKER}),  # a valid CURVE key, not allowed
            (9, 100, REFUSED_WORKER),  # no CURVE at all
        ]
        procs = [SPAWN.Process(target=produce, args=(listener.endpoint, *spec, results)) for spec in specs]
        for proc in procs:
            proc.start()
        reports = {r["producer"]: r for r in (results.get(timeout=60) for _ in procs)}
        for proc in procs:
            proc.join(30)
        wait_for(lambda: listener.stats()["connections"].get("refused_auth", 0) >= 1)
        stats = listener.stats()
    assert [proc.exitcode for proc in procs] == [0] * 4
    for producer in (0, 1):  # every frame acknowledged over the CURVE connection: nothing held at close
        report = reports[producer]
        assert (report["sent"], report["dropped"], report["errors"]) == (per, 0, 0), report
        assert report["unacked"] == report["unacknowledged_at_close"] == 0, report
    assert reports[8]["sent"] == reports[9]["sent"] == 0  # never connected: nothing was handed over
    lines = read_lines(out)
    check = check_lines(lines, {0: per, 1: per})
    check.assert_exact()
    assert len(lines) == 2 * per and {producer for producer, _ in check.seen} == {0, 1}
    # Each line carries the key its sender's handshake proved.
    proven = {f"P{p}": security.read_key_pair(keys[f"worker{p}"]).public for p in (0, 1)}
    stamped = {(line.split(" ", 1)[1][:2], line.split(" ", 1)[0]) for line in lines}
    assert stamped == set(proven.items())
    assert stats["received"] == 2 * per
    assert stats["gaps"] == stats["dropped"] == stats["duplicates"] == stats["malformed_total"] == 0
    assert len(stats["senders"]) == 2 and all(s["closed"] for s in stats["senders"].values())
    connections = stats["connections"]
    assert connections.get("handshakes", 0) >= 2, connections
    assert connections["refused_auth"] >= 1, connections  # the stranger's key is not on the list
    # The plaintext worker fails the handshake itself (a protocol error, or no detail when it hangs up first).
    assert connections.get("refused_protocol", 0) + connections.get("refused_other", 0) >= 1, connections
    assert stats["refused"] == sum(n for key, n in connections.items() if key.startswith("refused_"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def worker_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPLOG_")}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


# A worker that finds the collector, the mode and its keys in the environment alone.
WORKER = """
import sys, mplog, helpers
handler = mplog.setup_worker(close_timeout=float(sys.argv[2]))
helpers.log_numbered(int(sys.argv[1]), 2000)
handler.close()
"""


@pytest.mark.timeout(90)
def test_mplog_listen_in_ack_mode_with_curve_flags_acknowledges_allowed_workers_and_status_counts_refusals(
    tmp_path, keys
):
    out = tmp_path / "out.log"
    config = tmp_path / "collector.json"
    collector_config = file_config(out)
    collector_config["mplog"] = {"ack": True, "state_dir": str(tmp_path / "state")}
    config.write_text(json.dumps(collector_config))
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    # An explicit status channel: the default one, port + 1, may be taken by another test's socket.
    control = f"ipc://{tmp_path}/status.ctl"
    argv = [sys.executable, "-m", "mplog", "listen", "--config", str(config), "--bind", endpoint, "--control", control]
    argv += ["--curve-secret-key", keys["server_secret"], "--authorized-keys", keys["authorized"]]
    collector = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert collector.stderr is not None
        assert "listening on" in collector.stderr.readline()
        good = {
            "MPLOG_ENDPOINT": endpoint,
            "MPLOG_ACK": "1",
            security.ENV_SERVER_KEY: keys["server"],
            security.ENV_CLIENT_SECRET_KEY: keys["worker0"],
        }
        stranger = {**good, security.ENV_CLIENT_SECRET_KEY: keys["stranger"]}
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER, str(p), str(close)], env=worker_env(**env), stderr=subprocess.PIPE
            )
            for p, env, close in ((0, good, 10.0), (1, good, 10.0), (8, stranger, 0.5))
        ]
        errors = [proc.communicate(timeout=60)[1].decode() for proc in procs]
        assert [proc.returncode for proc in procs] == [0, 0, 0], errors
        # The allowed workers were acknowledged; the stranger, never connected, had nothing to wait for.
        assert not any("never acknowledged" in err for err in errors), errors
        status = subprocess.run(
            [sys.executable, "-m", "mplog", "status", endpoint, "--control", control, "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        stats = json.loads(status.stdout)
        collector.send_signal(signal.SIGTERM)
        assert collector.wait(20) == 0
    finally:
        if collector.poll() is None:
            collector.kill()
        collector.communicate(timeout=10)
    check_lines(read_lines(out), {0: 2000, 1: 2000}).assert_exact()
    assert stats["received"] == 4000 and len(stats["senders"]) == 2
    assert stats["connections"]["refused_auth"] >= 1 and stats["refused"] >= 1


# ---------------------------------------------------------------- a plaintext ROUTER stays on loopback


@pytest.mark.timeout(60)
def test_ack_mode_refuses_a_plaintext_bind_beyond_loopback_and_names_curve_and_insecure_as_the_fix(tmp_path):
    fix = r"binds a non-loopback address without CURVE; configure mplog\.curve keys, or set mplog\.insecure = true"
    # Refused before any socket is opened, whichever way the listener is started.
    with pytest.raises(mplog.ConfigError, match=fix):
        build_receiver("tcp://0.0.0.0:0", {"ack": True})
    config = file_config(tmp_path / "o.log")
    with pytest.raises(mplog.ConfigError, match=r"'tcp://0\.0\.0\.0:0' " + fix):
        mplog.start_listener(config, endpoint="tcp://0.0.0.0:0", ack=True, route_parent=False, export_env=False)
    config["mplog"] = {"ack": True}
    path = tmp_path / "collector.json"
    path.write_text(json.dumps(config))
    proc = subprocess.run(
        [sys.executable, "-m", "mplog", "listen", "--config", str(path), "--bind", "tcp://0.0.0.0:0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert "without CURVE; configure mplog.curve keys, or set mplog.insecure" in proc.stderr


# ---------------------------------------------------------------- the transport pieces


@pytest.mark.timeout(30)
def test_a_router_with_allow_any_admits_a_fresh_client_key_stamps_it_and_answers_over_the_same_connection(keys):
    options = TransportOptions(curve_secret_key=keys["server_secret"], curve_allow_any=True)
    receiver = RouterReceiver("tcp://127.0.0.1:0", options)
    # A server key but no key pair: the dealer makes a fresh pair for itself.
    dealer = DealerSender(receiver.endpoint, TransportOptions(curve_server_key=keys["server"]))
    try:
        assert wait_for(lambda: dealer.send(b"frame", 0.1), timeout=10)  # IMMEDIATE: once the handshake is done
        received = receiver.recv(5.0)
        assert received is not None
        data, origin = received
        assert data == b"frame"
        assert dealer._curve is not None and origin.peer_key == dealer._curve.pair.public
        assert receiver.reply(origin.connection, b"ack")
        assert dealer.recv(5.0) == b"ack"
        wait_for(lambda: receiver.connections["handshakes"] == 1)  # the monitor thread counts it soon after
        assert not receiver.events
    finally:
        dealer.close(0)
        receiver.close()
