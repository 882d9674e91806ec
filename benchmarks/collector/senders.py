"""The body of one sender process: build its payloads, connect, wait for "go", send, stay connected.

A process holds one or more connections (the scaling table's 16 and 64 connections share
a few processes); each connection is a sender of its own with its own lines. Everything
is built before the process says it is ready, so the clock measures the collector, not
the senders: a send is one ``sendall`` (rsyslog) or one ZeroMQ ``send`` (mplog) of bytes
made in advance. The connections stay open until the benchmark has seen every line in
the file, because closing a connection early can lose what the collector had not read yet.
"""

from __future__ import annotations

import json
import os
import socket
import time
from functools import partial
from pathlib import Path
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from benchmarks.collector.payload import mplog_frames, syslog_chunks
from mplog.transports import curve as security

CONNECT_TIMEOUT = 60.0
_HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


def _zmq_connect(ctx: zmq.Context[Any], endpoint: str, keys: security.ClientKeys | None) -> zmq.Socket[Any]:
    """A PUSH socket connected to ``endpoint`` whose ZMTP (and CURVE) handshake has succeeded."""
    sock: zmq.Socket[Any] = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)  # closed only once every line is in the file
    if keys is not None:
        security.configure_client(sock, keys)
    monitor = sock.get_monitor_socket(_HANDSHAKE_EVENTS)
    try:
        sock.connect(endpoint)
        if not monitor.poll(int(CONNECT_TIMEOUT * 1000)):
            raise RuntimeError(f"no handshake with {endpoint} within {CONNECT_TIMEOUT:g} s")
        event = recv_monitor_message(monitor)["event"]
        if event != zmq.EVENT_HANDSHAKE_SUCCEEDED:
            raise RuntimeError(f"handshake with {endpoint} failed: zmq event {event}")
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
    return sock


def _tcp_connect(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT)
    sock.settimeout(None)
    return sock


def sender_main(spec: dict[str, Any], ready: Any, go: Any, done: Any, report: str) -> None:
    """One sender process; ``spec`` says which system, which connections and what to send.

    ``spec``: ``system`` (``rsyslog`` or ``mplog``), ``address`` (``HOST:PORT`` or a ``tcp://``
    endpoint), ``connections`` (``[[connection id, lines], ...]``), ``length``, ``per_frame``,
    ``hold`` (the longest it stays connected after sending) and, for CURVE, ``server_key``
    and ``secret_key`` (key files).
    """
    pid = os.getpid()
    length, per_frame = spec["length"], spec["per_frame"]
    if spec["system"] == "rsyslog":
        payloads = [syslog_chunks(conn, count, length, per_frame, pid) for conn, count in spec["connections"]]
    else:
        version = spec.get("wire_version", 2)
        payloads = [mplog_frames(conn, count, length, per_frame, pid, version) for conn, count in spec["connections"]]
    ctx: zmq.Context[Any] | None = None
    if spec["system"] == "rsyslog":
        tcp = [_tcp_connect(spec["address"]) for _ in payloads]
        sends = [s.sendall for s in tcp]
        closers = [s.close for s in tcp]
    else:
        keys = None
        if spec.get("server_key"):
            keys = security.ClientKeys(
                security.read_public_key(spec["server_key"]), security.read_key_pair(spec["secret_key"])
            )
        ctx = zmq.Context(io_threads=1)
        socks = [_zmq_connect(ctx, spec["address"], keys) for _ in payloads]
        sends = [partial(sock.send, copy=False) for sock in socks]
        closers = [sock.close for sock in socks]
    pairs = list(zip(sends, payloads, strict=True))
    ready.release()
    go.wait()
    c0, t0 = time.process_time(), time.perf_counter()
    # Round robin over this process's connections, one frame (chunk) at a time: each
    # connection's lines arrive in order and no connection waits for the others to finish.
    for i in range(max(len(p) for p in payloads)):
        for send, frames in pairs:
            if i < len(frames):
                send(frames[i])
    t1, c1 = time.perf_counter(), time.process_time()
    lines = sum(count for _, count in spec["connections"])
    Path(report).write_text(json.dumps({"pid": pid, "lines": lines, "seconds": t1 - t0, "cpu": c1 - c0}))
    done.wait(spec["hold"])
    for close in closers:
        close()
    if ctx is not None:
        ctx.term()
