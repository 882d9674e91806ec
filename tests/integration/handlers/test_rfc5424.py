"""RFC5424Handler into a real rsyslogd: UDP, TCP (octet counting, stock imtcp), TLS (gtls) with client certificates."""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from handler_peers import join_workers, rsyslog_snippet_file, snippet_file
from helpers import check_lines, wait_for
from syslog_daemon import (
    CLIENT_NAME,
    RSYSLOGD,
    RsyslogDaemon,
    check_rich_records,
    free_port,
    have_module,
    make_certs,
    message_text,
    rich_worker,
    start_daemon,
)

import mplog
from mplog.handlers import RFC5424Handler

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(90),
    pytest.mark.skipif(RSYSLOGD is None, reason="rsyslogd is not installed (apt-get install rsyslog); .ci/run does"),
]
needs_gtls = pytest.mark.skipif(not have_module("lmnsd_gtls"), reason="needs rsyslog-gnutls (.ci/run installs it)")
HOST = socket.gethostname()


def _start_rich_workers(endpoint: str, workers: int, count: int) -> list[multiprocessing.Process]:
    context = multiprocessing.get_context("forkserver")
    procs = [context.Process(target=rich_worker, args=(endpoint, p, count)) for p in range(workers)]
    for proc in procs:
        proc.start()
    return procs


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_each_record_reaches_rsyslog_parsed_into_the_workers_host_pid_app_msgid_and_structured_data(
    tmp_path, transport
):
    daemon = start_daemon(tmp_path / "rsyslog", **{transport: True})
    try:
        port = daemon.udp_port if transport == "udp" else daemon.tcp_port
        config = snippet_file("rfc5424", tmp_path, port=port, transport=transport)
        workers, per_worker = 2, 300
        with mplog.start_listener(config, route_parent=False) as listener:
            procs = _start_rich_workers(listener.endpoint, workers, per_worker)
            pids = {p: proc.pid for p, proc in enumerate(procs)}
            join_workers(procs)
            records = daemon.wait_records(workers * per_worker)
        stats = listener.stats()
    finally:
        daemon.stop()
    check_rich_records(daemon.records(), dict.fromkeys(range(workers), per_worker), pids, HOST, "shop")
    assert {r["pri"] for r in records} == {str(19 * 8 + 6)}  # local3.info
    assert stats["handler_drops"] == {"rsyslog": 0}
    assert stats["handler_errors"] == {}


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="a worker with a host name of its own needs root and unshare (util-linux)",
)
def test_the_header_carries_the_workers_host_name_not_the_listeners(tmp_path):
    daemon = start_daemon(tmp_path / "rsyslog", tcp=True)
    try:
        config = snippet_file("rfc5424", tmp_path, port=daemon.tcp_port, transport="tcp")
        with mplog.start_listener(config, route_parent=False) as listener:
            # A worker in a UTS namespace of its own: its host name is not the listener's.
            code = (
                "import sys; sys.path[:0] = sys.argv[1:]; import syslog_daemon;syslog_daemon.rich_worker(None, 0, 30)"
            )
            tests = str(Path(__file__).resolve().parents[2])
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
            shell = 'hostname web-7.mplog.test && exec "$0" "$@"'
            proc = subprocess.Popen(["unshare", "--uts", "sh", "-c", shell, sys.executable, "-c", code, tests], env=env)
            assert proc.wait(60) == 0
            daemon.wait_records(30)
    finally:
        daemon.stop()
    assert listener.endpoint  # the worker found it through MPLOG_ENDPOINT
    check_rich_records(daemon.records(), {0: 30}, {0: proc.pid}, "web-7.mplog.test", "shop")
    assert HOST != "web-7.mplog.test"


def test_tcp_delivery_resumes_after_rsyslog_restarts_without_restarting_the_listener(tmp_path):
    daemon = start_daemon(tmp_path / "rsyslog", tcp=True)
    try:
        config = snippet_file("rfc5424", tmp_path, port=daemon.tcp_port, transport="tcp")
        with mplog.start_listener(config, route_parent=False) as listener:
            join_workers(_start_rich_workers(listener.endpoint, 1, 200))
            daemon.wait_records(200)
            daemon.restart(signal.SIGTERM)
            procs = _start_rich_workers(listener.endpoint, 1, 200)
            join_workers(procs)
            wait_for(lambda: len(daemon.records()) >= 400, 30)
        stats = listener.stats()
    finally:
        daemon.stop()
    # Both runs numbered from producer 0; each number arrives twice, once per run.
    lines = [message_text(r).split("\n")[0] for r in daemon.records()]
    check = check_lines(lines, {0: 200})
    assert set(check.seen.values()) == {2} and len(check.seen) == 200
    assert stats["handler_errors"] == {} and stats["handler_drops"] == {"rsyslog": 0}


def test_records_and_fields_past_the_rfc_limits_are_cut_counted_and_still_parsed(tmp_path):
    daemon = start_daemon(tmp_path / "rsyslog", tcp=True)
    handler = RFC5424Handler(["127.0.0.1", daemon.tcp_port], "tcp", max_value_chars=100, max_message_bytes=2048)
    log = logging.getLogger("limits")
    log.propagate = False
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        extra = {'a name with spaces=and]quotes"': "v", "n" * 40: "x" * 150, "app_name": "a" * 60}
        log.info("short", extra=extra)
        log.info("%s", "é" * 5000, extra={"app_name": "b" * 60})  # 10,000 bytes of UTF-8 into 2048
        log.info("%s", "fine", extra={"app_name": "c" * 60})
        assert handler.wait_confirmed(10)
        records = daemon.wait_records(3)
    finally:
        handler.close()
        daemon.stop()
    assert handler.cut == {"header": 3, "name": 2, "value": 1, "message": 1}
    first, long, fine = records
    assert [r["app-name"] for r in records] == ["a" * 48, "b" * 48, "c" * 48]
    names = 'a_name_with_spaces_and_quotes_="v" ' + "n" * 32
    assert first["structured-data"] == f'[fields@32473 {names}="' + "x" * 100 + '"]'
    assert len(long["msg"].encode()) < 2048 and set(message_text(long)) == {"é"}  # whole characters only
    assert message_text(fine) == "fine"
    assert handler.sent == 3 and handler.dropped == 0


def _tls_daemon(tmp_path: Path, certs, port: int) -> RsyslogDaemon:
    out = tmp_path / "tls-out.jsonl"
    conf = rsyslog_snippet_file(
        "rfc5424-tls",
        tmp_path,
        dir=tmp_path,
        ca=certs.ca,
        server_cert=certs.server_cert,
        server_key=certs.server_key,
        client_name=CLIENT_NAME,
        out=out,
        port=port,
    )
    return RsyslogDaemon(tmp_path / "rsyslog-tls", conf.read_text(encoding="utf-8"), out, [port]).start()


@needs_gtls
def test_the_documented_tls_recipe_delivers_every_record_with_a_verified_client_certificate(tmp_path):
    certs = make_certs(tmp_path / "pki")
    port = free_port()
    daemon = _tls_daemon(tmp_path, certs, port)
    try:
        config = snippet_file(
            "forward-rfc5424-tls", tmp_path, port=port, ca=certs.ca, cert=certs.client_cert, key=certs.client_key
        )
        with mplog.start_listener(config, route_parent=False) as listener:
            procs = _start_rich_workers(listener.endpoint, 2, 200)
            pids = {p: proc.pid for p, proc in enumerate(procs)}
            join_workers(procs)
            daemon.wait_records(400)
        stats = listener.stats()
    finally:
        daemon.stop()
    # The recipe's template names the fields host, app, pid, msgid, sd, msg.
    renamed = [
        {
            "hostname": r["host"],
            "app-name": r["app"],
            "procid": r["pid"],
            "msgid": r["msgid"],
            "structured-data": r["sd"],
            "msg": r["msg"],
            "timestamp": "2026-01-01T00:00:00.000000Z",
        }
        for r in daemon.records()
    ]
    # The recipe keeps rsyslog's default of escaping control characters on receive.
    check_rich_records(renamed, {0: 200, 1: 200}, pids, HOST, "shop", escaped=True)
    assert stats["handler_errors"] == {} and stats["handler_drops"] == {"rsyslog": 0}


@needs_gtls
@pytest.mark.parametrize("case", ["no client certificate", "server certificate not trusted", "wrong server name"])
def test_tls_delivers_nothing_to_or_from_a_peer_that_fails_verification(tmp_path, case):
    certs = make_certs(tmp_path / "pki")
    port = free_port()
    daemon = _tls_daemon(tmp_path, certs, port)
    options = {"cafile": certs.ca, "certfile": certs.client_cert, "keyfile": certs.client_key}
    if case == "no client certificate":
        del options["certfile"], options["keyfile"]
    elif case == "server certificate not trusted":
        options["cafile"] = certs.stranger_ca
    else:
        options["server_hostname"] = "collector.example.com"
    handler = RFC5424Handler(["127.0.0.1", port], "tls", close_timeout=0.5, retry_max=0.2, **options)
    try:
        record = logging.LogRecord("app", logging.INFO, __file__, 1, "secret %d", (1,), None)
        handler.handle(record)
        if case == "no client certificate":
            # The client's side of a TLS 1.3 handshake ends before the server has checked the
            # certificate: the server then drops the connection. Each further record finds the
            # connection gone and makes a new one, which the server drops again.
            def reconnected() -> bool:
                handler.handle(record)
                return handler.connections + handler.connect_errors >= 3

            wait_for(reconnected, 20, interval=0.2)
        else:
            wait_for(lambda: handler.connect_errors >= 3, 20)
            assert handler.connections == 0 and handler.sent == 0
    finally:
        handler.close()
        daemon.stop()
    assert daemon.records() == []


def test_a_daemon_that_is_down_is_said_once_on_stderr_and_so_is_its_return(tmp_path, capfd):
    # While rsyslog was down the handler retried and held records with nothing said anywhere
    # until its buffer dropped some (an outsider's runs); now one line when it cannot reach the
    # daemon, one when it reaches it again, nothing counted as an error, nothing lost.
    daemon = start_daemon(tmp_path / "rsyslog", tcp=True)
    try:
        config = snippet_file("rfc5424", tmp_path, port=daemon.tcp_port, transport="tcp")
        with mplog.start_listener(config, route_parent=False) as listener:
            join_workers(_start_rich_workers(listener.endpoint, 1, 100))
            daemon.wait_records(100)
            daemon.stop()
            join_workers(_start_rich_workers(listener.endpoint, 1, 100))
            seen: list[str] = []
            wait_for(lambda: seen.append(capfd.readouterr().err) or "cannot reach" in "".join(seen), 30)
            daemon.start()
            wait_for(lambda: len(daemon.records()) >= 200, 30)
            stats = listener.stats()
        seen.append(capfd.readouterr().err)
    finally:
        daemon.stop()
    err = "".join(seen)
    where = f"127.0.0.1:{daemon.tcp_port}"
    assert err.count(f"mplog: handler 'rsyslog' cannot reach {where} (") == 1, err
    assert err.count(f"mplog: handler 'rsyslog' reaches {where} again after ") == 1, err
    lines = [message_text(r).split("\n")[0] for r in daemon.records()]
    assert set(check_lines(lines, {0: 100}).seen.values()) == {2}  # both runs numbered from 0: each twice
    assert stats["handler_errors"] == {} and stats["handler_drops"] == {"rsyslog": 0}
