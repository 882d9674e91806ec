"""The status channel: a small ZeroMQ REQ/REP side door that answers stats requests.

``mplog status ENDPOINT`` runs in a process unrelated to the listener, so the
listener binds a second socket next to its data endpoint and answers ``{"cmd":
"stats"}`` with its stats snapshot (JSON both ways), and ``{"cmd": "level"}`` with
``{"level": N, "endpoint": DATA_ENDPOINT}``: the lowest level any of its handlers
accepts, which workers ask for (mplog.worker.level). Where that socket lives:

- ``ipc://PATH`` and ``mp://PATH``: ``ipc://PATH.ctl`` (same private directory);
- ``tcp://HOST:PORT``: ``tcp://127.0.0.1:PORT+1`` (always loopback), unless
  ``mplog.control`` names another endpoint.

Requests are bounded (``MAX_REQUEST_BYTES``; libzmq drops a peer that sends more),
replies carry counters and sender identities only, never keys or the config. A
malformed request (not JSON, several parts, no REQ envelope) gets an error answer and
the next request is answered as usual.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import zmq

from mplog.exceptions import ConfigError, ListenerError, TransportError
from mplog.listener.stats_view import by_handler_text, printable, summary
from mplog.transports.base import check_bind_address
from mplog.transports.claim import SocketClaim
from mplog.transports.zeromq import bind_private_ipc

__all__ = [
    "MAX_REQUEST_BYTES",
    "ControlServer",
    "control_endpoint_for",
    "format_status",
    "handler_errors_text",
    "port_in_use_hint",
    "request_stats",
    "start_control_server",
]

MAX_REQUEST_BYTES = 4096
_POLL_MS = 25  # how soon close() is noticed: Listener.stop() waits for it


def control_endpoint_for(endpoint: str, explicit: str | None = None) -> str:
    """Return the status-channel endpoint that belongs to the data ``endpoint``.

    Raises:
        ConfigError: the endpoint has no scheme a control channel can be derived from.
    """
    if explicit:
        if not explicit.startswith(("ipc://", "tcp://")):
            raise ConfigError(f"mplog.control must be an ipc:// or tcp:// endpoint, got {explicit!r}")
        return explicit
    first = endpoint.split(",", 1)[0].strip()
    if first.startswith(("ipc://", "mp://")):
        return "ipc://" + first.split("://", 1)[1] + ".ctl"
    if first.startswith("tcp://"):
        port = urlsplit(first).port
        if port is None or port == 0:
            raise ConfigError(f"cannot derive a control endpoint from {first!r}: it needs a fixed port")
        if port >= 65535:
            raise ConfigError(f"cannot use port {port}+1 for the control channel of {first!r}; set mplog.control")
        return f"tcp://127.0.0.1:{port + 1}"
    raise ConfigError(f"cannot derive a control endpoint from {endpoint!r}; use ipc://, tcp:// or mp://")


class ControlServer:
    """Answers stats requests from a background thread until :meth:`close`.

    The socket is bound in the constructor (so a bind failure is reported to the
    caller) and used only by the serving thread afterwards.
    """

    def __init__(
        self,
        endpoint: str,
        snapshot: Callable[[], dict[str, Any]],
        *,
        insecure: bool = False,
        level: int | None = None,
        serves: str = "",
    ) -> None:
        self.endpoint = endpoint
        self._snapshot = snapshot
        self.level = level  # the level workers are told (None: the level request is refused); may be replaced
        self.serves = serves  # the data endpoint this channel belongs to, named in the level answer
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._claim: SocketClaim | None = None
        self._ctx: zmq.Context[Any] = zmq.Context(io_threads=1)
        # ROUTER, not REP: REP must alternate receive and send, so one request of two parts
        # left it unable to do either and ended the channel for good. A ROUTER has no such
        # state: every request gets its answer, whatever came before it.
        self._sock = self._ctx.socket(zmq.ROUTER)
        try:
            self._sock.setsockopt(zmq.LINGER, 0)
            self._sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
            self._sock.setsockopt(zmq.SNDTIMEO, 0)  # a reply a client does not read is dropped, never waited for
            if endpoint.startswith("ipc://"):
                self._claim = bind_private_ipc(self._sock, endpoint)
            else:
                check_bind_address(endpoint, secure=False, insecure_ok=insecure)
                self._sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self._release()
            raise TransportError(f"cannot bind the control endpoint {endpoint!r}: {exc}") from exc
        except Exception:
            self._release()
            raise

    def start(self) -> ControlServer:
        """Start the serving thread; a second call is an error."""
        if self._thread is not None:
            raise ListenerError("the control server was already started")
        self._thread = threading.Thread(target=self._serve, name="mplog-status", daemon=True)
        self._thread.start()
        return self

    def answer(self, request: bytes) -> dict[str, Any]:
        """The reply to one raw request."""
        try:
            message = json.loads(request)
        except (ValueError, UnicodeDecodeError):
            return {"error": 'the request must be a JSON object such as {"cmd": "stats"}'}
        command = message.get("cmd") if isinstance(message, dict) else None
        if command == "level" and self.level is not None:
            return {"level": self.level, "endpoint": self.serves}
        if command != "stats":
            return {"error": 'unknown request; the commands are {"cmd": "stats"} and {"cmd": "level"}'}
        return {"stats": self._snapshot()}

    def reply_to(self, parts: list[bytes]) -> dict[str, Any]:
        """The reply to one request as a ROUTER reads it: ``[client, b"", request]`` (a REQ client's envelope)."""
        if len(parts) != 3 or parts[1]:
            return {"error": 'a request is one message holding a JSON object such as {"cmd": "stats"}'}
        try:
            return self.answer(parts[2])
        except Exception as exc:  # a failing snapshot must not end the channel
            return {"error": f"{type(exc).__name__}: {exc}"}

    def _serve(self) -> None:
        sock = self._sock
        try:
            while not self._stop.is_set():
                if not sock.poll(_POLL_MS, zmq.POLLIN):
                    continue
                parts = sock.recv_multipart(zmq.NOBLOCK)
                reply = json.dumps(self.reply_to(parts), default=repr).encode()
                with contextlib.suppress(zmq.Again):  # the client's queue is full: it is not reading
                    sock.send_multipart([parts[0], b"", reply], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # closed under us at shutdown
        finally:
            self._release()

    def close(self) -> None:
        """Stop serving and release the socket; harmless to call twice."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(2.0)
        if thread is None:
            self._release()

    def _release(self) -> None:
        if not self._sock.closed:
            self._sock.close(linger=0)
            self._ctx.term()
            if self._claim is not None:  # unlinks PATH.ctl only if it is still the file this server created
                self._claim.release()


def start_control_server(
    endpoint: str,
    snapshot: Callable[[], dict[str, Any]],
    runtime: dict[str, Any] | None = None,
    *,
    level: int | None = None,
) -> ControlServer | None:
    """Start the status channel for a listener bound at ``endpoint``.

    An explicit ``mplog.control`` endpoint that cannot be bound is an error; a derived
    one (which another program may hold, e.g. port+1) only costs a warning on stderr.
    ``level`` is what the channel tells workers that ask (mplog.config.worker_level).

    Raises:
        TransportError: the explicit control endpoint could not be bound.
    """
    runtime = runtime or {}
    explicit = runtime.get("control")
    try:
        control = control_endpoint_for(endpoint, explicit)
        server = ControlServer(
            control, snapshot, insecure=bool(runtime.get("insecure", False)), level=level, serves=endpoint
        )
    except (TransportError, ConfigError) as exc:
        if explicit:
            raise
        sys.stderr.write(f"mplog: no status channel: {exc}{port_in_use_hint(str(exc), own_status=True)}\n")
        return None
    return server.start()


_BIND_FAILED = re.compile(r"cannot bind (?:the control endpoint )?'(tcp://[^']+)': Address already in use")


def port_in_use_hint(message: str, timeout: float = 0.3, *, own_status: bool = False) -> str:
    """For a refused ``tcp://`` bind, which other use of that port it probably is (asked, where mplog can ask).

    A listener takes PORT+1 on loopback for its status channel, so a relay or a second
    listener bound there collides with it. ``own_status``: the port was this listener's
    derived status channel. Returns "" when ``message`` is not about a ``tcp://`` address in use.
    """
    match = _BIND_FAILED.search(message)
    port = urlsplit(match.group(1)).port if match else None
    if not port:
        return ""
    if own_status:
        holder = "another program holds it, such as an mplog relay bound there"
        stats = _status_at(port + 1, timeout)  # an mplog listener bound there answers on port + 1
        if urlsplit(str(stats.get("endpoint", ""))).port == port:
            holder = f"the mplog listener at {stats['endpoint']} (pid {stats.get('pid', '?')}) is bound there"
        return (
            f"; port {port} is this listener's status channel (PORT+1) and {holder}: keep PORT+1 free "
            "(mplog's examples use even ports), or name another status channel with --control (mplog.control)"
        )
    for asked, relation in ((port, "status"), (port + 1, "endpoint")):
        stats = _status_at(asked, timeout)
        if not stats:
            continue
        owner = f"the mplog listener at {stats.get('endpoint', '?')} (pid {stats.get('pid', '?')})"
        if relation == "status":
            return (
                f"; port {port} is the status channel of {owner}, which every listener takes at PORT+1 on "
                f"loopback: bind another port (mplog's examples use even ports: {port + 1} for the next one)"
            )
        if urlsplit(str(stats.get("endpoint", ""))).port == port:
            return f"; {owner} is bound there already (mplog status tcp://127.0.0.1:{port})"
    return (
        f"; another program holds port {port}. If an mplog listener is bound at port {port - 1}, this is its "
        f"status channel (PORT+1, loopback): bind another port (mplog's examples use even ports), or move that "
        "listener's status channel with --control"
    )


def _status_at(port: int, timeout: float) -> dict[str, Any]:
    """The stats of an mplog listener whose status channel is loopback ``port``, or {} (none answers)."""
    if port > 65535:
        return {}
    try:
        return request_stats("", timeout, control=f"tcp://127.0.0.1:{port}")
    except (ListenerError, ConfigError):
        return {}


def request_stats(endpoint: str, timeout: float = 2.0, *, control: str | None = None) -> dict[str, Any]:
    """Ask the listener bound at ``endpoint`` for its stats over the status channel.

    Args:
        endpoint: the listener's data endpoint (the control endpoint is derived from it).
        timeout: seconds to wait for an answer.
        control: the control endpoint, when it is not the derived one.

    Raises:
        ListenerError: nothing answered within ``timeout``, or the answer was an error.
        ConfigError: no control endpoint can be derived from ``endpoint``.
    """
    target = control or control_endpoint_for(endpoint)
    if target.startswith("ipc://") and not os.path.exists(target[len("ipc://") :]):
        raise ListenerError(f"no listener at {endpoint!r}: {target[len('ipc://') :]} does not exist")
    ctx: zmq.Context[Any] = zmq.Context(io_threads=1)
    sock = ctx.socket(zmq.REQ)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, 64 * 1024 * 1024)
        sock.connect(target)
        sock.send(json.dumps({"cmd": "stats"}).encode())
        if not sock.poll(int(timeout * 1000), zmq.POLLIN):
            raise ListenerError(f"no listener answered at {target!r} within {timeout:g} s")
        reply = json.loads(sock.recv())
    except zmq.ZMQError as exc:
        raise ListenerError(f"cannot reach the listener's control endpoint {target!r}: {exc}") from exc
    finally:
        sock.close(linger=0)
        ctx.term()
    if not isinstance(reply, dict) or not isinstance(reply.get("stats"), dict):
        detail = reply.get("error", reply) if isinstance(reply, dict) else reply
        raise ListenerError(f"the listener at {target!r} answered with an error: {detail}")
    stats: dict[str, Any] = reply["stats"]
    return stats


def handler_errors_text(stats: dict[str, Any]) -> str:
    """``, handler errors 501 (file 501)``: the failures of each handler, to append to a summary line; '' when none."""
    return by_handler_text("handler errors", stats.get("handler_errors"))


# A sender's RATE/S needs its frames this many seconds apart (a floor of 1 s showed a sender
# that sent 2,000 records in 0.42 s at 2,000/s).
_RATE_WINDOW = 0.1


def format_status(stats: dict[str, Any], now: float | None = None) -> str:
    """Render a stats snapshot as the table ``mplog status`` prints: one row per sender.

    ``rate`` is records per second between the sender's first and last frame, ``-`` when
    those are less than 0.1 s apart (one frame, or too short a time to tell); ``last seen``
    is measured against ``now`` (default: this clock).
    """
    now = time.time() if now is None else now
    # The same line as str(Listener.stats()) (mplog.listener.stats_view.summary), after who and how long.
    who = f"listener pid {stats.get('pid', '?')} at {stats.get('endpoint', '?')}"
    head = f"{who}: up {stats.get('uptime', 0.0):.1f} s; {summary(stats)}"
    held = stats.get("yield", {}).get("held_frames", 0)
    if held:  # mplog.listener.holding: not yet handled, the workers keep every CPU busy
        head += f", holding {held} frames while the workers are busy"
    columns = ("HOST", "PID", "RECORDS", "RATE/S", "DROPPED", "GAPS", "LAST SEEN", "STATE")
    rows = [columns]
    senders = sorted(stats["senders"].values(), key=lambda s: (s["host"], s["pid"], s["stream"]))
    for sender in senders:
        window = sender["last_seen"] - sender["first_seen"]
        rows.append(
            (
                printable(sender["host"]),  # a sender's own words: one row per sender, no terminal controls
                printable(sender["pid"]),
                str(sender["records"]),
                f"{sender['records'] / window:.1f}" if window >= _RATE_WINDOW else "-",
                str(sender["dropped"]),
                str(sender["gaps"]),
                f"{max(now - sender['last_seen'], 0.0):.1f} s ago",
                _state(sender),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = [head]
    for row in rows:
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [cell.ljust(width) if i == 0 else cell.rjust(width) for i, (cell, width) in pairs]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _state(sender: dict[str, Any]) -> str:
    """``closed`` (said goodbye), ``open``, or why its end was never seen: ``no goodbye, process gone`` / ``silent``."""
    if sender["closed"]:
        return "closed"
    why = sender.get("unclosed")
    return f"no goodbye, {why}" if why else "open"
