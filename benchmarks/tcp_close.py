"""Raw pyzmq experiments behind the tcp settings of mplog.transports.zeromq (docs/reliability.md).

    python -m benchmarks.tcp_close stall  [--pause 6]   # a reader that pauses: is the connection kept?
    python -m benchmarks.tcp_close tail   [--pause 6]   # a sender that closes before its tail is read

Each runs the four ways of watching a peer side by side, in fresh processes (libzmq may
abort one): ``heartbeat`` (ZMTP heartbeats both ways, mplog's settings before), ``maxrt``
(keepalive and TCP_MAXRT on the sender), ``keepalive`` (keepalive only) and, for ``tail``,
``cleared`` (``maxrt`` with TCP_MAXRT cleared on the connection before the sender closes,
what mplog does now). Loopback only; prints one line per way.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import zmq

WAYS = ("heartbeat", "maxrt", "keepalive", "cleared")


def _push(ctx: zmq.Context[Any], way: str) -> zmq.Socket[Any]:
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 8)
    push.setsockopt(zmq.IMMEDIATE, 1)
    push.setsockopt(zmq.LINGER, 1000)
    if way == "heartbeat":
        push.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        push.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
        push.setsockopt(zmq.HEARTBEAT_TTL, 3000)
    else:
        push.setsockopt(zmq.TCP_KEEPALIVE, 1)
        push.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 1)
        push.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 1)
        push.setsockopt(zmq.TCP_KEEPALIVE_CNT, 2)
        if way != "keepalive":
            push.setsockopt(zmq.TCP_MAXRT, 3000)
    return push


def _pull(ctx: zmq.Context[Any], way: str) -> tuple[zmq.Socket[Any], int]:
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, 4)
    pull.setsockopt(zmq.LINGER, 0)
    if way == "heartbeat":
        pull.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        pull.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
    return pull, pull.bind_to_random_port("tcp://127.0.0.1")


def _clear_max_rt(port: int) -> None:
    """Clear TCP_USER_TIMEOUT on this process's connections to ``port`` (found through /proc/self/fd)."""
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=int(name))
        except OSError:
            continue
        try:
            if sock.type == socket.SOCK_STREAM and sock.getpeername()[1] == port:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 0)
        except OSError:
            pass
        finally:
            sock.detach()


def stall(way: str, pause: float) -> str:
    """200 messages of 64 KiB; the reader pauses ``pause`` s after every 50th. Lost messages, disconnects."""
    ctx = zmq.Context()
    pull, port = _pull(ctx, way)
    push = _push(ctx, way)
    monitor = push.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    push.connect(f"tcp://127.0.0.1:{port}")
    got: list[int] = []

    def read() -> None:
        while len(got) < 200 and pull.poll(15_000):
            got.append(int.from_bytes(pull.recv()[:4], "big"))
            if len(got) % 50 == 0:
                time.sleep(pause)

    reader = threading.Thread(target=read)
    reader.start()
    start, sent = time.monotonic(), 0
    for i in range(200):
        while time.monotonic() - start < 40:
            try:
                push.send(i.to_bytes(4, "big") + b"x" * 65536, zmq.NOBLOCK)
                sent += 1
                break
            except zmq.Again:
                time.sleep(0.01)
    reader.join(60)
    disconnects = 0
    while monitor.poll(0):
        monitor.recv_multipart()
        disconnects += 1
    for sock in (push, pull, monitor):
        sock.close(0)
    ctx.term()
    return f"sent {sent}, lost {sent - len(set(got))}, disconnects {disconnects}"


def tail(way: str, pause: float) -> str:
    """2,000 messages of 1 KiB, then close, while the reading application pauses ``pause`` s. Lost messages."""
    ctx, sender_ctx = zmq.Context(), zmq.Context()
    pull, port = _pull(ctx, way)
    push = _push(sender_ctx, way)
    push.connect(f"tcp://127.0.0.1:{port}")
    time.sleep(0.3)
    start = time.monotonic()
    for i in range(2000):
        push.send(i.to_bytes(4, "big") + b"x" * 1000)
    if way == "cleared":
        _clear_max_rt(port)
    push.close()
    sender_ctx.term()
    time.sleep(max(pause - (time.monotonic() - start), 0.0))
    got = set()
    while pull.poll(15_000):
        got.add(int.from_bytes(pull.recv()[:4], "big"))
    pull.close(0)
    ctx.term()
    return f"lost {2000 - len(got)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=("stall", "tail"))
    parser.add_argument("--pause", type=float, default=6.0)
    parser.add_argument("--way", choices=WAYS, help="run one way in this process (used by the driver)")
    args = parser.parse_args(argv)
    if args.way:
        print((stall if args.experiment == "stall" else tail)(args.way, args.pause), flush=True)
        return 0
    ways = WAYS if args.experiment == "tail" else WAYS[:3]
    for way in ways:
        command = [sys.executable, "-m", "benchmarks.tcp_close", args.experiment, "--pause", str(args.pause)]
        done = subprocess.run([*command, "--way", way], capture_output=True, text=True, timeout=120, check=False)
        result = done.stdout.strip() or f"died (exit {done.returncode}): {done.stderr.strip()[-120:]}"
        print(f"{args.experiment} pause {args.pause:g} s, {way:9}: {result}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
