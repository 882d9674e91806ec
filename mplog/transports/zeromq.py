"""ZeroMQ transport: workers PUSH, the listener PULLs (ipc:// by default, tcp:// across hosts).

libzmq's defaults do not fit a logging path, so every one that matters is set here:
LINGER is bounded (an unbounded linger hangs exit when the listener is gone), sends
never block (NOBLOCK, with a bounded poll for the ``block`` policy), IMMEDIATE=1 so
frames are refused (and counted) rather than queued to an absent peer, and
MAXMSGSIZE on the listener is twice the frame limit (the decoder refuses, and counts,
what lies between).

On ``tcp://`` nothing but the worker writes on a data connection once it is open: no
ZMTP heartbeats either way. A byte that the listener writes after a worker closed is
answered with a reset, and the reset discards what the listener had not read yet: the
worker's last records and its goodbye (and libzmq 4.3.5 aborts the listener when a
reset meets a full receive pipe with a heartbeat timer armed). The worker watches a quiet
connection with TCP keepalive probes instead, whose answers are bare ACKs. ``TCP_MAXRT``
only with ``stall_timeout`` (off by default: Linux drops a connection whose peer keeps its
receive window shut that long, which is what a slow collector does); a worker that set it
clears it on its connections when it closes, so that the kernel goes on delivering what it
took after the process is gone. The listener reaps dead peers with keepalive probes after
``COLLECTOR_KEEPALIVE`` seconds of silence.
See docs/reliability.md ("A worker's last records over tcp").
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import signal
import socket
import struct
import sys
import termios
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import zmq
from zmq.utils.monitor import parse_monitor_message

from mplog.exceptions import TransportError
from mplog.transports import curve as security
from mplog.transports.base import (
    ASYNC_SIGNALS,
    NO_ORIGIN,
    Origin,
    TransportOptions,
    check_bind_address,
    check_socket_dir,
    endpoint_problem,
    ensure_private_dir,
    receive_hwm,
    transport_max_bytes,
)
from mplog.transports.claim import SocketClaim, claim_socket_path

__all__ = ["BoundReceiver", "ZmqReceiver", "ZmqSender", "bind_private_ipc"]

# Sockets and contexts inherited across fork are never touched again in the child:
# closing or terminating them there could hang on state owned by the parent's threads.
_abandoned: list[Any] = []

# The listener's TCP keepalive on data connections (idle seconds, probe interval, probes):
# it reaps the connections of hosts that vanished. The idle time is well past the 60 s a
# closed worker's connection lingers in FIN_WAIT_2 on Linux: a probe that found it gone
# would be answered with a reset, which discards whatever the listener had not read yet.
COLLECTOR_KEEPALIVE = (300, 30, 4)


def _split(endpoint: str) -> list[str]:
    return [part.strip() for part in endpoint.split(",") if part.strip()]


def bind_private_ipc(sock: zmq.Socket[Any], endpoint: str) -> SocketClaim:
    """Bind ``ipc://PATH`` so that only this user can connect, and only if no live listener serves PATH.

    The directory must be private (0700) and the socket file is created under umask 077,
    then set to 0600 explicitly (whatever the caller's umask). The path is claimed first
    (mplog.transports.claim): libzmq would replace a live listener's socket file.

    Returns:
        The claim; release it after the socket is closed (it unlinks only the file this bind created).

    Raises:
        TransportError: a live listener (or another program) serves PATH.
    """
    path = endpoint[len("ipc://") :]
    ensure_private_dir(path)
    claim = claim_socket_path(path, endpoint)
    try:
        old_umask = os.umask(0o077)
        try:
            sock.bind(endpoint)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        claim.bound()
    except BaseException:
        claim.release()
        raise
    return claim


class ZmqSender:
    """A PUSH socket per process; reopened (never shared) after fork."""

    socket_type = zmq.PUSH

    role = "worker"  # who the refusal line names ("relay" for mplog relay's sender)

    def __init__(self, endpoint: str, options: TransportOptions) -> None:
        check_socket_dir(endpoint)  # a socket in another user's directory may be theirs (docs/security.md)
        self.endpoint = endpoint
        self._endpoints = _split(endpoint)
        self._options = options
        # Keys are resolved here so that a bad key fails setup_worker(), not a later send;
        # the environment's keys apply only where every endpoint is tcp://.
        self._curve = security.client_keys(
            options.curve_server_key,
            options.curve_secret_key,
            options.curve_public_key,
            use_env=all(e.startswith("tcp://") for e in self._endpoints),
        )
        self._pid = -1
        self._ctx: zmq.Context[Any] | None = None
        self._sock: zmq.Socket[Any] | None = None
        self._closed = False
        # A refused handshake, and a connection ended in its handshake because the two ends'
        # sockets do not match, are seen only by a socket monitor: read off the logging call's
        # path (refusal(): from the flusher thread, with a frame's send at most every
        # _DRAIN_EVERY seconds, and at close), said once.
        self._monitor: zmq.Socket[Any] | None = None
        self._monitor_lock = threading.Lock()
        self._refusal: str | None = None
        self._greeted: set[str] = set()  # endpoints whose current connection completed its handshake
        self._stranded: dict[str, float] = {}  # endpoint -> when to connect it again (see _note)
        self._failed: dict[str, Mapping[str, Any]] = {}  # endpoint -> its connection's failed handshake
        self._broken: dict[str, int] = {}  # endpoint -> handshakes broken in a row (NO_DETAIL)
        self._drained_at = 0.0
        self._keys = _describe_keys(options, use_env=all(e.startswith("tcp://") for e in self._endpoints))
        self._tcp_ports = {_port_of(e) for e in self._endpoints if e.startswith("tcp://")} - {0}
        self._max_rt = 0  # TCP_MAXRT (ms) of this sender's connections; 0: not set
        self._foreign: set[int] = set()  # sockets this process held before this sender opened (inherited ones)
        # How this sender's ipc connections name their peer: the path as given, and as absolute.
        ipc = [e[len("ipc://") :] for e in self._endpoints if e.startswith("ipc://")]
        self._ipc_paths = set(ipc) | {os.path.abspath(path) for path in ipc if not path.startswith("@")}

    def _watch_peer(self, sock: zmq.Socket[Any]) -> None:
        """Notice a dead or unreachable peer without provoking traffic from it (see the module docstring).

        Keepalive probes go out after ``heartbeat_ivl`` seconds of quiet, so a quiet
        connection to a vanished peer is dropped in about ``heartbeat_timeout`` seconds.
        ``TCP_MAXRT`` only when ``stall_timeout`` asks for it: Linux applies it to a
        receive window kept shut as much as to data that goes unanswered, so it drops the
        connections of a collector that is merely slow or paused, and with them what the
        kernel held (docs/reliability.md, "A worker's last records over tcp").
        """
        opts = self._options
        if opts.heartbeat_ivl > 0 and opts.heartbeat_timeout > 0:
            interval = max(1, round(opts.heartbeat_ivl))
            sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
            sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, interval)
            sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, interval)
            sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, max(1, math.ceil((opts.heartbeat_timeout - interval) / interval)))
        if opts.stall_timeout > 0:
            self._max_rt = max(1, int(opts.stall_timeout * 1000))
            sock.setsockopt(zmq.TCP_MAXRT, self._max_rt)

    def _open(self) -> zmq.Socket[Any]:
        if self._sock is not None:  # inherited from the parent by fork
            _abandoned.append((self._ctx, self._sock, self._monitor))
            self._monitor, self._refusal = None, None
            self._greeted, self._stranded, self._failed, self._broken = set(), {}, {}, {}
        opts = self._options
        try:
            ctx: zmq.Context[Any] = zmq.Context(io_threads=1)
            sock: zmq.Socket[Any] = ctx.socket(self.socket_type)
            sock.setsockopt(zmq.LINGER, int(opts.linger * 1000))
            sock.setsockopt(zmq.SNDHWM, opts.sndhwm)
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.setsockopt(zmq.RECONNECT_IVL, _RECONNECT_IVL_MS)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, int(opts.reconnect_ivl_max * 1000))
            if self._tcp_ports or self._ipc_paths:
                # Whatever this process holds now is not this sender's (a parent's connection,
                # inherited by fork): its close leaves those alone, whatever the heartbeat.
                self._foreign = {inode for _, inode in _socket_fds()}
            if self._tcp_ports:
                self._watch_peer(sock)
            if self._curve is not None:
                security.configure_client(sock, self._curve)
            self._monitor = sock.get_monitor_socket(_WATCHED)
            for endpoint in self._endpoints:
                sock.connect(endpoint)
        except zmq.ZMQError as exc:
            raise TransportError(f"cannot connect to {self.endpoint!r}: {exc}") from exc
        self._ctx, self._sock, self._pid = ctx, sock, os.getpid()
        return sock

    def refusal(self) -> str | None:
        """The first refused handshake, as a sentence naming the endpoint and the cause (None: none seen).

        Reads every event the socket monitor holds, without waiting; thread-safe; nothing
        to read after close. Every event is read, not only up to the first refusal: libzmq
        sends monitor events with a blocking send, so once about 1,000 unread ones filled
        the monitor's queue its I/O thread stopped (no reconnection any more) and closing
        the monitor at exit waited for it for ever (see
        test_a_sender_refused_thousands_of_times_still_reconnects_and_closes).
        """
        with self._monitor_lock:
            monitor = self._monitor
            if monitor is not None and self._pid == os.getpid():
                self._drained_at = time.monotonic()
                try:
                    while True:
                        self._note(parse_monitor_message(monitor.recv_multipart(zmq.NOBLOCK)))
                except (zmq.Again, zmq.ZMQError):
                    pass
            return self._refusal

    def _note(self, event: Mapping[str, Any]) -> None:
        """Take one monitor event (under ``_monitor_lock``).

        How a connection that never completed its handshake ended decides what follows:

        - a refused handshake (HANDSHAKE_FAILED_AUTH: a key not allowed in;
          HANDSHAKE_FAILED_PROTOCOL: CURVE on one side only, a wrong mechanism), or no
          handshake event at all (a protocol error libzmq does not report: in practice the
          two ends' socket types do not match, an acknowledging listener and a worker
          without acknowledged delivery, or the reverse). libzmq then never connects to
          that endpoint again, so a worker whose collector was restarted with its key
          allowed, or in the right mode, stayed cut off until it exited: the endpoint is
          connected again ``reconnect_ivl_max`` seconds later, with the next frame's send;
        - HANDSHAKE_FAILED_NO_DETAIL: the connection broke during the handshake (the
          collector died or closed it; a wrong server key looks like this too). libzmq
          connects again by itself; it is said only after _SAID_AFTER of them in a row,
          since one is what a collector killed at that moment gives.
        """
        kind = event["event"]
        endpoint = event.get("endpoint", b"").decode(errors="replace")
        if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._greeted.add(endpoint)
            self._stranded.pop(endpoint, None)
            self._broken.pop(endpoint, None)
            return
        if kind != zmq.EVENT_DISCONNECTED:  # a failed handshake; its connection's end follows
            self._failed[endpoint] = event
            return
        if endpoint in self._greeted:
            self._greeted.discard(endpoint)
            return
        failure = self._failed.pop(endpoint, None)
        if failure is not None and failure["event"] == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            self._broken[endpoint] = times = self._broken.get(endpoint, 0) + 1
            if times >= _SAID_AFTER and self._refusal is None:
                self._refusal = _refusal_text(failure, self._keys, self._curve, self.role)
            return
        if endpoint in self._endpoints:
            self._stranded[endpoint] = time.monotonic() + self._options.reconnect_ivl_max
        if self._refusal is None:
            self._refusal = (
                _mismatch_text(endpoint, self.socket_type, self.role, self._options.reconnect_ivl_max)
                if failure is None
                else _refusal_text(failure, self._keys, self._curve, self.role)
            )

    def _rejoin(self, sock: zmq.Socket[Any]) -> None:
        """Connect again the endpoints libzmq gave up after a refused or mismatched handshake, when due (see _note)."""
        now = time.monotonic()
        with self._monitor_lock:
            due = [endpoint for endpoint, at in self._stranded.items() if at <= now]
            for endpoint in due:
                del self._stranded[endpoint]
        for endpoint in due:
            with contextlib.suppress(zmq.ZMQError):
                sock.disconnect(endpoint)
            with contextlib.suppress(zmq.ZMQError):
                sock.connect(endpoint)

    def _close_monitor(self) -> None:
        self.refusal()  # what it saw before the socket goes
        with self._monitor_lock:
            monitor, self._monitor = self._monitor, None
            if monitor is not None and self._sock is not None:
                with contextlib.suppress(zmq.ZMQError):
                    self._sock.disable_monitor()
                monitor.close(linger=0)  # before the context terminates, which it would block

    def send(self, frame: bytes, timeout: float = 0.0) -> bool:
        if self._closed:
            return False
        sock = self._sock if self._pid == os.getpid() else self._open()
        assert sock is not None
        if time.monotonic() - self._drained_at >= _DRAIN_EVERY:
            self.refusal()  # keeps the monitor's queue short (see refusal())
        if self._stranded:
            self._rejoin(sock)
        try:
            sock.send(frame, zmq.NOBLOCK)
            return True
        except zmq.Again:
            if timeout <= 0 or not sock.poll(int(timeout * 1000), zmq.POLLOUT):
                return False
            try:
                sock.send(frame, zmq.NOBLOCK)
                return True
            except zmq.Again:
                return False
        except zmq.ZMQError as exc:
            raise TransportError(f"send to {self.endpoint!r} failed: {exc}") from exc

    def close(self, linger: float | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        if self._sock is None or self._pid != os.getpid():
            return
        linger_ms = int((self._options.linger if linger is None else linger) * 1000)
        if self._max_rt:
            # What the kernel took must outlive this process: a listener that reads nothing
            # for TCP_MAXRT would otherwise have the connection, and the tail it had not yet
            # taken in, dropped (see test_tcp_tail.py).
            _clear_max_rt(self._tcp_ports, self._max_rt, self._foreign)
        # A signal caught during zmq_ctx_term() ends it early with EINTR, which pyzmq
        # ignores: frames still queued were lost when SIGTERM then ended the process.
        # Hold signals back until the linger is over; they are delivered right after
        # (see test_sigterm_during_close_neither_duplicates_nor_loses).
        self._close_monitor()
        deadline = time.monotonic() + linger_ms / 1000
        # ipc://: libzmq closes a connection as soon as it has written its last frame, and the
        # listener's libzmq, if its queue for this peer is full at that moment, discards what
        # it had not read from the connection yet (docs/reliability.md, "A worker's last records
        # over ipc"). A duplicate of each connection's descriptor keeps it open until the
        # listener has read every byte (or the linger is over).
        # (Signals are held from here: one raised while the duplicates are made would leave them open.)
        held = signal.pthread_sigmask(signal.SIG_BLOCK, ASYNC_SIGNALS)
        kept: list[int] = []
        try:
            if self._ipc_paths and linger_ms > 0:
                kept = _keep_ipc_connections(self._ipc_paths, self._foreign)
            self._sock.close(linger=linger_ms)
            assert self._ctx is not None
            self._ctx.term()
        except zmq.ZMQError:
            pass
        finally:
            try:
                _wait_until_read(kept, deadline)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)


_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
# What a sender's monitor reports: two events per connection (its handshake's outcome, its end).
_WATCHED = _HANDSHAKE_FAILED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
_RECONNECT_IVL_MS = 100  # ZeroMQ RECONNECT_IVL of a sender: the first retry; it backs off to reconnect_ivl_max
_SAID_AFTER = 3  # handshakes broken in a row (HANDSHAKE_FAILED_NO_DETAIL) before a sender says so
_DRAIN_EVERY = 1.0  # seconds: a sender reads its monitor with a frame's send at most this often


def _mismatch_text(endpoint: str, socket_type: int, role: str, every: float) -> str:
    """The line a sender says once when the collector ended its connection in the handshake (see ZmqSender._note)."""
    head = (
        f"mplog: the collector at {endpoint or '?'} ended this {role}'s connection during the ZeroMQ handshake "
        "without refusing a key: the two ends' sockets do not match. "
    )
    if socket_type == zmq.DEALER:
        cause = (
            "This worker uses acknowledged delivery (ack=True or MPLOG_ACK=1) and the collector probably does "
            "not: a listener without ack = true, or an mplog relay, which cannot carry it. Start that listener "
            "with ack = true and connect the worker to it directly, or start the worker without ack"
        )
    elif role == "relay":
        cause = (
            "The collector probably uses acknowledged delivery (ack = true), which a relay cannot carry: connect "
            "the workers straight to it with ack=True or MPLOG_ACK=1, or run it without ack"
        )
    else:
        cause = (
            "The collector probably uses acknowledged delivery (ack = true) and this worker does not: give the "
            "worker ack=True or MPLOG_ACK=1 (the workers that listener starts get it), or run the listener "
            "without ack. (Or the endpoint is a listener's status channel, PORT+1 or PATH.ctl: give the data "
            "endpoint)"
        )
    return f"{head}{cause}; this {role} connects again every {every:g} s, and what it sends waits meanwhile"


def _describe_keys(options: TransportOptions, *, use_env: bool) -> tuple[str, str]:
    """Where a sender's CURVE keys come from, in words: (its key pair, the collector's public key).

    Paths and variable names only: a secret key given as text is never repeated.
    """
    env = os.environ if use_env else {}
    server = options.curve_server_key or env.get(security.ENV_SERVER_KEY, "")
    secret = options.curve_secret_key or (env.get(security.ENV_CLIENT_SECRET_KEY, "") if server else "")
    if not secret:
        pair = (
            "a key pair made for this process (no curve_secret_key or MPLOG_CLIENT_SECRET_KEY), "
            "which only an allow_any collector admits"
        )
    elif os.path.isfile(secret):
        pair = f"key file {secret}"
    else:
        pair = "a secret key given as text (curve_secret_key)"
    if not server:
        collector = "no server key"
    elif os.path.isfile(server):
        collector = f"the collector's public key from {server}"
    else:
        collector = "the collector's public key given as text (curve_server_key)"
    return pair, collector


def _refusal_text(event: Any, keys: tuple[str, str], curve: security.ClientKeys | None, role: str = "worker") -> str:
    """The line a sender (``role``: "worker" or "relay") says once about a refused handshake."""
    pair, collector = keys
    where = f"the collector at {event.get('endpoint', b'').decode(errors='replace') or '?'}"
    kind, value = event["event"], event.get("value", 0)
    if curve is None:  # a mechanism mismatch, or handshakes broken _SAID_AFTER times in a row
        fix = (
            "give it --server-key and a --client-secret-key whose .key file the collector admits"
            if role == "relay"
            else "give it curve_server_key (or MPLOG_SERVER_KEY) and a key pair the collector admits"
        )
        return (
            f"mplog: {where} refused this {role}'s handshake ({zmq.Event(kind).name}): it probably requires "
            f"CURVE, and this {role} has {collector}; {fix}"
        )
    me = f"this {role} used {pair}, public key {curve.pair.public}"
    if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return (
            f"mplog: {where} refused this {role}'s CURVE handshake: its key is not allowed in (status {value}); "
            f"{me}: add that public key's .key file to the collector's authorized_keys"
        )
    return (
        f"mplog: the CURVE handshake with {where} failed ({zmq.Event(kind).name}): {collector} is not that "
        f"collector's, or it does not speak CURVE; {me}"
    )


def _port_of(endpoint: str) -> int:
    """The port of a ``tcp://[SOURCE;]HOST:PORT`` endpoint (0 when it has none, e.g. a wildcard)."""
    try:
        return urlsplit("tcp://" + endpoint[len("tcp://") :].rsplit(";", 1)[-1]).port or 0
    except ValueError:
        return 0


_ANY_PORT_TRIES = 16


def _loopback_port_free(port: int) -> bool:
    """Whether a listening socket could bind ``127.0.0.1:port`` now (with SO_REUSEADDR, as libzmq binds)."""
    if not 0 < port <= 65535:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _socket_fds() -> list[tuple[int, int]]:
    """``(fd, inode)`` of every socket this process holds (empty where /proc is not there)."""
    found = []
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return []
    for name in names:
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # closed meanwhile (the listing's own descriptor, say)
            continue
        if target.startswith("socket:["):
            found.append((int(name), int(target[8:-1])))
    return found


def _sockets_opened_since(foreign: set[int]) -> Iterator[tuple[int, socket.socket]]:
    """``(fd, socket)`` for each socket this process holds that is not one of ``foreign`` (inodes).

    libzmq offers no handle on a connection, so a sender finds its own among the process's
    sockets. Each socket object only lends its descriptor for the loop's body: it is detached
    afterwards, and the descriptor stays libzmq's.
    """
    for fd, inode in _socket_fds():
        if inode in foreign:
            continue
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            continue
        try:
            yield fd, sock
        finally:
            sock.detach()


def _keep_ipc_connections(paths: set[str], foreign: set[int]) -> list[int]:
    """Duplicates of this sender's ipc connections' descriptors (:func:`_sockets_opened_since`).

    A connection is a Unix stream socket whose peer is one of ``paths`` and which this
    process did not hold before the sender opened (``foreign``). The peer is named by the
    path the listener bound, which need not be spelled as the sender's endpoint (a symlinked
    directory, a relative path): a peer whose path is the same file as one of ``paths`` is
    one of them too.
    """
    files = set()
    for path in paths:
        if not path.startswith("@"):
            with contextlib.suppress(OSError):
                files.add(_file_id(path))
    kept = []
    for fd, sock in _sockets_opened_since(foreign):
        with contextlib.suppress(OSError):  # gone meanwhile, or not connected
            if sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM and _is_peer(sock, paths, files):
                kept.append(os.dup(fd))
    return kept


def _file_id(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _is_peer(sock: socket.socket, paths: set[str], files: set[tuple[int, int]]) -> bool:
    """Whether ``sock``'s peer is bound at one of ``paths`` (by name, or as the same file: ``files``)."""
    peer = _peer_path(sock)
    if peer in paths:
        return True
    if not files or not peer or peer.startswith("@"):
        return False
    candidates = [peer]
    if not os.path.isabs(peer):  # the listener's, from its working directory (SO_PEERCRED names the listener)
        pid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[0]
        candidates.insert(0, f"/proc/{pid}/cwd/{peer}")
    for candidate in candidates:
        with contextlib.suppress(OSError):
            return _file_id(candidate) in files
    return False


def _peer_path(sock: socket.socket) -> str:
    peer = sock.getpeername()
    if isinstance(peer, bytes):  # an abstract address (ipc://@NAME)
        return "@" + peer[1:].decode(errors="replace") if peer[:1] == b"\0" else peer.decode(errors="replace")
    return str(peer)


def _unread_bytes(fd: int) -> int:
    """Bytes this end of a Unix stream socket sent that the peer has not read yet (``SIOCOUTQ``)."""
    return int.from_bytes(fcntl.ioctl(fd, termios.TIOCOUTQ, bytes(4)), sys.byteorder, signed=True)


def _wait_until_read(fds: list[int], deadline: float) -> None:
    """Close each of ``fds`` once its peer has read everything sent on it, or at ``deadline``."""
    pause = 0.001
    waiting = list(fds)
    try:
        while waiting:
            for fd in list(waiting):
                try:
                    unread = _unread_bytes(fd)
                except OSError:
                    unread = 0
                if unread <= 0:
                    waiting.remove(fd)
                    os.close(fd)
            now = time.monotonic()
            if not waiting or now >= deadline:
                return
            time.sleep(min(pause, deadline - now))
            pause = min(pause * 2, 0.02)
    finally:
        for fd in waiting:
            with contextlib.suppress(OSError):
                os.close(fd)


def _clear_max_rt(ports: set[int], max_rt: int, foreign: set[int]) -> int:
    """Clear ``TCP_USER_TIMEOUT`` on this sender's connections; return how many.

    libzmq offers no handle on a connection, so they are found among the process's
    sockets: TCP, connected to one of ``ports``, carrying this sender's ``max_rt``, and not
    held before the sender opened (``foreign``: a forked child must leave its parent's
    connection as it is).
    """
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if option is None:  # not Linux: libzmq does not set TCP_MAXRT there either
        return 0
    cleared = 0
    for _, sock in _sockets_opened_since(foreign):
        with contextlib.suppress(OSError):  # gone meanwhile, or not connected
            if (
                sock.type == socket.SOCK_STREAM
                and sock.family in (socket.AF_INET, socket.AF_INET6)
                and sock.getsockopt(socket.IPPROTO_TCP, option) == max_rt
                and sock.getpeername()[1] in ports
            ):
                sock.setsockopt(socket.IPPROTO_TCP, option, 0)
                cleared += 1
    return cleared


class BoundReceiver:
    """What the listener's receiving sockets share: binding, CURVE, the ZAP gatekeeper, connection counts.

    Subclasses name the ``socket_type`` and read one frame in :meth:`_take`. Endpoints
    are checked before any socket exists: a plaintext bind beyond loopback is refused
    unless CURVE is configured (``options.curve_secret_key``) or ``options.insecure``.
    """

    socket_type = zmq.PULL

    def __init__(self, endpoint: str, options: TransportOptions, *, secure: bool = False) -> None:
        self.events: Counter[str] = Counter()
        self._origin = NO_ORIGIN  # the last origin made: frames in a row from one peer share it
        self._options = options
        self._claims: list[SocketClaim] = []  # one per ipc:// path bound (mplog.transports.claim)
        self._gatekeeper: security.Gatekeeper | None = None
        keys = _server_keys(options)
        self._curve = keys is not None
        parts = _split(endpoint)
        for part in parts:
            problem = endpoint_problem(part)
            if problem is not None:
                raise TransportError(f"cannot bind {part!r}: {problem}")
            if not part.startswith("ipc://"):
                check_bind_address(part, secure=secure or self._curve, insecure_ok=options.insecure)
        self._ctx: zmq.Context[Any] = zmq.Context(io_threads=1)
        self._sock = self._ctx.socket(self.socket_type)
        self._network = any(part.startswith("tcp://") for part in parts)
        try:
            self._set_options(self._sock)
            if keys is not None:
                security.configure_server(self._sock, keys)
            # Before any bind: every handshake finds the ZAP handler, every refusal is counted.
            self._gatekeeper = security.Gatekeeper(self._ctx, self._sock, keys)
            for part in parts:
                self._bind(part)
        except zmq.ZMQError as exc:
            self.close()
            raise TransportError(f"cannot bind {endpoint!r}: {exc}") from exc
        except Exception:
            self.close()
            raise
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def _set_options(self, sock: zmq.Socket[Any]) -> None:
        options = self._options
        sock.setsockopt(zmq.LINGER, 0)
        # tcp://: frames queued per connection bounded in bytes (max_queued_bytes). ipc:// (this
        # user's own processes only) keeps rcvhwm frames: libzmq drops what an ipc peer sent
        # last when it closes while its queue here is full (measured: 53 of 100 frames lost
        # with RCVHWM 2, none with 1000; docs/reliability.md), and a small queue is full often.
        sock.setsockopt(zmq.RCVHWM, receive_hwm(options) if self._network else options.rcvhwm)
        # Twice the frame limit: a frame a little over it reaches the decoder, which counts it
        # and charges its sender; libzmq would drop the connection and the frames behind it.
        sock.setsockopt(zmq.MAXMSGSIZE, transport_max_bytes(options))
        sock.setsockopt(zmq.HANDSHAKE_IVL, int(options.handshake_ivl * 1000))

    @property
    def socket(self) -> zmq.Socket[Any]:
        """The bound socket (for options set by the caller)."""
        return self._sock

    @property
    def connections(self) -> Counter[str]:
        """Connection events: handshakes, refused_auth, refused_protocol, refused_other, disconnected."""
        return Counter(self._gatekeeper.counts) if self._gatekeeper is not None else Counter()

    def _bind(self, endpoint: str) -> None:
        if endpoint.startswith("ipc://"):
            self._claims.append(bind_private_ipc(self._sock, endpoint))
            return
        if endpoint.startswith("tcp://"):
            # No ZMTP heartbeats: the listener never writes first (see the module docstring).
            idle, interval, probes = COLLECTOR_KEEPALIVE
            self._sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
            self._sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, idle)
            self._sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, interval)
            self._sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, probes)
            if endpoint.rsplit(":", 1)[-1] in {"0", "*"}:  # a port the system picks
                self._bind_any_port(endpoint)
                return
        self._sock.bind(endpoint)

    def _bind_any_port(self, endpoint: str) -> None:
        """Bind a port the system picks, one whose PORT+1 is free on loopback too.

        A listener's status channel takes ``127.0.0.1:PORT+1`` (mplog.control). A port picked
        blindly finds PORT+1 taken now and then, by another program or by the local end of an
        outgoing connection (Linux hands bind(0) odd ports and connect() even ones), and that
        listener then has no status channel: so try a few ports before settling for one.
        """
        refused: list[str] = []  # kept bound until the end, or the system hands out the same port again
        try:
            for _ in range(_ANY_PORT_TRIES):
                try:
                    self._sock.bind(endpoint)
                except zmq.ZMQError:
                    if not refused:
                        raise
                    break  # no port left to try: settle for one refused
                bound = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
                if _loopback_port_free(_port_of(bound) + 1):
                    return
                refused.append(bound)
            self._sock.unbind(refused.pop())  # the status channel then says on stderr why it has no port
            self._sock.bind(endpoint)
        finally:
            for bound in refused:
                self._sock.unbind(bound)

    def _take(self) -> tuple[bytes, Origin] | None:
        """Read one frame and its origin without waiting (raises zmq.Again when there is none)."""
        raise NotImplementedError

    def _origin_of(self, connection: bytes, message: zmq.Frame | None) -> Origin:
        """The origin of a frame read on ``connection``; under CURVE, with the key ``message``'s handshake proved."""
        key = str(message.get("User-Id")) if message is not None else ""
        origin = self._origin
        if origin.connection != connection or origin.peer_key != key:
            origin = self._origin = Origin(connection, key)
        return origin

    def connected(self, connection: bytes) -> bool:
        """PULL merges its connections: no connection is ever named, so none is open."""
        return False

    def recv(self, timeout: float) -> tuple[bytes, Origin] | None:
        # Reading ZMQ_EVENTS makes libzmq process its pending commands, among them "this
        # connection has messages again". A socket that always has a message waiting
        # does so only every 100 messages (libzmq's inbound_poll_rate): a sender flooding
        # large frames then held every other sender's frames back for 100 of its own
        # (0.6 s in test_200000_logger_names_leave_no_listener_state_behind). One call per frame.
        self._sock.getsockopt(zmq.EVENTS)
        try:
            return self._take()
        except zmq.Again:
            pass
        if not self._sock.poll(int(timeout * 1000), zmq.POLLIN):
            return None
        try:
            return self._take()
        except zmq.Again:
            return None

    def close(self) -> None:
        if self._sock.closed:
            return
        if self._gatekeeper is not None:
            self._gatekeeper.close()
        self._sock.close(linger=0)
        self._ctx.term()
        for claim in self._claims:  # after the socket is gone: unlinks only the files this receiver created
            claim.release()


def _server_keys(options: TransportOptions) -> security.ServerKeys | None:
    """The CURVE server keys the options name (None: plaintext); a bad key file raises ConfigError."""
    if not options.curve_secret_key:
        return None
    curve = {
        "server_secret_key": options.curve_secret_key,
        "authorized_keys": options.curve_authorized_keys,
        "allow_any": options.curve_allow_any,
    }
    return security.server_keys(curve, "curve")


class ZmqReceiver(BoundReceiver):
    """The listener's PULL socket."""

    socket_type = zmq.PULL

    def _take(self) -> tuple[bytes, Origin] | None:
        if self._curve:  # read without copying, for the client key the handshake proved
            message = self._sock.recv(zmq.NOBLOCK, copy=False)
            return message.bytes, self._origin_of(b"", message)
        data: bytes = self._sock.recv(zmq.NOBLOCK)
        return data, NO_ORIGIN
