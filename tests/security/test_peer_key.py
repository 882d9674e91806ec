"""``peer_key`` is the key of the connection that sent that frame, however late the frame is handled.

Issue 14, item 4: the key was read from the receiver's *last* peer when a frame was
dispatched, so frames held while this host's workers kept every CPU busy
(``yield_to_workers``, mplog.listener.holding) were stamped with whichever client sent last.
The origin now travels with each frame from the receiver (mplog.transports.base.Origin).
"""

from __future__ import annotations

import logging
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_for

from mplog.listener.holding import WorkerWatch
from mplog.listener.loop import Server
from mplog.transports import TransportOptions
from mplog.transports import curve as security
from mplog.transports.zeromq import ZmqReceiver, ZmqSender
from mplog.wire import Sender, build_frame, encode_record, encode_sender

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

HOST = socket.gethostname()
CLIENTS = ("alpha", "beta")


class _Stamps(logging.Handler):
    """Keeps (message, peer_key) of every record it is handed."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record.getMessage(), str(getattr(record, "peer_key", ""))))


@pytest.fixture
def stamps() -> Iterator[_Stamps]:
    handler = _Stamps()
    logger = logging.getLogger("stamped")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield handler


def _keys(tmp_path: Path) -> dict[str, str]:
    security.generate_key_pair(tmp_path / "server", "server")
    for name in CLIENTS:
        security.generate_key_pair(tmp_path / "clients", name)
    return {name: security.read_public_key(tmp_path / "clients" / f"{name}.key") for name in CLIENTS}


def test_held_frames_keep_the_key_of_the_connection_that_sent_them(
    tmp_path: Path, spinner: subprocess.Popen[bytes], stamps: _Stamps
) -> None:
    public = _keys(tmp_path)
    receiver = ZmqReceiver(
        "tcp://127.0.0.1:0",
        TransportOptions(
            curve_secret_key=str(tmp_path / "server" / "server.key_secret"),
            curve_authorized_keys=str(tmp_path / "clients"),
        ),
    )
    server = Server(receiver)
    server.yield_seconds = 30.0  # the hold ends when the test stops the server, not before
    server.watch = WorkerWatch(cpus=1)
    server.watch.saw(HOST, spinner.pid, 0)
    wait_for(server.watch._look, timeout=20)  # the spinner keeps the one CPU busy: frames are held
    clients = {
        name: ZmqSender(
            receiver.endpoint,
            TransportOptions(
                curve_server_key=str(tmp_path / "server" / "server.key"),
                curve_secret_key=str(tmp_path / "clients" / f"{name}.key_secret"),
            ),
        )
        for name in CLIENTS
    }
    # Both claim the busy spinner's pid (each its own stream), so that their frames are held.
    identities = {name: encode_sender(Sender(HOST, spinner.pid, time.time(), n + 1)) for n, name in enumerate(CLIENTS)}
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for seq in range(20):  # interleaved: alpha, beta, alpha, beta, ...
            for name, client in clients.items():
                record = logging.LogRecord("stamped", logging.INFO, __file__, 1, f"{name}:{seq}", None, None)
                frame = build_frame(identities[name], seq, 0, 0, [encode_record(record)])
                assert wait_for(lambda c=client, f=frame: c.send(f, 0.1), timeout=10)
        wait_for(lambda: server.held_frames == 40, timeout=20)
        assert stamps.seen == []  # all 40 were held, none handled yet
    finally:
        server.stop_event.set()  # the hold ends: the held frames are handled, in order
        thread.join(20)
        for client in clients.values():
            client.close(0)
        receiver.close()
    assert len(stamps.seen) == 40
    wrong = [(message, key) for message, key in stamps.seen if key != public[message.split(":")[0]]]
    assert wrong == []
