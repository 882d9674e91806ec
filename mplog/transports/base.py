"""The transport seam: Sender and Receiver protocols, their options, endpoint helpers.

A transport moves opaque ``bytes``. It imports neither the codec nor ``logging``.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import pwd
import signal
import socket
import stat
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, runtime_checkable
from urllib.parse import urlsplit

from mplog.exceptions import ConfigError, TransportError

__all__ = [
    "NO_ORIGIN",
    "Origin",
    "Receiver",
    "Sender",
    "TransportOptions",
    "check_bind_address",
    "check_private_dir",
    "check_socket_dir",
    "default_collector_endpoint",
    "endpoint_problem",
    "ensure_private_dir",
    "foreign_dir_problem",
    "local_collector",
    "make_private_dir",
    "receive_hwm",
    "transport_max_bytes",
]

# The signals mplog holds back where one must not land: on its own threads (a worker's
# flusher, SIGTERM watcher and acknowledgement reader), so that a signal sent to the process reaches the main
# thread (delivered to one of those, a SIGTERM never interrupts a main thread blocked in
# a lock), and while ZeroMQ's context terminates (zeromq.py). Synchronous faults and the
# two signals that cannot be blocked are left out.
ASYNC_SIGNALS = set(signal.valid_signals()) - {
    signal.SIGSEGV,
    signal.SIGBUS,
    signal.SIGFPE,
    signal.SIGILL,
    signal.SIGKILL,
    signal.SIGSTOP,
}


@dataclass(frozen=True)
class TransportOptions:
    """Socket-level settings; every default is chosen for a logging path (see docs/configuration.md)."""

    max_frame_bytes: int = 4 * 1024 * 1024  # as mplog.wire.Limits.max_frame_bytes
    # Frames queued in the sender's ZeroMQ pipe. Kept small on purpose: what waits here is out of
    # mplog's sight (a closing worker can only linger for it), while the worker's own outbox is
    # bounded, counted and flushed with progress at exit.
    sndhwm: int = 8
    rcvhwm: int = 1000  # frames queued per connection in the listener's ZeroMQ socket (ipc://; at most, on tcp://)
    # Bytes of frames the listener's transport may queue: per connection on tcp://, where
    # ZeroMQ's RCVHWM counts messages and is therefore set to max_queued_bytes //
    # max_frame_bytes frames (8 by default), and for every connection together on mp://.
    max_queued_bytes: int = 32 * 1024 * 1024
    linger: float = 1.0  # seconds a closing sender waits for queued frames
    write_timeout: float = 1.0  # seconds one write may block (multiprocessing transport)
    heartbeat_ivl: float = 1.0  # tcp only: TCP keepalive interval of a quiet connection (whole seconds)
    heartbeat_timeout: float = 3.0  # tcp only: a quiet connection unanswered this long (keepalive) is dropped
    # tcp only: TCP_MAXRT, seconds a connection may leave data unacknowledged *or keep its receive
    # window shut* before the worker's kernel drops it. 0 (default): never, because a shut window
    # is a slow or paused collector (or a relay waiting for its own), and dropping the connection
    # loses what the kernel held for it; a collector that vanished mid-stream without a reset
    # is then given up by the kernel after about 15 minutes (tcp_retries2).
    stall_timeout: float = 0.0
    reconnect_ivl_max: float = 2.0
    # Seconds a connection may take to complete its ZMTP handshake at the listener. libzmq runs
    # its due timers before the events waiting after a SIGSTOP/SIGCONT (epoll_wait returns EINTR),
    # so a listener paused longer than this while a worker's handshake was half done dropped
    # that connection, with the records the worker had already sent on it (its own side of the
    # handshake was complete): all of them, silently (test_tcp_tail.py). 30 s (libzmq's own
    # default; it was 2 s) makes that take a pause of over 30 s at that moment; the trade: a
    # peer that connects and never greets holds a descriptor for up to 30 s.
    handshake_ivl: float = 30.0
    insecure: bool = False  # allow a plaintext bind to a non-loopback address
    # CURVE (ZeroMQ only; see mplog.transports.curve and docs/deployment.md). Keys are file paths
    # (or Z85 text); a sender with no server key falls back to $MPLOG_SERVER_KEY on tcp://.
    curve_server_key: str = ""  # sender: the collector's public key
    curve_secret_key: str = field(default="", repr=False)  # sender: its .key_secret; receiver: the server's
    curve_public_key: str = ""  # sender: its own public key (optional; must match the secret)
    curve_authorized_keys: str = ""  # receiver: directory of client NAME.key files allowed in
    curve_allow_any: bool = False  # receiver: admit any client that knows the server key


@runtime_checkable
class Sender(Protocol):
    """The worker's end: hands whole frames to the transport without blocking past ``timeout``."""

    endpoint: str

    def send(self, frame: bytes, timeout: float = 0.0) -> bool:
        """Queue ``frame``; False means it was not taken (nothing of it was sent)."""

    def close(self, linger: float | None = None) -> None:
        """Flush within ``linger`` seconds, then release everything; idempotent."""


class Origin(NamedTuple):
    """Where one frame came from, as the transport saw it (never as the frame claims).

    ``connection`` names the connection the frame arrived on: unique among this
    receiver's connections for its whole life (never reused), and the address to answer
    on where the transport has a return path (the ROUTER's routing id). ``b""`` where
    the transport cannot tell its connections apart (ZeroMQ PULL merges them).
    ``peer_key`` is the client's public key (Z85) that the CURVE handshake proved, ``""``
    without CURVE.
    """

    connection: bytes
    peer_key: str


NO_ORIGIN = Origin(b"", "")  # a frame from a transport that knows neither connections nor keys


@runtime_checkable
class Receiver(Protocol):
    """The listener's end: yields whole frames with their origin; counts transport-level rejects in ``events``."""

    endpoint: str
    events: Counter[str]

    def recv(self, timeout: float) -> tuple[bytes, Origin] | None:
        """Return the next frame and where it came from, or None when ``timeout`` seconds pass without one.

        The origin travels with the frame (not as a "last peer" attribute) so that a frame
        handled later, e.g. held while workers are busy, is still attributed to its own
        connection and key.
        """

    def connected(self, connection: bytes) -> bool:
        """Whether the connection an :class:`Origin` named is still open (False for ``b""``).

        Called by the listener when two connections claim one sender, and after a
        connection ended (see ``connection_ends``), on the receive loop's thread: never per frame.

        A receiver that names its connections may also have ``connection_ends() -> int``:
        how many of its connections have ended so far, readable at any time without
        cost. The listener then flags the senders whose connection ended without their
        goodbye (``unclosed: "connection ended"``).
        """

    def close(self) -> None:
        """Release everything; idempotent."""


def transport_max_bytes(options: TransportOptions) -> int:
    """The longest message the listener's transport takes: twice ``max_frame_bytes``.

    A frame longer than ``max_frame_bytes`` but within this is received whole and refused
    by the decoder before it is unpacked: counted (``oversized``), charged to the sender
    its envelope names, and the connection goes on. Only a longer message costs its
    connection (libzmq's ``MAXMSGSIZE`` drops the peer without a word, and the frames
    queued behind it with it; ``mp://`` closes it), so the margin covers the common
    careless frame, a batch a little over the limit (docs/wire-format.md, Limits).
    """
    return 2 * max(options.max_frame_bytes, 1)


def receive_hwm(options: TransportOptions) -> int:
    """The frames one connection may queue in the listener so that they hold at most ``max_queued_bytes``.

    ZeroMQ bounds a connection's queue in messages, not bytes: this many frames of the
    largest valid size (``max_frame_bytes``) fit in ``max_queued_bytes``; at least 1, at most
    ``rcvhwm``. Frames over ``max_frame_bytes`` (up to :func:`transport_max_bytes`, refused
    by the decoder without unpacking) can make it hold up to twice that. Not divided by the
    transport's limit: a queue of 4 frames lost a worker's last frames behind a relay whose
    collector was late (test_a_relay_holds_frames_while_the_collector_is_absent_and_delivers_them_when_it_binds).
    """
    return max(1, min(options.rcvhwm, options.max_queued_bytes // max(options.max_frame_bytes, 1)))


def make_private_dir() -> str:
    """Create a fresh directory only the current user can enter (mode 0700)."""
    return tempfile.mkdtemp(prefix="mplog-")  # mkdtemp creates it 0700 whatever the umask


def _user(uid: int) -> str:
    """``name (uid N)``, or ``uid N`` where the system knows no name for it."""
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (KeyError, OSError):
        return f"uid {uid}"


def foreign_dir_problem(
    directory: str, what: str = "endpoint directory", instead: str = "another endpoint", fix: str = ""
) -> str | None:
    """Why ``directory`` may not hold this user's sockets or files, or None (also when it does not exist).

    It must belong to this user (the effective uid) or to root, and others may not write
    to it unless its sticky bit keeps them from replacing what they do not own. The owner of
    a directory can always rename or remove what is in it: a user who made ``/tmp/mplog-0``
    before root's collector started could move root's socket away and bind their own, and
    receive root's records (test_a_listener_refuses_an_endpoint_directory_owned_by_another_user). A symbolic
    link is judged by its own owner as well as by the directory it leads to, since whoever
    owns the link can point it elsewhere.
    """
    try:
        link = os.lstat(directory)
        st = os.stat(directory)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{what} {directory!r} cannot be examined ({exc.strerror or exc})"
    euid = os.geteuid()
    fix = fix or f"remove it (rm -r {directory!r}) or choose {instead}"
    for entry, kind in ((link, "a symbolic link that belongs to"), (st, "a directory that belongs to")):
        if entry.st_uid not in (euid, 0):
            return (
                f"{what} {directory!r} is {kind} another user, {_user(entry.st_uid)}, not to this user "
                f"{_user(euid)}: its owner could replace what is put in it; {fix}"
            )
    if not stat.S_ISDIR(st.st_mode):
        return f"{what} {directory!r} is not a directory; {fix}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        return (
            f"{what} {directory!r} is writable by other users (mode {stat.S_IMODE(st.st_mode):o}); "
            "use a directory only you can write, e.g. one made with mode 0700"
        )
    return None


def check_private_dir(
    directory: str, what: str = "endpoint directory", instead: str = "another endpoint", fix: str = ""
) -> None:
    """Raise ConfigError when ``directory`` exists and is not this user's own (:func:`foreign_dir_problem`).

    ``fix``: the advice for a directory of another user, in place of "remove it or choose ``instead``".
    """
    problem = foreign_dir_problem(directory, what, instead, fix)
    if problem is not None:
        raise ConfigError(problem)


def ensure_private_dir(path: str) -> None:
    """Make sure the directory holding an ipc/unix socket exists, is this user's and no one else can write it.

    Raises:
        TransportError: it cannot be created.
        ConfigError: it belongs to another user, or others can write to it (:func:`foreign_dir_problem`).
    """
    directory = os.path.dirname(path) or "."
    if not os.path.lexists(directory):
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise TransportError(f"cannot create socket directory {directory!r}: {exc}") from exc
        os.chmod(directory, 0o700)
    check_private_dir(directory)


def check_socket_dir(endpoint: str) -> None:
    """A sender's check of an ``ipc://`` or ``mp://`` endpoint's directory, where it exists already.

    Raises:
        ConfigError: another user owns it (or can write to it), so the socket there may be theirs.
    """
    for part in endpoint.split(","):
        scheme, sep, path = part.strip().partition("://")
        if sep and scheme in ("ipc", "mp") and path and not path.startswith("@"):
            check_private_dir(os.path.dirname(path) or ".")


def default_collector_endpoint() -> str:
    """The per-user ipc endpoint a standalone collector (``mplog listen``) binds on this host by default."""
    return f"ipc://{tempfile.gettempdir()}/mplog-{os.getuid()}/collector.sock"


def local_collector() -> str | None:
    """The default endpoint when this user's ``mplog listen`` is bound there now, else None.

    The socket and its directory must belong to this user (and the directory be writable
    by no one else), so that another user cannot put a socket there to collect this
    user's records. Whether something listens is asked without connecting: a datagram
    ``connect()`` to a stream socket fails with EPROTOTYPE when a socket is bound at the
    path and with ECONNREFUSED when the file was left by a collector that died, and the
    collector sees no connection (its counters stay as they are).
    """
    endpoint = default_collector_endpoint()
    path = endpoint[len("ipc://") :]
    uid = os.getuid()
    try:
        folder, sock = os.stat(os.path.dirname(path)), os.stat(path)
    except OSError:
        return None
    if folder.st_uid != uid or folder.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or sock.st_uid != uid:
        return None
    if not stat.S_ISSOCK(sock.st_mode):
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(path)
        except OSError as exc:
            return endpoint if exc.errno == errno.EPROTOTYPE else None
    return None  # a datagram socket: not a collector


# The longest ipc:// path in bytes: sockaddr_un.sun_path less its terminating NUL (libzmq's IPC_PATH_MAX_LEN).
IPC_PATH_MAX = 107 if sys.platform.startswith("linux") else 103


def endpoint_problem(endpoint: str, *, connect: bool = False) -> str | None:
    """Why libzmq would refuse to bind (``connect``: to connect to) the ``tcp://`` or ``ipc://`` ``endpoint``,
    with the fix; None if it would not.

    Said before the bind, which answers only "Invalid argument" for a missing port and
    repeats a too long path three times.
    """
    if endpoint.startswith("tcp://"):
        host, colon, port = endpoint[len("tcp://") :].rpartition(":")
        if not colon or not host or "]" in port:
            address = endpoint[len("tcp://") :] or "127.0.0.1"
            if connect:
                return f"no port; add the listener's, e.g. 'tcp://{address}:5170'"
            return f"no port; add one, e.g. 'tcp://{address}:5170' (or ':*' for any free port)"
        if connect and port in ("*", "0"):
            return f"a worker connects to the listener's port, not {port!r}; name it (see the listener's first line)"
        if port != "*" and not (port.isdigit() and int(port) <= 65535):
            return f"the port {port!r} is not a number from 0 to 65535 (or '*', any free port)"
    elif endpoint.startswith("ipc://"):
        size = len(os.fsencode(endpoint[len("ipc://") :]))
        if size > IPC_PATH_MAX:
            return (
                f"its path is {size} bytes, more than the {IPC_PATH_MAX} a Unix socket address holds; "
                "choose a shorter path (e.g. in /tmp or /run)"
            )
    return None


def check_bind_address(endpoint: str, *, secure: bool, insecure_ok: bool) -> None:
    """Refuse a plaintext tcp bind to anything but loopback unless the user opted in."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    if host in ("localhost",):
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False  # '*', an interface name or a host name: treat as exposed
    if not loopback and not secure and not insecure_ok:
        raise ConfigError(
            f"endpoint {endpoint!r} binds a non-loopback address without CURVE; "
            "configure mplog.curve keys, or set mplog.insecure = true to accept plaintext on the network "
            "(on the command line: --curve-secret-key with --authorized-keys, or --insecure)"
        )
