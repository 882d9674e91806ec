"""Real networks: workers, relays and collectors on separate hosts (network namespaces joined by veth).

RELIABILITY.md B14 (partition on tcp://) and the cross-host parts of C7; a plaintext
bind beyond loopback is refused here too, on a real non-loopback address; acknowledged
delivery with CURVE survives a listener SIGKILL across hosts.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from helpers import check_lines, console_script, file_config, read_lines, wait_for

from mplog.transports import curve as security

pytestmark = [pytest.mark.netns, pytest.mark.integration]

PORT = 5140
LINE = 19  # bytes per output line at least: "P0:00000000:00000:" and a newline


def make_keys(tmp: Path, *names: str) -> dict[str, Path]:
    """One key pair per name, each in its own directory (so a directory can serve as an allow-list)."""
    paths = {}
    for name in names:
        public, secret = security.generate_key_pair(tmp / name, name)
        paths[name], paths[f"{name}_secret"], paths[f"{name}_dir"] = public, secret, tmp / name
    return paths


def curve_collector_config(out: Path, keys: dict[str, Path], server: str, clients: str) -> dict:
    config = file_config(out)
    config["mplog"] = {
        "curve": {"server_secret_key": str(keys[f"{server}_secret"]), "authorized_keys": str(keys[f"{clients}_dir"])}
    }
    return config


def stop(listener) -> dict:
    listener.send("stop")
    stats = listener.read("stopped")["stats"]
    listener.finish()
    return stats


def stop_when_senders_closed(collector, count: int | None, timeout: float = 20.0) -> dict:
    """Wait (bounded) until the collector has seen ``count`` senders (None: any) and all said goodbye; stop it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        collector.send("stats")
        senders = collector.read("stats")["stats"]["senders"]
        if senders and (count is None or len(senders) == count) and all(s["closed"] for s in senders.values()):
            break
        time.sleep(0.1)
    return stop(collector)


@pytest.mark.timeout(60)
def test_workers_on_one_host_reach_a_curve_collector_on_another_and_strangers_get_nothing(network, tmp_path):
    a, b = network.host("a"), network.host("b")
    network.link(a, b)
    keys = make_keys(tmp_path, "collector", "worker", "stranger")
    out = tmp_path / "out.log"
    endpoint = f"tcp://{b.addresses['a']}:{PORT}"
    collector = b.listener(curve_collector_config(out, keys, "collector", "worker"), endpoint)
    good = {"curve_server_key": str(keys["collector"]), "curve_secret_key": str(keys["worker_secret"])}
    workers = [a.worker({"endpoint": endpoint, "producer": p, "count": 5000, "options": good}) for p in range(2)]
    strangers = [
        a.worker({"endpoint": endpoint, "producer": 8, "count": 100, "options": {"close_timeout": 0.5}}),
        a.worker(
            {
                "endpoint": endpoint,
                "producer": 9,
                "count": 100,
                "options": {
                    "close_timeout": 0.5,
                    "curve_server_key": str(keys["collector"]),
                    "curve_secret_key": str(keys["stranger_secret"]),
                },
            }
        ),
    ]
    results = [w.read("closed")["counters"] for w in workers + strangers]
    for proc in workers + strangers:
        proc.finish()
    stats = stop(collector)
    assert [r["sent"] for r in results] == [5000, 5000, 0, 0]
    check_lines(read_lines(out), {0: 5000, 1: 5000}).assert_exact()
    assert stats["received"] == 10_000 and stats["gaps"] == stats["dropped"] == 0
    assert len(stats["senders"]) == 2
    assert stats["connections"].get("refused_auth", 0) >= 1  # the stranger's key is not on the list
    assert stats["refused"] >= 2


@pytest.mark.timeout(30)
def test_a_plaintext_collector_on_a_real_interface_is_refused_unless_insecure_is_explicit(network, tmp_path):
    a, b = network.host("a"), network.host("b")
    network.link(a, b)
    endpoint = f"tcp://{b.addresses['a']}:{PORT}"
    refused = b.popen(console_script(), "listen", "--bind", endpoint)
    _, err = refused.communicate(timeout=20)
    assert refused.returncode == 2 and "without CURVE" in err
    out = tmp_path / "out.log"
    config = file_config(out)
    config["mplog"] = {"insecure": True}
    collector = b.listener(config, endpoint)
    worker = a.worker({"endpoint": endpoint, "producer": 0, "count": 1000})
    assert worker.read("closed")["counters"]["sent"] == 1000
    worker.finish()
    assert stop(collector)["received"] == 1000
    check_lines(read_lines(out), {0: 1000}).assert_exact()


@pytest.mark.timeout(60)
def test_a_relay_host_forwards_between_workers_and_the_collector_with_curve_on_both_links(network, tmp_path):
    a, r, b = network.host("a"), network.host("r"), network.host("b")
    network.link(a, r)
    network.link(r, b)
    keys = make_keys(tmp_path, "collector", "relay", "relay_client", "worker")
    out = tmp_path / "out.log"
    collector_endpoint = f"tcp://{b.addresses['r']}:{PORT}"
    relay_endpoint = f"tcp://{r.addresses['a']}:{PORT}"
    collector = b.listener(curve_collector_config(out, keys, "collector", "relay_client"), collector_endpoint)
    relay = r.popen(
        console_script(),
        "relay",
        "--bind",
        relay_endpoint,
        "--connect",
        collector_endpoint,
        "--curve-secret-key",
        str(keys["relay_secret"]),
        "--authorized-keys",
        str(keys["worker_dir"]),
        "--server-key",
        str(keys["collector"]),
        "--client-secret-key",
        str(keys["relay_client_secret"]),
    )
    assert "relaying" in relay.stderr.readline()
    options = {"curve_server_key": str(keys["relay"]), "curve_secret_key": str(keys["worker_secret"])}
    workers = [
        a.worker({"endpoint": relay_endpoint, "producer": p, "count": 4000, "options": options}) for p in range(2)
    ]
    results = [w.read("closed")["counters"] for w in workers]
    for proc in workers:
        proc.finish()
    stats = stop_when_senders_closed(collector, 2)
    relay.terminate()
    _, relay_err = relay.communicate(timeout=20)
    assert [r_["sent"] for r_ in results] == [4000, 4000]
    check_lines(read_lines(out), {0: 4000, 1: 4000}).assert_exact()
    assert stats["received"] == 8000 and stats["gaps"] == stats["dropped"] == 0
    assert "relay stopped; forwarded" in relay_err


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("stall_timeout", [0.0, 3.0], ids=["default", "stall-timeout-3s"])
def test_a_partition_heals_and_every_record_is_delivered_or_counted(network, tmp_path, stall_timeout):
    a, b = network.host("a"), network.host("b")
    network.link(a, b)
    keys = make_keys(tmp_path, "collector", "worker")
    out = tmp_path / "out.log"
    endpoint = f"tcp://{b.addresses['a']}:{PORT}"
    config = curve_collector_config(out, keys, "collector", "worker")
    collector = b.listener(config, endpoint)
    rate, seconds, partition = 1000, 9, 4.0
    count = rate * seconds
    options = {
        "curve_server_key": str(keys["collector"]),
        "curve_secret_key": str(keys["worker_secret"]),
        "close_timeout": 20,
        "stall_timeout": stall_timeout,
    }
    worker = a.worker({"endpoint": endpoint, "producer": 0, "count": count, "rate": rate, "options": options})
    time.sleep(2.0)
    network.set_link(a, b, up=False)  # silent: no error reaches either side; only a worker's TCP_MAXRT notices
    time.sleep(partition)
    collector.send("stats")
    during = collector.read("stats")["stats"]
    network.set_link(a, b, up=True)
    counters = worker.read("closed", timeout=60)["counters"]
    worker.finish()
    stats = stop_when_senders_closed(collector, None)
    sender = next(iter(stats["senders"].values()))
    print(
        f"partition {partition} s, stall timeout {stall_timeout} s: received {sender['records']} "
        f"(by the end of the partition {during['received']}), dropped {sender['dropped']}, gaps {sender['gaps']}, "
        f"connections {stats['connections']}"
    )
    # The ledger balances with nothing silent: arrived + dropped by policy + counted gaps == logged.
    assert sender["records"] + sender["dropped"] + sender["gaps"] == count
    assert counters["dropped"] == sender["dropped"] == 0  # the 16 MiB buffer holds a 4 s partition
    check = check_lines(read_lines(out), {0: count})
    assert check.duplicates == check.truncated == check.garbage == 0
    assert sum(len(m) for m in check.missing.values()) == sender["gaps"]
    # Nothing arrived during the partition; what the worker held arrived after it healed.
    assert during["received"] <= 2.5 * rate
    assert sender["records"] >= during["received"] + 2 * rate
    if 0 < stall_timeout < partition:
        # The worker noticed the dead link and came back on a new connection; what
        # was already handed to the old connection died with it and shows as gaps, bounded by
        # what the worker sent before the timeout fired.
        assert stats["connections"].get("disconnected", 0) >= 1
        assert stats["connections"].get("handshakes", 0) >= 2
        assert sender["gaps"] <= (stall_timeout + 1.0) * rate
    else:
        # Without TCP_MAXRT (the default) a partition is invisible: TCP retransmits after it
        # heals, nothing is lost.
        assert stats["connections"].get("handshakes", 0) == 1
        assert stats["connections"].get("disconnected", 0) <= 1  # only the worker's orderly close
        assert sender["gaps"] == 0


@pytest.mark.timeout(90)
def test_an_ack_mode_curve_collector_on_a_real_interface_killed_mid_stream_restarts_and_loses_nothing(
    network, tmp_path
):
    a, b = network.host("a"), network.host("b")
    network.link(a, b)
    keys = make_keys(tmp_path, "collector", "worker")
    out = tmp_path / "out.log"
    endpoint = f"tcp://{b.addresses['a']}:{PORT}"
    # Without CURVE, an acknowledging collector is refused on this address too.
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({**file_config(tmp_path / "plain.log"), "mplog": {"ack": True}}))
    refused = b.popen(console_script(), "listen", "--config", str(plain), "--bind", endpoint)
    _, err = refused.communicate(timeout=20)
    assert refused.returncode == 2 and "without CURVE" in err
    config = curve_collector_config(out, keys, "collector", "worker")
    config["mplog"]["ack"] = True  # and no mplog.insecure: CURVE is what allows this bind
    collector = b.listener(config, endpoint)
    options = {"ack": True, "curve_server_key": str(keys["collector"]), "curve_secret_key": str(keys["worker_secret"])}
    per, rate = 12_000, 4_000
    workers = [
        a.worker({"endpoint": endpoint, "producer": p, "count": per, "rate": rate, "options": options})
        for p in range(2)
    ]
    # SIGKILL the listener process once a third of the stream is written; its supervisor
    # restarts it on the same address and the workers resend what it never acknowledged.
    wait_for(lambda: out.exists() and out.stat().st_size > 2 * per * LINE // 3, timeout=30, interval=0.005)
    os.kill(collector.ready["pid"], signal.SIGKILL)
    results = [w.read("closed", timeout=60)["counters"] for w in workers]
    errors = [w.finish() for w in workers]
    stats = stop_when_senders_closed(collector, 2)
    lines = read_lines(out)
    print(
        f"ack + CURVE across hosts, SIGKILL at a third: {len(lines)} lines for {2 * per} records, listener "
        f"duplicates {stats['duplicates']}, rolled back {stats['rolled_back']}, connections after the restart "
        f"{stats['connections']}"
    )
    assert [(r["sent"], r["dropped"]) for r in results] == [(per, 0), (per, 0)]
    assert not any("never acknowledged" in err for err in errors), errors  # the last acks came back
    # Exactly once into the file (docs/reliability.md): what the killed listener had half written
    # of a frame was cut off by its successor, and what it had acknowledged is not written again.
    check_lines(lines, {0: per, 1: per}).assert_exact()
    assert len(lines) == 2 * per
    assert stats["rolled_back"] <= 1 and stats["rollback_skipped"] == 0
    assert stats["restarts"] == 1
    assert stats["received"] == 2 * per and stats["gaps"] == stats["dropped"] == 0
    assert len(stats["senders"]) == 2
    # The restarted listener's own connections: both workers came back through the CURVE handshake.
    assert stats["connections"].get("handshakes", 0) >= 2 and stats["refused"] == 0
