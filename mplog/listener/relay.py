"""A relay: forwards frames from the workers of one host to a collector, untouched.

The relay never decodes a frame: the bytes a worker sent are the bytes the collector
receives, so sender identity, sequence numbers and drop counts survive any number of
relays in a chain. It never drops either: a frame it cannot pass on yet stays in hand
and the relay stops reading, so a stalled or absent collector fills the relay's bounded
receive queue and then the workers' own buffers, whose policies count every drop.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from mplog.transports import TransportOptions
from mplog.transports.zeromq import ZmqReceiver, ZmqSender
from mplog.wire import read_envelope

__all__ = ["Relay"]


class Relay:
    """PULL from ``bind``, PUSH to ``connect`` (comma-separated endpoints share the load)."""

    def __init__(
        self,
        bind: str,
        connect: str,
        *,
        bind_options: TransportOptions | None = None,
        connect_options: TransportOptions | None = None,
    ) -> None:
        for url in (bind, connect):
            if not all(part.strip().startswith(("tcp://", "ipc://")) for part in url.split(",")):
                from mplog.exceptions import ConfigError  # noqa: PLC0415  # only on the error path

                raise ConfigError(f"a relay speaks ZeroMQ only: {url!r} must be tcp://HOST:PORT or ipc://PATH")
        connect_options = connect_options or TransportOptions()
        self.sender = ZmqSender(connect, connect_options)
        self.sender.role = "relay"
        self._linger = connect_options.linger
        self.receiver = ZmqReceiver(bind, bind_options or TransportOptions())
        self.endpoint = self.receiver.endpoint
        self.stop_event = threading.Event()
        self.drain_timeout = 5.0
        self.frames = 0
        self.bytes = 0
        self.waits = 0  # times the collector could not take a frame at once
        self.unforwarded = 0  # frames read but never passed on, counted at close (lost: see close())
        self.unforwarded_bytes = 0
        self.unforwarded_records = 0  # their records, by their envelopes
        self.refusal: str | None = None  # the collector's refusal of the relay's handshake, said once
        self._held: bytes | None = None
        self._closed = False
        self._drain_deadline = 0.0  # set when the drain begins: close() lingers for what is left of it
        self._next_check = 0.0

    def _forward(self, timeout: float) -> bool:
        """Move one frame on; False when nothing arrived or the collector could not take it."""
        if self._held is None:
            received = self.receiver.recv(timeout)  # passed on as it is: the collector sees the relay as its origin
            if received is None:
                return False
            self._held = received[0]
        if not self.sender.send(self._held, timeout):
            self.waits += 1
            self._check_refusal()
            return False
        self.frames += 1
        self.bytes += len(self._held)
        self._held = None
        return True

    def _check_refusal(self) -> None:
        """Say once on stderr why the collector will not take frames, if it refused the handshake."""
        now = time.monotonic()
        if self.refusal is not None or now < self._next_check:
            return
        self._next_check = now + 0.5  # the monitor is read without waiting, at most twice a second
        self.refusal = self.sender.refusal()
        if self.refusal is not None:
            print(
                f"{self.refusal}; until it is let in, this relay passes nothing on and its workers' frames "
                "wait in it and in their own buffers",
                file=sys.stderr,
                flush=True,
            )

    def run(self) -> None:
        """Forward until :attr:`stop_event` is set, then pass on what is queued (bounded)."""
        while not self.stop_event.is_set():
            self._forward(0.05)
        deadline = self._drain_deadline = time.monotonic() + self.drain_timeout
        while time.monotonic() < deadline and (self._held is not None or self._forward(0.2)):
            if self._held is not None:
                self._forward(0.05)

    def _count_unforwarded(self, seconds: float = 2.0, quiet: float = 0.1) -> None:
        """Count the frames (and their records) in hand and still arriving, which close() loses.

        Reads until nothing arrives for ``quiet`` seconds, at most ``seconds`` in all: ZeroMQ
        queues only a few frames per connection (``RCVHWM``), the rest waits in the kernels,
        so a bare look at the queue sees a fraction. They never reach the collector, which may
        never have heard of their senders (a relay whose handshake it refused): the relay's
        stop line is where that loss shows. Records come from each frame's envelope; a frame
        whose envelope does not read counts as a frame only.
        """
        if self._held is not None:
            self._note_unforwarded(self._held)
            self._held = None
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            received = self.receiver.recv(min(quiet, left))
            if received is None:
                break
            self._note_unforwarded(received[0])

    def _note_unforwarded(self, frame: bytes) -> None:
        self.unforwarded += 1
        self.unforwarded_bytes += len(frame)
        try:
            self.unforwarded_records += read_envelope(frame).records
        except ValueError:
            pass

    def snapshot(self) -> dict[str, Any]:
        """Frames and bytes forwarded, frames in hand, and the bind side's connection counts."""
        connections = dict(self.receiver.connections)
        return {
            "endpoint": self.endpoint,
            "frames": self.frames,
            "bytes": self.bytes,
            "waits": self.waits,
            "held": int(self._held is not None),
            "unforwarded": self.unforwarded,
            "unforwarded_bytes": self.unforwarded_bytes,
            "unforwarded_records": self.unforwarded_records,
            "connections": connections,
            "refused": sum(n for key, n in connections.items() if key.startswith("refused_")),
        }

    def close(self) -> None:
        """Release both sockets (frames still queued are lost and show as gaps downstream); idempotent.

        The sender lingers for what is left of the drain time (at least its own ``linger``):
        the frames just passed on may be many, in one connection to a collector that is
        behind, and they carry the goodbyes of every worker that ended meanwhile. A stop
        still takes at most ``drain_timeout`` + ``linger``, after the count of what is lost (at most 2 s).
        """
        if self._closed:
            return
        self._closed = True
        self._count_unforwarded()
        self.receiver.close()
        self.sender.close(max(self._linger, self._drain_deadline - time.monotonic()))
