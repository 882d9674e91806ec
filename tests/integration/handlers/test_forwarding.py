"""Forwarding from a listener: ForwardHandler chains listeners; pickle-based handlers are opt-in."""

from __future__ import annotations

import re
import socket
import struct
import threading

import pytest
from handler_peers import run_workers, snippet_file
from helpers import check_lines, file_config, read_lines, wait_for

import mplog

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_two_chained_listeners_deliver_every_record_exactly_once(tmp_path):
    out = tmp_path / "collector.log"
    workers, per_worker = 4, 5_000
    collector = mplog.start_listener(file_config(out, fmt="%(process)d %(message)s"), route_parent=False)
    with collector:
        config = snippet_file("forward", tmp_path, endpoint=collector.endpoint)
        with mplog.start_listener(config, route_parent=False) as relay:
            run_workers(relay.endpoint, workers, per_worker)
        relay_stats = relay.stats()
        wait_for(lambda: collector.stats()["received"] >= workers * per_worker, 10)
    stats = collector.stats()
    lines = read_lines(out)
    check_lines(lines, dict.fromkeys(range(workers), per_worker)).assert_exact()
    assert len(lines) == workers * per_worker
    # The collector sees one sender, the relay, with nothing lost on the way...
    assert [s["pid"] for s in stats["senders"].values()] == [relay.pid]
    assert stats["received"] == relay_stats["received"] == workers * per_worker
    assert stats["gaps"] == stats["dropped"] == stats["malformed_total"] == 0
    assert relay_stats["handler_drops"] == {"next": 0} and relay_stats["handler_errors"] == {}
    # ...and each record still names the worker process that logged it.
    pids = {int(line.split()[0]) for line in lines}
    assert len(pids) == workers and relay.pid not in pids


@pytest.mark.parametrize("handler", ["logging.handlers.SocketHandler", "logging.handlers.DatagramHandler"])
def test_pickle_forwarding_handlers_are_refused_without_the_explicit_opt_in(handler):
    config = {
        "handlers": {"legacy": {"class": handler, "host": "127.0.0.1", "port": 9}},
        "root": {"handlers": ["legacy"]},
    }
    with pytest.raises(mplog.ConfigError, match=r"handlers\.legacy: .* sends pickled records.*ForwardHandler"):
        mplog.start_listener(config, route_parent=False)


class _FrameCounter:
    """Accepts SocketHandler connections and splits the stream into length-prefixed frames; never unpickles."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.frames: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
                while len(data) >= 4 and len(data) >= 4 + struct.unpack(">L", data[:4])[0]:
                    size = struct.unpack(">L", data[:4])[0]
                    self.frames.append(data[4 : 4 + size])
                    data = data[4 + size :]

    def close(self) -> None:
        self.server.close()
        self.thread.join(5)


def test_socket_handler_forwards_pickles_when_the_config_opts_in(tmp_path):
    receiver = _FrameCounter()
    try:
        config = snippet_file("socket-pickle", tmp_path, port=receiver.port)
        with mplog.start_listener(config, route_parent=False) as listener:
            run_workers(listener.endpoint, 2, 100)
        receiver.thread.join(10)
    finally:
        receiver.close()
    assert len(receiver.frames) == 200
    messages = [re.search(rb"P\d+:\d{8}:\d{5}:", frame) for frame in receiver.frames]
    check_lines([m.group().decode() for m in messages if m], {0: 100, 1: 100}).assert_exact()
    assert listener.stats()["handler_errors"] == {}
