"""The Prometheus endpoint (mplog.metrics, mplog listen --metrics): scraped over real HTTP, parsed by prometheus_client.

Each test makes a known run — frames built one by one, so that every counter has an
exact expected value — and compares the whole scrape with it.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from helpers import file_config, payload, wait_for
from prometheus_client.parser import text_string_to_metric_families

import mplog
from mplog.config import load_config
from mplog.listener.status_channel import format_status
from mplog.listener.supervisor import load_checkpoint, stats_path
from mplog.transports import curve as security
from mplog.transports.base import TransportOptions
from mplog.transports.mpqueue import MpSender
from mplog.wire import FLAG_FINAL, Sender, build_frame, encode_record, encode_sender

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

TESTS_DIR = Path(__file__).resolve().parents[1]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Every mplog sample at ``url`` but the start time, keyed by (sample name, sorted labels)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("mplog_") and sample.name != "mplog_start_time_seconds":
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def start_time(url: str) -> float:
    with urllib.request.urlopen(url, timeout=10) as response:
        families = list(text_string_to_metric_families(response.read().decode()))
    return next(f.samples[0].value for f in families if f.name == "mplog_start_time_seconds")


def zero_run() -> Samples:
    """What a listener that has received nothing shows."""
    return {
        ("mplog_frames_received_total", ()): 0,
        ("mplog_records_received_total", ()): 0,
        ("mplog_records_rejected_total", ()): 0,
        ("mplog_records_dropped_total", ()): 0,
        ("mplog_gaps_total", ()): 0,
        ("mplog_duplicates_total", ()): 0,
        ("mplog_restarts_total", ()): 0,
        ("mplog_senders", (("state", "live"),)): 0,
        ("mplog_senders", (("state", "closed"),)): 0,
        ("mplog_senders", (("state", "folded"),)): 0,
        ("mplog_sender_folds_total", (("event", "folded"),)): 0,
        ("mplog_sender_folds_total", (("event", "returned"),)): 0,
        ("mplog_sender_folds_total", (("event", "forgotten"),)): 0,
        ("mplog_claims_refused_records_total", ()): 0,
        ("mplog_frames_held", ()): 0,
        ("mplog_held_seconds_total", ()): 0,
    }


def record(name: str, seq: int) -> bytes:
    return encode_record(logging.LogRecord(name, logging.INFO, __file__, 1, "%s", (payload(0, seq),), None))


def records(first: int, count: int) -> list[bytes]:
    return [record("good", seq) for seq in range(first, first + count)]


def repairable(seq: int) -> bytes:
    fields = msgpack.unpackb(record("good", seq))
    fields[1] = 20.5  # levelno as a float: delivered with levelno 20, counted as repaired[bad_field]
    return msgpack.packb(fields)


def metrics_config(out: Path, tmp_path: Path, **mplog_section: Any) -> dict[str, Any]:
    config = file_config(out)
    config["handlers"]["broken"] = {  # a directory that does not exist: every record is a handler error
        "class": "logging.FileHandler",
        "filename": str(tmp_path / "missing" / "broken.log"),
        "delay": True,
    }
    config["loggers"] = {"boom": {"handlers": ["broken"], "propagate": False}}
    config["mplog"] = {"metrics": "127.0.0.1:0", "yield_to_workers": 0, **mplog_section}
    return config


def test_the_listener_serves_exact_counters_that_survive_a_restart(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    config = metrics_config(tmp_path / "out.log", tmp_path, state_dir=str(state))
    before = time.time()
    listener = mplog.start_listener(config, endpoint="tcp://127.0.0.1:0", route_parent=False, export_env=False)
    ctx = zmq.Context()
    try:
        assert listener.metrics_url.startswith("http://127.0.0.1:") and listener.metrics_url.endswith("/metrics")
        assert scrape(listener.metrics_url) == zero_run()
        started = start_time(listener.metrics_url)
        assert before - 1 <= started <= time.time()
        time.sleep(0.05)
        assert start_time(listener.metrics_url) == started  # the same at every scrape (it moved by ~0.5 ms)
        a, b = ctx.socket(zmq.PUSH), ctx.socket(zmq.PUSH)
        for sock in (a, b):
            sock.linger = 5000
            sock.connect(listener.endpoint)
        sender_a = encode_sender(Sender("metrics-a", 1, 0.0, 1))
        a.send(build_frame(sender_a, 0, 0, 0, records(0, 10)))  # 10 received
        a.send(build_frame(sender_a, 20, 0, 0, records(20, 10)))  # 10 more; 10..19 never came: a gap of 10
        a.send(build_frame(sender_a, 25, 0, 0, records(25, 10)))  # 25..29 again: 5 duplicates, 5 received
        a.send(build_frame(sender_a, 35, 4, FLAG_FINAL, []))  # goodbye: closed, 4 dropped by policy
        a.send(msgpack.packb([1, 2, 3]))  # not a frame (malformed, charged to no sender)
        a.send(msgpack.packb({"not": "a frame"}))
        items = [*records(100, 2), repairable(102), record("boom", 103), record("boom", 104), msgpack.packb([1, 2])]
        b.send(build_frame(encode_sender(Sender("metrics-b", 2, 0.0, 2)), 0, 0, 0, items))  # and no goodbye: live
        wait_for(lambda: listener.stats()["received"] == 30 and listener.stats()["malformed_total"] == 3)
        for sock in (a, b):
            sock.close()
        wait_for(lambda: listener.stats()["connections"].get("disconnected") == 2)
        expected = {
            **zero_run(),
            ("mplog_frames_received_total", ()): 5,
            ("mplog_records_received_total", ()): 30,  # 25 from a, 5 from b (2 of them to a failing handler)
            ("mplog_records_rejected_total", ()): 1,
            ("mplog_records_dropped_total", ()): 4,
            ("mplog_gaps_total", ()): 10,
            ("mplog_duplicates_total", ()): 5,
            ("mplog_malformed_total", (("reason", "not_a_frame"),)): 2,
            ("mplog_malformed_total", (("reason", "bad_record"),)): 1,
            ("mplog_repaired_total", (("reason", "bad_field"),)): 1,
            ("mplog_handler_errors_total", (("handler", "broken"),)): 2,
            ("mplog_connection_events_total", (("event", "handshakes"),)): 2,
            ("mplog_connection_events_total", (("event", "disconnected"),)): 2,
            ("mplog_senders", (("state", "live"),)): 1,
            ("mplog_senders", (("state", "closed"),)): 1,
        }
        assert scrape(listener.metrics_url) == expected
        # Killed: the supervisor starts a new listener process, which goes on from the
        # stats checkpoint and serves them again (on a new port: port 0 was asked for).
        checkpoint = stats_path(str(state))
        wait_for(lambda: (load_checkpoint(checkpoint) or {}).get("malformed_total") == 3, timeout=10)
        old_pid, old_url = listener.pid, listener.metrics_url
        os.kill(old_pid, signal.SIGKILL)
        wait_for(lambda: listener.restarts == 1 and listener.metrics_url != old_url, timeout=20)
        after_restart = {key: value for key, value in expected.items() if key[0] != "mplog_connection_events_total"}
        after_restart[("mplog_restarts_total", ())] = 1
        assert scrape(listener.metrics_url) == after_restart
    finally:
        ctx.term()
        listener.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(listener.metrics_url, timeout=5)  # stopped with the listener


def _unix_stall(path: str) -> socket.socket:
    """A connection to an mp:// listener that starts a frame of 100 bytes and sends 10 of them."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.sendall(struct.pack("!i", 100) + b"x" * 10)
    return sock


def test_refused_claims_folded_and_unclosed_senders_and_every_malformed_reason_are_exported(tmp_path):
    config = metrics_config(tmp_path / "out.log", tmp_path, limits={"max_senders": 10}, socket={"write_timeout": 0.2})
    endpoint = f"mp://{tmp_path}/l.sock"
    listener = mplog.start_listener(config, endpoint=endpoint, route_parent=False, export_env=False)
    first, second = MpSender(endpoint, TransportOptions()), MpSender(endpoint, TransportOptions())
    stalled = None
    try:
        a, b, c = (Sender(f"metrics-{x}", 1, 0.0, 1) for x in "abc")  # on another host: no process to look at
        assert first.send(build_frame(encode_sender(a), 0, 0, 0, records(0, 10)), 5.0)
        wait_for(lambda: listener.stats()["received"] == 10)
        # Another connection claims a's stream while a's connection is open: refused (taken).
        assert second.send(build_frame(encode_sender(a), 10, 0, 0, records(10, 3)), 5.0)
        assert second.send(build_frame(encode_sender(b), 2**40, 0, 0, records(0, 2)), 5.0)  # far past: seq_jump
        empty = msgpack.packb([None] * 20)  # a record with nothing in it: refused (empty_record), counted
        assert second.send(build_frame(encode_sender(c), 0, 0, 0, [record("good", 0), empty]), 5.0)
        for i in range(10):  # ten one-shot senders that say goodbye: the table of ten folds two of them
            one_shot = encode_sender(Sender("metrics-d", 2, 0.0, i))
            assert second.send(build_frame(one_shot, 0, 0, FLAG_FINAL, [record("good", i)]), 5.0)
        stalled = _unix_stall(endpoint[len("mp://") :])  # dropped after 2 x write_timeout: stalled
        wait_for(lambda: listener.stats()["received"] == 21 and listener.stats()["malformed"].get("stalled") == 1)
        first.close()  # a's and c's connections end without their goodbye
        second.close()
        stats = wait_for(lambda: (s := listener.stats())["unclosed"] == 2 and s)
        samples = scrape(listener.metrics_url)
    finally:
        if stalled is not None:
            stalled.close()
        listener.stop()
    expected = {
        **zero_run(),
        ("mplog_frames_received_total", ()): 12,
        ("mplog_records_received_total", ()): 21,
        ("mplog_records_rejected_total", ()): 1,
        ("mplog_malformed_total", (("reason", "empty_record"),)): 1,
        ("mplog_malformed_total", (("reason", "stalled"),)): 1,
        ("mplog_claims_refused_total", (("reason", "taken"),)): 1,
        ("mplog_claims_refused_total", (("reason", "seq_jump"),)): 1,
        ("mplog_claims_refused_records_total", ()): 5,
        ("mplog_senders", (("state", "live"),)): 2,
        ("mplog_senders", (("state", "closed"),)): 8,
        ("mplog_senders", (("state", "folded"),)): 2,
        ("mplog_sender_folds_total", (("event", "folded"),)): 2,
        ("mplog_senders_unclosed", (("reason", "connection_ended"),)): 2,
    }
    assert samples == expected
    # Where an operator looks first: the one-line summary (mplog status's head line).
    assert "10 senders (+2 folded)" in str(stats) and "refused claims 2" in str(stats)
    assert "2 ended without goodbye (possible loss)" in str(stats) and "malformed 2" in str(stats)
    assert "no goodbye, connection ended" in format_status(stats)


def test_acknowledged_delivery_exports_unconfirmed_and_out_of_order_frames(tmp_path, monkeypatch):
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(TESTS_DIR / "reliability"), os.environ.get("PYTHONPATH", "")])
    )
    config = metrics_config(tmp_path / "out.log", tmp_path, ack=True, yield_to_workers=0)
    config["handlers"]["unconfirming"] = {"()": "fault_handlers.NeverConfirms"}
    config["root"]["handlers"].append("unconfirming")
    listener = mplog.start_listener(config, endpoint=f"ipc://{tmp_path}/l.sock", route_parent=False, export_env=False)
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    try:
        dealer.connect(listener.endpoint)
        dealer.send(build_frame(encode_sender(Sender("metrics-e", 1, 0.0, 1)), 0, 0, 0, records(0, 5)))
        dealer.send(build_frame(encode_sender(Sender("metrics-f", 1, 0.0, 1)), 7, 0, 0, records(7, 2)))  # ahead
        stats = wait_for(lambda: (s := listener.stats())["unconfirmed"] == 1 and s["out_of_order"] == 1 and s)
        samples = scrape(listener.metrics_url)
    finally:
        dealer.close()
        ctx.term()
        listener.stop()
    assert samples[("mplog_ack_unconfirmed_total", ())] == 1  # the handler never confirms: not acknowledged
    assert samples[("mplog_ack_out_of_order_total", ())] == 1  # an unknown sender starting at 7: refused, resent
    assert samples[("mplog_ack_rolled_back_total", ())] == samples[("mplog_ack_rollback_skipped_total", ())] == 0
    for name in ("ack_marks_in_memory", "ack_intent_in_memory", "ack_slots_refused_total"):
        assert samples[(f"mplog_{name}", ())] == 0  # nothing kept in memory by a full state directory
    assert samples[("mplog_records_received_total", ())] == 5
    assert "unconfirmed 1 frames" in str(stats) and "out of order 1 frames (resent)" in str(stats)


def test_refused_connections_are_counted_by_reason(tmp_path):
    security.generate_key_pair(tmp_path / "server", "server")
    security.generate_key_pair(tmp_path / "authorized", "good")
    security.generate_key_pair(tmp_path / "intruder", "intruder")
    config = metrics_config(tmp_path / "out.log", tmp_path)
    config["mplog"]["curve"] = {
        "server_secret_key": str(tmp_path / "server" / "server.key_secret"),
        "authorized_keys": str(tmp_path / "authorized"),
    }
    listener = mplog.start_listener(config, endpoint="tcp://127.0.0.1:0", route_parent=False, export_env=False)
    ctx = zmq.Context()
    try:
        intruder = security.read_key_pair(tmp_path / "intruder" / "intruder.key_secret")
        sock = ctx.socket(zmq.PUSH)
        sock.linger = 0
        sock.setsockopt(zmq.RECONNECT_IVL, -1)  # one attempt, so one refusal
        sock.curve_publickey, sock.curve_secretkey = intruder.public.encode(), intruder.secret.encode()
        sock.curve_serverkey = security.read_public_key(tmp_path / "server" / "server.key").encode()
        sock.connect(listener.endpoint)
        wait_for(lambda: listener.stats()["connections"].get("refused_auth") == 1)
        sock.close()
        samples = scrape(listener.metrics_url)
    finally:
        ctx.term()
        listener.stop()
    assert samples[("mplog_connections_refused_total", (("reason", "auth"),))] == 1
    assert samples[("mplog_records_received_total", ())] == 0


def test_metrics_are_off_unless_asked_for_and_beyond_loopback_only_when_insecure_is_explicit(tmp_path):
    with mplog.start_listener(file_config(tmp_path / "out.log"), route_parent=False, export_env=False) as listener:
        assert listener.metrics_url == ""
    for value in ("0.0.0.0:9464", "[::]:9464", "collector.example:9464"):
        with pytest.raises(mplog.ConfigError, match=r"serves metrics beyond loopback.*mplog\.insecure = true"):
            load_config({"mplog": {"metrics": value}})
        assert load_config({"mplog": {"metrics": value, "insecure": True}})[1].metrics == value
    for value in ("9464", "127.0.0.1:http", "127.0.0.1:70000", ":9464", 9464):
        with pytest.raises(mplog.ConfigError, match=r"mplog\.metrics must be 'HOST:PORT'"):
            load_config({"mplog": {"metrics": value}})
    assert load_config({"mplog": {"metrics": "[::1]:9464"}})[1].metrics == "[::1]:9464"
    assert load_config({"mplog": {"metrics": "localhost:9464"}})[1].metrics == "localhost:9464"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPLOG_")}
    env["PYTHONPATH"] = str(TESTS_DIR)
    env.update(extra)
    return env


WORKER = "import mplog, helpers\nmplog.setup_worker()\nhelpers.log_numbered(0, 100)\n"


def test_mplog_listen_serves_metrics_with_the_flag(tmp_path):
    argv = [sys.executable, "-m", "mplog", "listen", "--bind", "tcp://127.0.0.1:*", "--metrics", "127.0.0.1:0"]
    refused = subprocess.run(
        [*argv[:-1], "0.0.0.0:0"], capture_output=True, text=True, env=_env(), timeout=30, check=False
    )
    assert refused.returncode == 2 and "serves metrics beyond loopback" in refused.stderr
    collector = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
    lines: list[str] = []
    assert collector.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(collector.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        wait_for(lambda: any("metrics on" in line for line in lines), timeout=20)
        endpoint = next(line for line in lines if "listening on" in line).split()[-1]
        url = next(line for line in lines if "metrics on" in line).split()[-1]
        worker = subprocess.run(
            [sys.executable, "-c", WORKER], env=_env(MPLOG_ENDPOINT=endpoint), timeout=30, check=False
        )
        assert worker.returncode == 0
        wait_for(lambda: scrape(url)[("mplog_senders", (("state", "closed"),))] == 1)
        samples = scrape(url)
        collector.send_signal(signal.SIGTERM)
        assert collector.wait(20) == 0
    finally:
        if collector.poll() is None:
            collector.kill()
            collector.wait(10)
        reader.join(5)
        collector.stderr.close()
    assert samples[("mplog_records_received_total", ())] == 100
    assert samples[("mplog_gaps_total", ())] == samples[("mplog_records_dropped_total", ())] == 0


def test_a_metrics_port_already_taken_stops_the_listener_with_the_address_named(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = file_config(tmp_path / "out.log")
        config["mplog"] = {"metrics": f"127.0.0.1:{port}"}
        with pytest.raises(mplog.TransportError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            mplog.start_listener(config, route_parent=False, export_env=False)
