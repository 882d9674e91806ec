"""The Prometheus endpoint (mplog.metrics, mplog listen --metrics): scraped over real HTTP, parsed by prometheus_client.

Each test makes a known run — frames built one by one, so that every counter has an
exact expected value — and compares the whole scrape with it.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
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
from mplog import security
from mplog.config import load_config
from mplog.supervisor import load_checkpoint, stats_path
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
        assert before - 1 <= start_time(listener.metrics_url) <= time.time()
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
