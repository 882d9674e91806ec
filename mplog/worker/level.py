"""The level a worker's listener accepts, asked over the listener's status channel.

A worker given no level (neither ``setup_worker(level=...)`` nor ``$MPLOG_LEVEL``) asks
the listener it sends to, so that it never ships a record that no handler there takes
(:func:`mplog.config.worker_level`): ``setup_worker()`` asks once, waiting at most
:data:`ASK_TIMEOUT`, and the worker's flusher thread asks again every
:data:`REFRESH_INTERVAL` seconds while the handler lives (a collector restarted with
another config, or one that was not up yet when the worker started). Nothing of this
is on the logging call's path: the answer becomes the root logger's level and the
handler's own level, which ``logging`` compares on every call anyway.

Who can be asked is who can reach the status channel (mplog.control): a listener on an
``ipc://`` or ``mp://`` path (``PATH.ctl``, when that file exists), a ``tcp://`` listener
on a loopback address (``127.0.0.1:PORT+1``, which is always loopback), or the channel
named in ``$MPLOG_CONTROL``. A worker on another host, behind a relay, or given several
endpoints does not ask (the status channel is loopback-only, and a relay has none): it
sends what its own level lets through, and ``MPLOG_LEVEL`` or ``level=`` set it. The
answer names the data endpoint it belongs to, and one that names another listener
(a status port that another program holds) is ignored.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import math
import os
import socket
import time
from typing import Any
from urllib.parse import urlsplit

__all__ = ["ASK_TIMEOUT", "REFRESH_INTERVAL", "LevelFollower", "ask_level", "status_endpoint"]

ASK_TIMEOUT = 0.25  # the longest setup_worker() waits for an answer (only where a status channel is there)
REFRESH_TIMEOUT = 0.1  # the longest the flusher thread waits (a local channel answers in about a millisecond)
REFRESH_INTERVAL = 30.0  # how often the flusher thread asks again
ENV_CONTROL = "MPLOG_CONTROL"  # an explicit status channel, as for `mplog status`


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def status_endpoint(endpoint: str) -> str | None:
    """The status channel a worker sending to ``endpoint`` can ask, or None where there is none to reach."""
    explicit = os.environ.get(ENV_CONTROL, "")
    if explicit.startswith(("ipc://", "tcp://")):
        return explicit
    if "," in endpoint:
        return None  # several collectors share the load: none of them speaks for the others
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "mp"):
        return f"ipc://{rest}.ctl" if os.path.exists(f"{rest}.ctl") else None
    if scheme == "tcp":
        try:
            parts = urlsplit(endpoint)
            host, port = parts.hostname or "", parts.port
        except ValueError:
            return None
        if port and port < 65535 and _loopback(host):
            return f"tcp://127.0.0.1:{port + 1}"
    return None


def _same_listener(endpoint: str, answered: object) -> bool:
    """Whether the data endpoint named in an answer is the one this worker sends to."""
    if not isinstance(answered, str):
        return False
    ours, theirs = endpoint.partition("://"), answered.partition("://")
    if ours[0] == "tcp" and theirs[0] == "tcp":
        with contextlib.suppress(ValueError):
            return urlsplit(endpoint).port == urlsplit(answered).port
        return False
    if ours[0] in ("ipc", "mp") and theirs[0] in ("ipc", "mp"):
        return os.path.realpath(ours[2]) == os.path.realpath(theirs[2])
    return False


def ask_level(endpoint: str, timeout: float = ASK_TIMEOUT) -> int | None:
    """Ask the listener at ``endpoint`` for the lowest level its handlers accept; None without an answer.

    Never raises: a listener that cannot be asked, that does not answer within
    ``timeout`` or that answers something else (an older listener, another program)
    gives None.
    """
    target = status_endpoint(endpoint)
    if target is None or _refused(target):
        return None
    try:
        reply = _request(target, timeout)
    except Exception:
        return None
    if not isinstance(reply, dict) or not _same_listener(endpoint, reply.get("endpoint")):
        return None
    level = reply.get("level")
    if type(level) is not int or not logging.NOTSET <= level <= 1_000:
        return None
    return level


def _refused(target: str) -> bool:
    """Whether nothing listens at a ``tcp://`` target: ZeroMQ would keep retrying until the timeout.

    A local relay has no status channel at PORT+1: one connect, refused at once, spares its
    workers the whole wait in setup_worker().
    """
    if not target.startswith("tcp://"):
        return False
    try:
        parts = urlsplit(target)
        with socket.create_connection((parts.hostname or "", parts.port or 0), timeout=0.05):
            return False
    except ConnectionRefusedError:
        return True
    except (OSError, ValueError):
        return False


def _request(target: str, timeout: float) -> Any:
    import zmq  # noqa: PLC0415  # a worker on the multiprocessing transport imports it only to ask

    ctx: zmq.Context[Any] = zmq.Context(io_threads=1)
    sock = ctx.socket(zmq.REQ)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, 4096)  # the answer is a few bytes; anything longer is not one
        sock.connect(target)
        sock.send(b'{"cmd": "level"}')
        if not sock.poll(int(timeout * 1000), zmq.POLLIN):
            return None
        return json.loads(sock.recv(zmq.NOBLOCK))
    finally:
        sock.close(linger=0)
        ctx.term()


class LevelFollower:
    """Keeps the root logger and one handler at the level the listener accepts.

    The root logger's level is changed only while it still holds the level this follower
    set: a program that set it itself keeps its own.
    """

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.level: int | None = None  # the last answer
        self.asked_at = -math.inf  # time.monotonic() of the last question
        self._applied: int | None = None  # the root level this follower set

    def fresh(self) -> bool:
        """Whether the last question is recent enough to reuse its answer (a forked child inherits it)."""
        return time.monotonic() - self.asked_at < REFRESH_INTERVAL

    def due(self) -> bool:
        return not self.fresh()

    def ask(self, timeout: float) -> int | None:
        """Ask now; remember and return the answer (None: no answer, keep what there is)."""
        self.asked_at = time.monotonic()
        level = ask_level(self.endpoint, timeout)
        if level is not None:
            self.level = level
        return level

    def apply(self, handler: logging.Handler, level: int, *, set_root: bool = False) -> None:
        """Make ``level`` the handler's, and the root logger's if ``set_root`` or it still holds ours."""
        root = logging.getLogger()
        if set_root or root.level == self._applied:
            if root.level != level:
                root.setLevel(level)
            self._applied = level
        if handler.level != level:
            handler.setLevel(level)
