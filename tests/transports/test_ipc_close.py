"""How a closing ipc sender holds its connections open until the listener has read them (docs/reliability.md,
"A worker's last records over ipc"): finding its connections, and waiting for the peer to read, bounded."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator

import pytest

from mplog.transports.zeromq import _keep_ipc_connections, _socket_fds, _unread_bytes, _wait_until_read

pytestmark = [pytest.mark.timeout(30)]


@pytest.fixture
def private_dir() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="mplog-ic-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def _inode(sock: socket.socket) -> int:
    return next(inode for fd, inode in _socket_fds() if fd == sock.fileno())


def _serve(address: str | bytes) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(address)
    server.listen()
    return server


def test_the_connections_to_the_endpoints_path_are_found_by_path_or_abstract_name_and_foreign_ones_are_left(
    private_dir,
):
    path = os.path.join(private_dir, "listener.sock")
    abstract = f"mplog-test-{os.getpid()}-{time.monotonic_ns()}"
    servers = [_serve(path), _serve(b"\0" + abstract.encode()), _serve(os.path.join(private_dir, "other.sock"))]
    clients = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(4)]
    try:
        clients[0].connect(path)
        clients[1].connect(b"\0" + abstract.encode())
        clients[2].connect(os.path.join(private_dir, "other.sock"))  # another path: not the sender's
        clients[3].connect(path)  # held before the sender opened (a parent's, inherited by fork)
        foreign = {_inode(clients[3])}
        kept = _keep_ipc_connections({path, "@" + abstract}, foreign)
        try:
            found = {os.fstat(fd).st_ino for fd in kept}
            assert found == {_inode(clients[0]), _inode(clients[1])}
        finally:
            for fd in kept:
                os.close(fd)
    finally:
        for sock in clients + servers:
            sock.close()


@pytest.fixture
def connection(private_dir) -> Iterator[tuple[str, socket.socket, socket.socket]]:
    """A Unix stream connection to a socket bound at a path: (path, the sender's end, the listener's end)."""
    path = os.path.join(private_dir, "listener.sock")
    server = _serve(path)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    peer, _ = server.accept()
    yield path, client, peer
    for sock in (client, peer, server):
        sock.close()


def test_a_kept_connection_stays_open_after_its_owner_closes_it_until_the_peer_has_read_everything(connection):
    path, client, peer = connection
    client.sendall(b"x" * 50_000)
    assert _unread_bytes(client.fileno()) > 0  # sent, not read yet
    kept = _keep_ipc_connections({path}, set())
    assert len(kept) == 1
    client.close()  # what libzmq does at the end of its linger
    # Nobody reads: the wait ends at its deadline, not before, and the duplicate is closed.
    started = time.monotonic()
    _wait_until_read(list(kept), started + 0.3)
    assert 0.3 <= time.monotonic() - started < 0.3 + 1.0
    with pytest.raises(OSError):
        os.fstat(kept[0])
    # The connection stayed open while it was kept: every byte is there, then the end.
    received = b""
    while chunk := peer.recv(65536):
        received += chunk
    assert received == b"x" * 50_000


def test_the_wait_ends_as_soon_as_the_peer_has_read_everything(connection):
    path, client, peer = connection
    client.sendall(b"y" * 10_000)
    kept = _keep_ipc_connections({path}, set())
    client.close()
    received = b""
    while len(received) < 10_000:
        received += peer.recv(65536)
    started = time.monotonic()
    _wait_until_read(list(kept), started + 5.0)
    assert time.monotonic() - started < 1.0  # not the 5 s deadline
    assert peer.recv(1) == b""  # the duplicate closed: the peer sees the end
