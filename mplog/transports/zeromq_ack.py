"""ZeroMQ transport for acknowledged delivery: workers use DEALER, the listener ROUTER.

Frames still travel one way as opaque bytes; the only difference from
:mod:`mplog.transports.zeromq` (PUSH/PULL) is a return path: the listener can answer
the peer that sent a frame (:meth:`RouterReceiver.reply`) and the worker can read
those answers (:meth:`DealerSender.recv`). What the answers mean is
:mod:`mplog.ack`'s business; this module never looks inside a frame.

Socket options follow the PUSH/PULL transport: bounded LINGER, non-blocking sends,
IMMEDIATE=1, MAXMSGSIZE on the listener, ipc sockets private to the user.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from typing import Any

import zmq

from mplog.exceptions import TransportError
from mplog.transports.base import TransportOptions, check_bind_address
from mplog.transports.zeromq import ZmqSender, _split, bind_private_ipc

__all__ = ["DealerSender", "RouterReceiver"]


class DealerSender(ZmqSender):
    """A DEALER socket per process: the PUSH sender's options, plus reading the listener's answers.

    Not thread-safe: callers lock.
    """

    socket_type = zmq.DEALER

    def _socket(self) -> zmq.Socket[Any]:
        if self._pid == os.getpid() and self._sock is not None:
            return self._sock
        return self._open()

    def recv(self, timeout: float = 0.0) -> bytes | None:
        """The next message from the listener, or None after ``timeout`` seconds."""
        if self._closed:
            return None
        sock = self._socket()
        try:
            if timeout > 0 and not sock.poll(int(timeout * 1000), zmq.POLLIN):
                return None
            data: bytes = sock.recv(zmq.NOBLOCK)
            return data
        except zmq.Again:
            return None
        except zmq.ZMQError as exc:
            raise TransportError(f"receive from {self.endpoint!r} failed: {exc}") from exc


class RouterReceiver:
    """The listener's ROUTER socket: yields frames and remembers who sent the last one."""

    def __init__(self, endpoint: str, options: TransportOptions) -> None:
        self.events: Counter[str] = Counter()
        self.last_route: bytes = b""  # the ZeroMQ routing id of the last frame's peer
        self._options = options
        self._ctx: zmq.Context[Any] = zmq.Context(io_threads=1)
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._path = ""
        try:
            self._sock.setsockopt(zmq.LINGER, 0)
            self._sock.setsockopt(zmq.RCVHWM, options.rcvhwm)
            self._sock.setsockopt(zmq.SNDHWM, 10_000)  # acks are tiny; a slow worker must not stall the loop
            self._sock.setsockopt(zmq.MAXMSGSIZE, options.max_frame_bytes)
            self._sock.setsockopt(zmq.HANDSHAKE_IVL, int(options.handshake_ivl * 1000))
            for part in _split(endpoint):
                self._bind(part)
        except zmq.ZMQError as exc:
            self.close()
            raise TransportError(f"cannot bind {endpoint!r}: {exc}") from exc
        except Exception:
            self.close()
            raise
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def _bind(self, endpoint: str) -> None:
        if endpoint.startswith("ipc://"):
            self._path = bind_private_ipc(self._sock, endpoint)
            return
        if endpoint.startswith("tcp://"):
            self._sock.setsockopt(zmq.HEARTBEAT_IVL, int(self._options.heartbeat_ivl * 1000))
            self._sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(self._options.heartbeat_timeout * 1000))
        # Acknowledged delivery has no CURVE support yet: plaintext only, loopback unless told.
        check_bind_address(endpoint, secure=False, insecure_ok=self._options.insecure)
        self._sock.bind(endpoint)

    def _take(self) -> bytes | None:
        parts = self._sock.recv_multipart(zmq.NOBLOCK)
        if len(parts) != 2:
            self.events["bad_envelope"] += 1
            return None
        self.last_route = parts[0]
        data: bytes = parts[1]
        return data

    def recv(self, timeout: float) -> bytes | None:
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

    def reply(self, route: bytes, data: bytes) -> bool:
        """Send ``data`` to the peer ``route``; False if it could not be queued (the peer resends)."""
        try:
            self._sock.send_multipart([route, data], zmq.NOBLOCK)
            return True
        except zmq.ZMQError:
            return False

    def close(self) -> None:
        if self._sock.closed:
            return
        self._sock.close(linger=0)
        self._ctx.term()
        if self._path:
            with contextlib.suppress(OSError):
                os.unlink(self._path)
