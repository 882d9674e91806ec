"""One endpoint, one listener: ipc:// and mp:// paths are refused while a live listener serves them.

A socket left by a dead listener may be replaced; a socket file a listener did not
create is never unlinked by it (mplog.transports.claim, docs/security.md).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_for
from lifecycle_helpers import cli_env, listen_argv, running, short_dir, wait_listening

import mplog
from mplog.exceptions import TransportError
from mplog.listener.status_channel import request_stats

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

EXIT_BIND = 3
SCHEMES = ["ipc", "mp"]

WORKER = """
import sys, mplog, helpers
handler = mplog.setup_worker(sys.argv[1])
helpers.log_numbered(0, int(sys.argv[2]))
handler.close()
"""


@pytest.fixture
def sockets() -> Iterator[Path]:
    with short_dir() as path:
        yield path


def _listener(endpoint: str, **options: object) -> mplog.Listener:
    return mplog.start_listener(None, endpoint=endpoint, route_parent=False, export_env=False, **options)  # type: ignore[arg-type]


def _log_through(endpoint: str, count: int) -> None:
    result = subprocess.run(
        [sys.executable, "-c", WORKER, endpoint, str(count)], env=cli_env(), timeout=30, check=False
    )
    assert result.returncode == 0


@contextlib.contextmanager
def _unix_server(path: str) -> Iterator[socket.socket]:
    """A plain unix socket server at ``path`` (another program's socket)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(path)
        server.listen(1)
        yield server
    finally:
        server.close()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_second_start_listener_on_a_live_endpoint_is_refused_naming_the_path_and_the_pid(sockets, scheme):
    endpoint = f"{scheme}://{sockets}/l.sock"
    first = _listener(endpoint)
    second = None
    try:
        with pytest.raises(TransportError) as refused:
            second = _listener(endpoint)
        assert f"{sockets}/l.sock" in str(refused.value) and f"pid {first.pid}" in str(refused.value)
        # The first one was not disturbed: its status channel answers and its endpoint delivers.
        assert request_stats(endpoint)["pid"] == first.pid
        _log_through(endpoint, 100)
        wait_for(lambda: first.stats()["received"] == 100)
    finally:
        if second is not None:
            second.stop()
        stats = first.stop()
    assert stats["received"] == 100
    assert not os.path.exists(f"{sockets}/l.sock") and not os.path.exists(f"{sockets}/l.sock.ctl")
    assert not os.path.exists(f"{sockets}/l.sock.lock")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_second_mplog_listen_on_a_live_endpoint_exits_3_naming_the_path_and_the_pid(tmp_path, sockets, scheme):
    endpoint = f"{scheme}://{sockets}/collector.sock"
    config = tmp_path / "collector.json"
    config.write_text('{"version": 1}')
    err = tmp_path / "first.err"
    with running(listen_argv(config, endpoint), err) as first:
        wait_listening(err)
        second = subprocess.run(
            listen_argv(config, endpoint), capture_output=True, text=True, env=cli_env(), timeout=30, check=False
        )
        assert second.returncode == EXIT_BIND, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"{sockets}/collector.sock" in lines[0] and f"pid {first.pid}" in lines[0], lines
        assert request_stats(endpoint)["pid"] == first.pid  # still reachable
        first.send_signal(signal.SIGTERM)
        assert first.wait(20) == 0


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_socket_left_by_a_killed_listener_is_replaced(sockets, scheme):
    endpoint = f"{scheme}://{sockets}/l.sock"
    dead = _listener(endpoint, supervise=False)
    os.kill(dead.pid, signal.SIGKILL)
    wait_for(lambda: not dead.running)
    dead.stop()
    assert os.path.exists(f"{sockets}/l.sock")  # left behind
    with _listener(endpoint) as listener:
        _log_through(endpoint, 100)
        wait_for(lambda: listener.stats()["received"] == 100)
        assert request_stats(endpoint)["pid"] == listener.pid


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_listener_never_unlinks_a_socket_file_it_did_not_create(sockets, scheme):
    path = f"{sockets}/l.sock"
    listener = _listener(f"{scheme}://{path}")
    try:
        # Another program replaced both socket files meanwhile (e.g. by hand).
        os.unlink(path)
        os.unlink(f"{path}.ctl")
        with _unix_server(path), _unix_server(f"{path}.ctl"):
            theirs = os.stat(path).st_ino, os.stat(f"{path}.ctl").st_ino
            listener.stop()
            assert (os.stat(path).st_ino, os.stat(f"{path}.ctl").st_ino) == theirs
    finally:
        listener.stop()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_file_that_is_not_a_socket_is_never_replaced(sockets, scheme):
    path = sockets / "l.sock"
    path.write_text("not a socket\n")
    listener = None
    try:
        with pytest.raises(TransportError, match="is not a socket"):
            listener = _listener(f"{scheme}://{path}")
    finally:
        if listener is not None:
            listener.stop()
    assert path.read_text() == "not a socket\n"


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_socket_another_program_accepts_on_is_not_taken_over(sockets, scheme):
    path = f"{sockets}/l.sock"
    listener = None
    with _unix_server(path):
        try:
            with pytest.raises(TransportError, match=f"pid {os.getpid()}"):
                listener = _listener(f"{scheme}://{path}")
        finally:
            if listener is not None:
                listener.stop()
        assert os.path.exists(path)


def test_an_explicit_status_channel_is_refused_while_a_live_listener_serves_it(sockets):
    control = f"ipc://{sockets}/status.ctl"
    config = {"version": 1, "mplog": {"control": control}}
    first = mplog.start_listener(config, endpoint=f"ipc://{sockets}/a.sock", route_parent=False, export_env=False)
    second = None
    try:
        with pytest.raises(TransportError, match=f"pid {first.pid}"):
            second = mplog.start_listener(
                config, endpoint=f"ipc://{sockets}/b.sock", route_parent=False, export_env=False
            )
        assert request_stats("", control=control)["pid"] == first.pid
    finally:
        if second is not None:
            second.stop()
        first.stop()


@pytest.mark.timeout(90)
def test_of_four_mplog_listen_started_at_once_on_one_path_exactly_one_serves(tmp_path, sockets):
    endpoint = f"ipc://{sockets}/collector.sock"
    config = tmp_path / "collector.json"
    config.write_text('{"version": 1}')
    with contextlib.ExitStack() as stack:
        procs = [stack.enter_context(running(listen_argv(config, endpoint), tmp_path / f"{i}.err")) for i in range(4)]
        wait_for(lambda: sum(p.poll() is not None for p in procs) == 3, timeout=60)
        refused = [p for p in procs if p.poll() is not None]
        (serving,) = [p for p in procs if p.poll() is None]
        assert [p.returncode for p in refused] == [EXIT_BIND] * 3
        assert request_stats(endpoint)["pid"] == serving.pid
        serving.send_signal(signal.SIGTERM)
        assert serving.wait(20) == 0


# A listener-like process: claims PATH, forks a child that lives on, then dies by SIGKILL.
CLAIM_FORK_DIE = """
import os, signal, sys, time
from mplog.transports.claim import claim_socket_path
claim_socket_path(sys.argv[1], "mp://" + sys.argv[1])
child = os.fork()
if child == 0:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    time.sleep(30)
    os._exit(0)
print(child, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_process_forked_by_a_dead_listener_does_not_keep_its_endpoint(sockets):
    from mplog.transports.claim import claim_socket_path

    path = str(sockets / "l.sock")
    result = subprocess.run(
        [sys.executable, "-c", CLAIM_FORK_DIE, path], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    orphan = int(result.stdout)
    try:
        assert os.path.exists(f"{path}.lock")  # left by the dead one, its copy still open in the orphan
        claim = claim_socket_path(path, f"mp://{path}")
        claim.release()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(orphan, signal.SIGKILL)
