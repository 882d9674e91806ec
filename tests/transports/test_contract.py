"""The transport contract: one suite, run against every transport.

A transport moves opaque frames: whole, in order per sender, never blocking past a
timeout, surviving fork and SIGKILLed peers, refusing oversized frames, and binding
privately (catalogue B1, B2, C3a, D2, D5). A new transport adds one entry to KINDS.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import zmq
from helpers import wait_for

from mplog.exceptions import ConfigError
from mplog.transports import (
    Origin,
    Receiver,
    Sender,
    TransportOptions,
    default_endpoint,
    open_receiver,
    open_sender,
)
from mplog.transports import curve as security
from mplog.transports.zeromq import COLLECTOR_KEEPALIVE, ZmqReceiver, ZmqSender
from mplog.transports.zeromq_ack import DealerSender, RouterReceiver

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

KINDS = ["zmq-ipc", "zmq-tcp", "multiprocessing"]
# Wall-clock slack on "returns within its bound" checks: they prove a bound, not a speed,
# and must hold on a loaded 2-core CI machine.
SLACK_S = 1.0


class Collector:
    """Reads a receiver on its own thread, as a listener does: a writer never waits for the test."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.frames: list[bytes] = []
        self.origins: list[Origin] = []  # the origin of each frame, in the same order
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            received = self.receiver.recv(0.05)
            if received is not None:
                data, origin = received
                self.origins.append(origin)  # first: whoever sees a frame finds its origin
                self.frames.append(data)

    def wait(self, predicate: Callable[[list[bytes]], bool], timeout: float = 20.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while not predicate(self.frames):
            assert time.monotonic() < deadline, f"only {len(self.frames)} frames arrived"
            time.sleep(0.01)
        return list(self.frames)

    def quiet(self, period: float = 0.5) -> list[bytes]:
        """Wait until nothing has arrived for ``period`` seconds (at most 30 s in all); return everything received.

        Not synchronisation: the window in which a duplicate or an unexpected frame would show.
        """
        deadline = time.monotonic() + 30
        count = -1
        while count != len(self.frames):
            assert time.monotonic() < deadline, f"frames still arriving after 30 s: {len(self.frames)}"
            count = len(self.frames)
            time.sleep(period)
        return list(self.frames)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class Ends:
    """A bound receiver, read by a collector thread, and the endpoint senders use."""

    kind: str
    receiver: Receiver
    collector: Collector
    endpoint: str
    options: TransportOptions


@pytest.fixture
def private_dir() -> Iterator[str]:
    # Short, so the socket path fits the 107-byte sun_path limit (tmp_path can be longer).
    directory = tempfile.mkdtemp(prefix="mplog-ct-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def bind_address(kind: str, directory: str) -> str:
    if kind == "zmq-ipc":
        return f"ipc://{directory}/listener.sock"
    if kind == "zmq-tcp":
        return "tcp://127.0.0.1:0"  # port 0: the kernel picks a free port
    return f"mp://{directory}/listener.sock"


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_ends(kind: str, private_dir: str) -> Iterator[Callable[..., Ends]]:
    opened: list[Ends] = []

    def make(options: TransportOptions | None = None) -> Ends:
        options = options or TransportOptions()
        receiver = open_receiver(bind_address(kind, private_dir), options)
        ends = Ends(kind, receiver, Collector(receiver), receiver.endpoint, options)
        opened.append(ends)
        return ends

    yield make
    for ends in opened:
        ends.collector.stop()
        ends.receiver.close()


@pytest.fixture
def ends(make_ends: Callable[..., Ends]) -> Ends:
    return make_ends()


def numbered(sender_id: int, index: int, size: int | None = None) -> bytes:
    """A frame whose content is a function of (sender, index): truncation or mixing shows."""
    size = (index * 7919) % 20000 if size is None else size
    head = b"S%03d:%08d:%07d:" % (sender_id, index, size)
    offset = (sender_id + index) & 0xFF
    return head + _PATTERN[offset : offset + size]


_PATTERN = bytes(range(256)) * (4 * 1024 + 2)  # frames up to 1 MiB


def parse(frame: bytes) -> tuple[int, int]:
    sender_id, index, size = (int(part) for part in frame[1:21].split(b":"))
    assert frame == numbered(sender_id, index, size), "frame content damaged"
    return sender_id, index


def send_all(sender: Sender, frames: list[bytes], deadline_s: float = 20.0) -> None:
    """Send every frame in order, retrying refusals (a refused frame was not sent at all)."""
    deadline = time.monotonic() + deadline_s
    for frame in frames:
        while not sender.send(frame, 0.2):
            assert time.monotonic() < deadline, "sender never got the frame through"


def by_sender(frames: list[bytes]) -> dict[int, list[int]]:
    result: dict[int, list[int]] = {}
    for frame in frames:
        sender_id, index = parse(frame)
        result.setdefault(sender_id, []).append(index)
    return result


# ---------------------------------------------------------------- delivery


def test_frames_arrive_whole_and_in_order_per_sender(ends):
    per_sender, senders = 300, 3
    opened = [open_sender(ends.endpoint) for _ in range(senders)]
    threads = [
        threading.Thread(target=send_all, args=(sender, [numbered(n, i) for i in range(per_sender)]))
        for n, sender in enumerate(opened)
    ]
    for thread in threads:
        thread.start()
    try:
        ends.collector.wait(lambda got: len(got) >= senders * per_sender)
    finally:
        for thread in threads:
            thread.join(30)
        for sender in opened:
            sender.close()
    frames = ends.collector.quiet(0.2)
    assert by_sender(frames) == {s: list(range(per_sender)) for s in range(senders)}
    assert sum(ends.receiver.events.values()) == 0


def test_empty_and_large_frames_arrive_unchanged(ends):
    sender = open_sender(ends.endpoint)
    sizes = [0, 1, 255, 65536, 1024 * 1024]
    try:
        send_all(sender, [numbered(9, i, size) for i, size in enumerate(sizes)])
        frames = ends.collector.wait(lambda got: len(got) == len(sizes))
    finally:
        sender.close()
    assert [len(f) for f in frames] == [22 + size for size in sizes]
    assert by_sender(frames) == {9: list(range(len(sizes)))}


# ---------------------------------------------------------------- origin: where each frame came from


def test_every_frame_comes_with_the_origin_of_the_connection_it_arrived_on(ends):
    """mp:// names each connection (never reusing a name); PULL cannot tell its connections apart."""
    opened = [open_sender(ends.endpoint) for _ in range(2)]
    try:
        for index in range(20):  # interleaved: the origins must follow the frames, not the last reader
            for sender_id, sender in enumerate(opened):
                send_all(sender, [numbered(sender_id, index, 10)])
        ends.collector.wait(lambda got: len(got) == 40)
        by_origin: dict[Origin, set[int]] = {}
        for data, origin in zip(ends.collector.frames, ends.collector.origins, strict=True):
            by_origin.setdefault(origin, set()).add(parse(data)[0])
        if ends.kind == "multiprocessing":
            assert sorted(by_origin.values(), key=min) == [{0}, {1}]  # one origin per connection
            assert all(origin.connection and not origin.peer_key for origin in by_origin)
            assert all(ends.receiver.connected(origin.connection) for origin in by_origin)
        else:
            assert by_origin == {Origin(b"", ""): {0, 1}}
            assert not ends.receiver.connected(b"")
    finally:
        for sender in opened:
            sender.close()
    if ends.kind == "multiprocessing":
        first = next(iter(by_origin))
        deadline = time.monotonic() + 10
        while ends.receiver.connected(first.connection):  # it ends when the receiver reads the EOF
            assert time.monotonic() < deadline, "a closed connection still counts as open"
            time.sleep(0.01)
        again = open_sender(ends.endpoint)  # a new connection gets a new name, never an old one
        try:
            send_all(again, [numbered(2, 0, 10)])
            ends.collector.wait(lambda got: len(got) == 41)
        finally:
            again.close()
        assert ends.collector.origins[-1] not in by_origin


def test_a_router_names_each_connection_answers_it_and_knows_when_it_has_ended(private_dir):
    """The acknowledging transport: routing id as the connection, replies to it, probes for connected()."""
    receiver = RouterReceiver(f"ipc://{private_dir}/router.sock", TransportOptions())
    dealers = [DealerSender(receiver.endpoint, TransportOptions()) for _ in range(2)]
    try:
        origins: dict[int, set[Origin]] = {0: set(), 1: set()}
        for index in range(10):
            for dealer_id, dealer in enumerate(dealers):
                assert wait_for(lambda d=dealer, i=index, n=dealer_id: d.send(numbered(n, i, 10), 0.1), timeout=10)
                received = receiver.recv(5.0)
                assert received is not None
                origins[parse(received[0])[0]].add(received[1])
        assert all(len(seen) == 1 for seen in origins.values())
        first, second = (next(iter(origins[n])) for n in (0, 1))
        assert first.connection and second.connection and first != second
        assert receiver.connected(first.connection) and receiver.connected(second.connection)
        assert receiver.reply(second.connection, b"to the second")
        assert dealers[1].recv(5.0) == b"to the second"  # the probes connected() sent were never returned
        assert dealers[0].recv(0.2) is None
        dealers[0].close(0)
        wait_for(lambda: not receiver.connected(first.connection), timeout=10)
        assert receiver.connected(second.connection)
        assert not receiver.connected(b"")
    finally:
        for dealer in dealers:
            dealer.close(0)
        receiver.close()


def test_a_dealer_waiting_for_an_answer_waits_out_its_timeout_past_a_probe(private_dir):
    """A probe (RouterReceiver.connected) before the answer: recv(timeout) still returns the answer.

    It returned None at once after the probe: the router test above failed so once in a full run.
    """
    receiver = RouterReceiver(f"ipc://{private_dir}/router.sock", TransportOptions())
    dealer = DealerSender(receiver.endpoint, TransportOptions())
    try:
        assert wait_for(lambda: dealer.send(numbered(0, 0, 10), 0.1), timeout=10)
        received = receiver.recv(5.0)
        assert received is not None
        connection = received[1].connection
        assert receiver.connected(connection)  # sends the probe
        answer = threading.Timer(0.3, receiver.reply, (connection, b"the answer"))
        answer.start()
        assert dealer.recv(5.0) == b"the answer"
        answer.join()
    finally:
        dealer.close(0)
        receiver.close()


@pytest.mark.parametrize("router", [False, True], ids=["pull", "router"])
def test_under_curve_every_frame_carries_the_key_its_own_connection_proved(tmp_path, router):
    security.generate_key_pair(tmp_path / "server", "server")
    for name in ("alpha", "beta"):
        security.generate_key_pair(tmp_path / "clients", name)
    server = TransportOptions(
        curve_secret_key=str(tmp_path / "server" / "server.key_secret"), curve_authorized_keys=str(tmp_path / "clients")
    )
    receiver = (RouterReceiver if router else ZmqReceiver)("tcp://127.0.0.1:0", server)
    kind = DealerSender if router else ZmqSender
    clients = {
        name: kind(
            receiver.endpoint,
            TransportOptions(
                curve_server_key=str(tmp_path / "server" / "server.key"),
                curve_secret_key=str(tmp_path / "clients" / f"{name}.key_secret"),
            ),
        )
        for name in ("alpha", "beta")
    }
    public = {name: security.read_public_key(tmp_path / "clients" / f"{name}.key") for name in clients}
    try:
        for index in range(10):
            for sender_id, client in enumerate(clients.values()):
                assert wait_for(lambda c=client, i=index, n=sender_id: c.send(numbered(n, i, 10), 0.1), timeout=10)
        keys: dict[int, set[str]] = {0: set(), 1: set()}
        for _ in range(20):
            received = receiver.recv(5.0)
            assert received is not None
            keys[parse(received[0])[0]].add(received[1].peer_key)
        assert keys == {0: {public["alpha"]}, 1: {public["beta"]}}
    finally:
        for client in clients.values():
            client.close(0)
        receiver.close()


# ---------------------------------------------------------------- no receiver


@pytest.mark.parametrize("timeout", [0.0, 0.3])
def test_send_returns_false_without_blocking_past_its_timeout_when_nothing_is_bound(kind, private_dir, timeout):
    if kind == "zmq-tcp":
        with socket.socket() as probe:  # a port that was free a moment ago and is closed now
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        endpoint = f"tcp://127.0.0.1:{port}"
    else:
        endpoint = bind_address(kind, private_dir)
    sender = open_sender(endpoint)
    try:
        for _ in range(3):
            started = time.monotonic()
            assert sender.send(b"nobody is listening", timeout) is False
            assert time.monotonic() - started < timeout + SLACK_S
    finally:
        started = time.monotonic()
        sender.close()
        assert time.monotonic() - started < TransportOptions().linger + SLACK_S  # never libzmq's default: forever


def test_a_receiver_that_stops_reading_makes_send_refuse_within_its_bound_and_loses_nothing_sent(kind, private_dir):
    options = TransportOptions(write_timeout=0.5, sndhwm=10, rcvhwm=10)
    receiver = open_receiver(bind_address(kind, private_dir), options)  # nobody reads it yet
    sender = open_sender(receiver.endpoint, options)
    timeout = 0.05
    # ZeroMQ refuses at once (high-water mark); the multiprocessing transport may block one
    # write for up to write_timeout before it gives up on a full pipe.
    bound = timeout + (options.write_timeout if kind == "multiprocessing" else 0.0) + SLACK_S
    sent, refused, slowest = [], 0, 0.0
    collector = None
    try:
        for index in range(3000):
            started = time.monotonic()
            if sender.send(numbered(5, index, 64 * 1024), timeout):
                sent.append(index)
            else:
                refused += 1
            slowest = max(slowest, time.monotonic() - started)
            if refused >= 3:
                break
        assert refused >= 3, "the pipe never filled"
        collector = Collector(receiver)
        collector.wait(lambda got: len(got) >= len(sent))
        frames = collector.quiet(0.3)
    finally:
        sender.close(0)
        if collector is not None:
            collector.stop()
        receiver.close()
    assert slowest < bound
    assert by_sender(frames) == {5: sent}  # every accepted frame, whole and in order
    assert receiver.events["truncated"] <= refused  # a write cut short is counted, and was reported refused


# ---------------------------------------------------------------- close


def test_close_is_idempotent_on_both_ends_and_a_closed_sender_refuses(ends):
    sender = open_sender(ends.endpoint)
    send_all(sender, [numbered(1, 0)])
    assert by_sender(ends.collector.wait(lambda got: len(got) == 1)) == {1: [0]}
    sender.close()
    sender.close()
    assert sender.send(numbered(1, 1), 0.1) is False
    ends.collector.stop()
    ends.receiver.close()
    ends.receiver.close()


def test_a_sender_closed_before_it_ever_sent_closes_quietly(ends):
    sender = open_sender(ends.endpoint)
    sender.close()
    sender.close()


def test_the_receiver_can_be_rebound_on_the_same_endpoint_after_close(make_ends, kind):
    first = make_ends()
    if kind == "zmq-tcp":
        pytest.skip("port 0 picks a new port each time; rebinding a fixed port is the B3 test's business")
    first.collector.stop()
    first.receiver.close()
    second = open_receiver(first.endpoint, first.options)
    collector = Collector(second)
    try:
        sender = open_sender(second.endpoint)
        send_all(sender, [numbered(2, 0)])
        assert by_sender(collector.wait(lambda got: len(got) == 1)) == {2: [0]}
        sender.close()
    finally:
        collector.stop()
        second.close()


_CLOSER = textwrap.dedent(
    """
    import sys
    from mplog.transports import open_sender

    sender = open_sender(sys.argv[1])
    for index in range(int(sys.argv[2])):
        frame = b"S009:%08d:%07d:" % (index, 100) + (bytes(range(256)) * 2)[(9 + index) & 0xFF :][:100]
        while not sender.send(frame, 0.5):
            pass
    sender.close()  # with the default linger, then the process exits
    """
)


class SlowCollector(Collector):
    """A collector that takes ``delay`` seconds per frame: a listener behind its senders."""

    delay = 0.0002

    def _run(self) -> None:
        while not self._stop.is_set():
            received = self.receiver.recv(0.05)
            if received is not None:
                self.origins.append(received[1])
                self.frames.append(received[0])
                time.sleep(self.delay)


@pytest.mark.parametrize("rcvhwm", [2, 16])
def test_a_sender_that_closes_and_exits_while_its_receiver_is_behind_delivers_every_frame(kind, private_dir, rcvhwm):
    # The receiver's queue for the sender is full when the sender closes, with more of its
    # frames in the connection behind it. Over ipc://, libzmq used to drop those as soon as the
    # sender's socket closed: 2,584-2,815 of 3,000 arrived (docs/reliability.md, "A worker's
    # last records over ipc").
    options = TransportOptions(rcvhwm=rcvhwm)
    receiver = open_receiver(bind_address(kind, private_dir), options)
    collector = SlowCollector(receiver)
    count = 3000
    try:
        run = subprocess.run([sys.executable, "-c", _CLOSER, receiver.endpoint, str(count)], timeout=30, check=False)
        assert run.returncode == 0
        frames = collector.quiet(0.5)
    finally:
        collector.stop()
        receiver.close()
    assert by_sender(frames) == {9: list(range(count))}  # every frame, whole and in order


def test_closing_waits_for_a_receiver_that_stopped_reading_at_most_its_linger(kind, private_dir):
    options = TransportOptions(sndhwm=10, rcvhwm=10)
    receiver = open_receiver(bind_address(kind, private_dir), options)  # nobody reads it
    sender = open_sender(receiver.endpoint, options)
    try:
        refused = 0
        for index in range(3000):
            if not sender.send(numbered(6, index, 4096), 0.01):
                refused += 1
                if refused >= 3:
                    break
        assert refused >= 3, "the pipe never filled"
        started = time.monotonic()
        sender.close(0.5)
        assert time.monotonic() - started < 0.5 + (options.write_timeout if kind == "multiprocessing" else 0) + SLACK_S
    finally:
        sender.close(0)
        receiver.close()


# ---------------------------------------------------------------- fork


def _fork() -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+ warns about forking with threads
        return os.fork()


def test_a_sender_reopens_after_fork_and_the_parents_socket_keeps_working(ends):
    sender = open_sender(ends.endpoint)
    send_all(sender, [numbered(0, 0)])  # the parent's socket is open before the fork
    ends.collector.wait(lambda got: len(got) == 1)
    pid = _fork()
    if pid == 0:  # the child: the inherited sender must open its own socket
        code = 1
        try:
            send_all(sender, [numbered(1, i) for i in range(100)], deadline_s=10)
            sender.close()
            code = 0
        finally:
            os._exit(code)
    try:
        send_all(sender, [numbered(0, i) for i in range(1, 51)])  # while the child sends too
        ends.collector.wait(lambda got: len(got) == 151)
    finally:
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    send_all(sender, [numbered(0, 51)])  # after the child is gone
    frames = ends.collector.wait(lambda got: len(got) == 152)
    sender.close()
    assert by_sender(frames) == {0: list(range(52)), 1: list(range(100))}


# ---------------------------------------------------------------- SIGKILL of a sender

_STREAMER = textwrap.dedent(
    """
    import sys
    from mplog.transports import open_sender

    PATTERN = bytes(range(256)) * (4 * 1024 + 2)

    def numbered(sender_id, index, size):  # the same frames as numbered() in the test module
        offset = (sender_id + index) & 0xFF
        return b"S%03d:%08d:%07d:" % (sender_id, index, size) + PATTERN[offset : offset + size]

    sender = open_sender(sys.argv[1])
    size = int(sys.argv[2])
    i = 0
    while True:  # until SIGKILL
        if sender.send(numbered(7, i, size), 0.5):
            i += 1
    """
)


@pytest.mark.parametrize("size", [100, 256 * 1024])
def test_a_sender_killed_mid_stream_never_wedges_the_receiver_or_other_senders(ends, size):
    streamer = subprocess.Popen([sys.executable, "-c", _STREAMER, ends.endpoint, str(size)])
    survivors = [open_sender(ends.endpoint) for _ in range(2)]
    per_survivor = 400
    threads = [
        threading.Thread(target=send_all, args=(s, [numbered(n, i, 2000) for i in range(per_survivor)]))
        for n, s in enumerate(survivors)
    ]
    try:
        ends.collector.wait(lambda got: sum(f.startswith(b"S007") for f in got) >= 20)
        for thread in threads:
            thread.start()
        ends.collector.wait(lambda got: sum(not f.startswith(b"S007") for f in got) >= 20)
        streamer.send_signal(signal.SIGKILL)  # mid-stream: all three were sending flat out
        streamer.wait(10)
        for thread in threads:
            thread.join(30)
        ends.collector.wait(lambda got: sum(not f.startswith(b"S007") for f in got) == 2 * per_survivor)
        frames = ends.collector.quiet()
    finally:
        if streamer.poll() is None:
            streamer.kill()
            streamer.wait(10)
        for sender in survivors:
            sender.close()
    got = by_sender(frames)  # every frame intact (parse checks the content)
    assert got[0] == list(range(per_survivor))
    assert got[1] == list(range(per_survivor))
    killed = got[7]
    assert killed == list(range(len(killed)))  # a clean prefix: nothing missing in the middle
    assert set(ends.receiver.events) <= {"truncated"}  # a frame cut by the kill is counted, never delivered
    assert ends.receiver.events["truncated"] <= 1


def test_a_partial_frame_from_a_killed_writer_is_counted_as_truncated(make_ends, kind):
    if kind != "multiprocessing":
        pytest.skip("ZeroMQ delivers whole messages or nothing; there is no partial frame to count")
    ends = make_ends()
    path = ends.endpoint[len("mp://") :]
    # A writer that sends a length header and half the bytes, then dies with SIGKILL.
    script = textwrap.dedent(
        """
        import os, signal, struct, sys
        from multiprocessing.connection import Client
        conn = Client(sys.argv[1], family="AF_UNIX")
        os.write(conn.fileno(), struct.pack("!i", 10000) + b"x" * 5000)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    writer = subprocess.Popen([sys.executable, "-c", script, path])
    other = open_sender(ends.endpoint)
    try:
        assert writer.wait(10) == -signal.SIGKILL
        send_all(other, [numbered(3, i) for i in range(20)])
        ends.collector.wait(lambda got: len(got) == 20)
        frames = ends.collector.quiet(0.3)
    finally:
        other.close()
    assert by_sender(frames) == {3: list(range(20))}
    assert ends.receiver.events == {"truncated": 1}


# ---------------------------------------------------------------- oversized frames


def test_a_frame_over_max_frame_bytes_but_within_twice_reaches_the_decoder_and_costs_nothing_else(make_ends, kind):
    # The transport takes up to twice max_frame_bytes (transport_max_bytes): the decoder then
    # refuses such a frame, counts it and charges its sender, and the connection goes on.
    limit = 64 * 1024
    ends = make_ends(TransportOptions(max_frame_bytes=limit))
    sender = open_sender(ends.endpoint)
    try:
        big = numbered(4, 1, limit + 1024)
        assert limit < len(big) <= 2 * limit
        send_all(sender, [numbered(4, 0, 100), big, *(numbered(4, i, 100) for i in range(2, 40))])
        ends.collector.wait(lambda got: len(got) == 40)
        frames = ends.collector.quiet(0.3)
    finally:
        sender.close()
    assert by_sender(frames) == {4: list(range(40))}  # in order, nothing behind it lost
    assert sum(ends.receiver.events.values()) == 0


def test_a_frame_over_twice_max_frame_bytes_is_refused_and_later_frames_still_arrive(make_ends, kind):
    limit = 64 * 1024
    ends = make_ends(TransportOptions(max_frame_bytes=limit))
    sender = open_sender(ends.endpoint)
    try:
        send_all(sender, [numbered(4, 0, 100)])
        ends.collector.wait(lambda got: len(got) == 1)
        big = numbered(4, 1, 2 * limit)  # header + twice the limit: over what the transport takes
        assert len(big) > 2 * limit
        sender.send(big, 1.0)
        # A refused frame may cost the connection (ZeroMQ drops the peer); later frames retry until through.
        deadline = time.monotonic() + 20
        sent = []
        while not any(parse(f)[1] >= 2 for f in ends.collector.frames):
            assert time.monotonic() < deadline
            index = len(sent) + 2
            if sender.send(numbered(4, index, 100), 0.2):
                sent.append(index)
            time.sleep(0.05)  # the pace of the retries of this bounded loop
        frames = ends.collector.quiet()
    finally:
        sender.close()
    indexes = by_sender(frames)[4]
    assert 1 not in indexes  # the oversized frame never arrived
    assert all(len(f) <= 2 * limit for f in frames)
    assert indexes[0] == 0 and indexes[1:] == sorted(indexes[1:])
    # ZeroMQ may also lose frames queued behind the oversized one when it drops the connection
    # (1 of 2 here): the sender's sequence numbers make that a counted gap at the listener.
    assert set(indexes[1:]) <= set(sent)
    if kind == "multiprocessing":
        assert ends.receiver.events == {"oversized": 1}  # counted where the transport can see it
    else:
        # libzmq drops the peer inside its I/O thread (MAXMSGSIZE); the socket never reports it.
        assert sum(ends.receiver.events.values()) == 0


# ---------------------------------------------------------------- private binds (D2)


@pytest.mark.parametrize("umask", [0o000, 0o022])
@pytest.mark.parametrize("transport", ["zmq", "multiprocessing"])
def test_the_default_socket_lives_in_a_private_directory_whatever_the_umask(transport, umask):
    old = os.umask(umask)
    try:
        endpoint, directory = default_endpoint(transport)
        receiver = open_receiver(endpoint)
    finally:
        os.umask(old)
    try:
        path = endpoint.split("://", 1)[1]
        assert os.path.dirname(path) == directory
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0
    finally:
        receiver.close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("transport", ["ipc", "mp"])
def test_a_socket_in_a_new_directory_is_private_under_umask_000(private_dir, transport):
    path = os.path.join(private_dir, "new", "listener.sock")
    old = os.umask(0)
    try:
        receiver = open_receiver(f"{transport}://{path}")
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0
    finally:
        receiver.close()


@pytest.mark.parametrize("transport", ["ipc", "mp"])
def test_a_socket_in_a_directory_others_can_write_is_refused(private_dir, transport):
    shared = os.path.join(private_dir, "shared")
    os.mkdir(shared)
    os.chmod(shared, 0o777)
    with pytest.raises(ConfigError, match="writable by other users"):
        open_receiver(f"{transport}://{shared}/listener.sock")


@pytest.mark.parametrize("endpoint", ["tcp://0.0.0.0:0", "tcp://*:0", "tcp://0.0.0.0:*", "tcp://[::]:0"])
def test_a_plaintext_tcp_bind_beyond_loopback_needs_insecure_true(endpoint):
    with pytest.raises(ConfigError, match=r"without CURVE.*mplog\.insecure = true"):
        open_receiver(endpoint)
    if "[::]" in endpoint:
        return  # IPv6 may be off here; the refusal above is what matters
    receiver = open_receiver(endpoint, TransportOptions(insecure=True))
    try:
        assert receiver.endpoint.startswith("tcp://0.0.0.0:")
    finally:
        receiver.close()


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:0", "tcp://127.0.0.1:*", "tcp://localhost:0"])
def test_a_loopback_tcp_bind_needs_no_opt_in(endpoint):
    receiver = open_receiver(endpoint)
    try:
        assert receiver.endpoint.startswith("tcp://127.0.0.1:")
        assert not receiver.endpoint.endswith((":0", ":*"))
    finally:
        receiver.close()


# ---------------------------------------------------------------- ZeroMQ socket options (D5)


def _sender_socket(sender: Sender) -> zmq.Socket:
    sock = sender._sock  # type: ignore[attr-defined]  # opened on the first send
    assert isinstance(sock, zmq.Socket)
    return sock


@pytest.mark.parametrize(
    "options",
    [
        TransportOptions(),
        TransportOptions(sndhwm=7, rcvhwm=11, linger=0.25, max_frame_bytes=12345, heartbeat_ivl=0.5, stall_timeout=4.5),
    ],
    ids=["defaults", "configured"],
)
@pytest.mark.parametrize("scheme", ["ipc", "tcp"])
def test_zeromq_socket_options_read_back_as_documented(private_dir, scheme, options):
    address = f"ipc://{private_dir}/l.sock" if scheme == "ipc" else "tcp://127.0.0.1:0"
    receiver = open_receiver(address, options)
    sender = open_sender(receiver.endpoint, options)
    try:
        sender.send(b"open the socket", 0.5)
        push, pull = _sender_socket(sender), receiver.socket  # type: ignore[attr-defined]
        assert push.getsockopt(zmq.LINGER) == int(options.linger * 1000)
        assert push.getsockopt(zmq.SNDHWM) == options.sndhwm
        assert push.getsockopt(zmq.IMMEDIATE) == 1
        assert push.getsockopt(zmq.RECONNECT_IVL_MAX) == int(options.reconnect_ivl_max * 1000)
        # Twice the frame limit: the decoder refuses (and counts) a frame between the two.
        assert pull.getsockopt(zmq.MAXMSGSIZE) == 2 * options.max_frame_bytes
        # tcp: ZeroMQ counts messages, so as many frames of the largest valid size as fit in
        # max_queued_bytes, at most rcvhwm; ipc (this user's processes only): rcvhwm.
        expected = min(options.rcvhwm, max(1, options.max_queued_bytes // options.max_frame_bytes))
        assert expected == (8 if options.rcvhwm == 1000 else 11)
        assert pull.getsockopt(zmq.RCVHWM) == (expected if scheme == "tcp" else options.rcvhwm)
        assert pull.getsockopt(zmq.LINGER) == 0
        assert pull.getsockopt(zmq.HANDSHAKE_IVL) == int(options.handshake_ivl * 1000)
        # No ZMTP heartbeats either way: nothing but the worker writes on a data connection
        # (test_tcp_tail.py); on tcp the worker watches its peer with TCP keepalive, and with
        # TCP_MAXRT only when stall_timeout asks for it (a shut window would drop the connection).
        assert push.getsockopt(zmq.HEARTBEAT_IVL) == pull.getsockopt(zmq.HEARTBEAT_IVL) == 0
        if scheme == "tcp":
            interval = max(1, round(options.heartbeat_ivl))
            assert push.getsockopt(zmq.TCP_KEEPALIVE) == 1
            assert push.getsockopt(zmq.TCP_KEEPALIVE_IDLE) == push.getsockopt(zmq.TCP_KEEPALIVE_INTVL) == interval
            assert push.getsockopt(zmq.TCP_KEEPALIVE_CNT) == 2
            assert push.getsockopt(zmq.TCP_MAXRT) == int(options.stall_timeout * 1000)
            assert push.getsockopt(zmq.TCP_MAXRT) == (4500 if options.stall_timeout else 0)
            assert pull.getsockopt(zmq.TCP_KEEPALIVE) == 1
            assert pull.getsockopt(zmq.TCP_KEEPALIVE_IDLE) == COLLECTOR_KEEPALIVE[0] == 300
        else:
            assert push.getsockopt(zmq.TCP_MAXRT) == 0
    finally:
        sender.close()
        receiver.close()


def test_documented_transport_defaults():
    options = TransportOptions()
    assert (options.max_frame_bytes, options.sndhwm, options.rcvhwm) == (4 * 1024 * 1024, 8, 1000)
    assert options.max_queued_bytes == 32 * 1024 * 1024
    assert (options.linger, options.write_timeout, options.handshake_ivl) == (1.0, 1.0, 30.0)
    assert (options.heartbeat_ivl, options.heartbeat_timeout, options.reconnect_ivl_max) == (1.0, 3.0, 2.0)
    assert options.stall_timeout == 0.0  # no TCP_MAXRT: a slow collector's shut window keeps its connections
    assert options.insecure is False


def test_a_sender_refused_thousands_of_times_still_reconnects_and_closes(monkeypatch):
    # libzmq sends its monitor events with a blocking send: a sender that stopped reading them
    # after the first refusal had its I/O thread stop once ~1,000 more were queued (no reconnection
    # any more, so a collector that later admitted it was never reached) and close() wait for it for
    # ever. At the default intervals that took about an hour of refusals; here a peer that accepts
    # and drops every connection at once, retried every millisecond, gets there in seconds.
    from mplog.transports import zeromq as zeromq_transport

    monkeypatch.setattr(zeromq_transport, "_RECONNECT_IVL_MS", 1)
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(512)
    server.settimeout(0.2)
    accepted = [0]
    stop = threading.Event()

    def drop_every_connection() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.close()
            accepted[0] += 1

    dropper = threading.Thread(target=drop_every_connection, daemon=True)
    dropper.start()
    sender = ZmqSender(f"tcp://127.0.0.1:{server.getsockname()[1]}", TransportOptions(reconnect_ivl_max=0.001))
    try:
        assert sender.send(b"frame") is False  # opens the socket; nothing admits it
        # The worker's flusher thread reads the monitor like this while frames wait.
        wait_for(lambda: sender.refusal() is not None and accepted[0] > 3000, timeout=60, interval=0.02)
        assert "refused this worker's handshake" in (sender.refusal() or "")
        closer = threading.Thread(target=sender.close, args=(0.0,), daemon=True)
        closer.start()
        closer.join(10)
        assert not closer.is_alive(), "close() hung on the monitor"
    finally:
        stop.set()
        dropper.join(5)
        server.close()
