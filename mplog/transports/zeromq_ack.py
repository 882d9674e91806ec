"""ZeroMQ transport for acknowledged delivery: workers use DEALER, the listener ROUTER.

Frames still travel one way as opaque bytes; the only difference from
:mod:`mplog.transports.zeromq` (PUSH/PULL) is a return path: the listener can answer
the peer that sent a frame (:meth:`RouterReceiver.reply`) and the worker can read
those answers (:meth:`DealerSender.recv`). What the answers mean is
:mod:`mplog.delivery.ack_sender`'s business; this module never looks inside a frame.

Socket options follow the PUSH/PULL transport: bounded LINGER, non-blocking sends,
IMMEDIATE=1, MAXMSGSIZE on the listener, ipc sockets private to the user, CURVE with
the same keys, allow-list and counted refusals on both ends.
"""

from __future__ import annotations

import os
import time
from typing import Any

import zmq

from mplog.exceptions import TransportError
from mplog.transports.base import Origin
from mplog.transports.zeromq import BoundReceiver, ZmqSender

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
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    data: bytes = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    left = deadline - time.monotonic()
                    if left <= 0 or not sock.poll(int(left * 1000) + 1, zmq.POLLIN):
                        return None
                    continue
                if data:
                    return data
                # An empty message is the listener's probe (RouterReceiver.connected): not for the
                # caller, who still waits out its timeout (it returned None at once after a probe).
        except zmq.ZMQError as exc:
            raise TransportError(f"receive from {self.endpoint!r} failed: {exc}") from exc


class RouterReceiver(BoundReceiver):
    """The listener's ROUTER socket: yields frames with the connection they came on.

    Binding and CURVE (server keys, the ZAP allow-list, refusal counts) work as for the
    PULL receiver. A frame's :class:`~mplog.transports.base.Origin` names its connection
    by the ZeroMQ routing id, which libzmq gives each connection (and refuses to a second
    live connection); acknowledgements go back to it over the same connection, so under
    CURVE they are encrypted too.
    """

    socket_type = zmq.ROUTER

    def _set_options(self, sock: zmq.Socket[Any]) -> None:
        super()._set_options(sock)
        sock.setsockopt(zmq.SNDHWM, 10_000)  # acks are tiny; a slow worker must not stall the loop
        # A send to a connection that is gone fails (EHOSTUNREACH) instead of vanishing:
        # connected() needs to know, and reply() reports it as not queued either way.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)

    def _take(self) -> tuple[bytes, Origin] | None:
        if self._curve:  # read without copying, for the client key the handshake proved
            frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
            if len(frames) != 2:
                self.events["bad_envelope"] += 1
                return None
            return frames[1].bytes, self._origin_of(frames[0].bytes, frames[1])
        parts = self._sock.recv_multipart(zmq.NOBLOCK)
        if len(parts) != 2:
            self.events["bad_envelope"] += 1
            return None
        route, data = parts
        return data, self._origin_of(route, None)

    def connected(self, connection: bytes) -> bool:
        """Whether the peer with routing id ``connection`` is still connected.

        Sends it an empty message, which :meth:`DealerSender.recv` discards: libzmq
        refuses a send to a routing id whose connection has ended (ROUTER_MANDATORY).
        """
        if not connection:
            return False
        try:
            self._sock.send_multipart([connection, b""], zmq.NOBLOCK)
        except zmq.Again:
            return True  # its queue is full: connected, and slow
        except zmq.ZMQError:
            return False  # EHOSTUNREACH: no such connection (any more)
        return True

    def connection_ends(self) -> int:
        """How many connections have ended so far (the socket monitor's count, read from any thread).

        When it moves, the listener asks :meth:`connected` about the connections it knows.
        """
        gatekeeper = self._gatekeeper
        return gatekeeper.counts["disconnected"] if gatekeeper is not None else 0

    def reply(self, route: bytes, data: bytes) -> bool:
        """Send ``data`` to the peer ``route``; False if it could not be queued (the peer resends)."""
        try:
            self._sock.send_multipart([route, data], zmq.NOBLOCK)
            return True
        except zmq.ZMQError:
            return False
