"""What the network handlers into a syslog daemon share: options, a bounded outbox, TLS, connecting.

:class:`Outbox` is the bounded buffer between a handler's ``emit`` (the listener's
receive loop) and the thread that talks to the daemon. Every record gets a number when
it is put in; a record is *settled* once the daemon took it (written into the socket,
or acknowledged over RELP), it was dropped by the buffer's policy, or the daemon
refused it; each of those is counted. :meth:`Outbox.wait_settled` is what acknowledged
delivery waits on (:meth:`mplog.handlers.RELPHandler.wait_confirmed`).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, fields
from itertools import repeat
from typing import Any

from mplog.exceptions import ConfigError

__all__ = ["POLICIES", "DeliveryOptions", "Outbox", "connect", "tls_context"]

POLICIES = ("block", "drop_newest", "drop_oldest")


@dataclass(frozen=True)
class DeliveryOptions:
    """How a handler holds, sends and retries; and, for ``transport = "tls"``, how it proves the peer."""

    max_buffer: int = 10_000  # records held (those sent and not yet settled included)
    policy: str = "drop_oldest"  # block | drop_newest | drop_oldest, when the buffer is full
    block_timeout: float = 1.0  # the longest emit() waits for room under "block", then drops the record
    timeout: float = 10.0  # seconds for connecting, the TLS handshake, and each write
    retry_base: float = 0.1  # first delay after a failed connection...
    retry_max: float = 5.0  # ...doubling up to this cap
    close_timeout: float = 5.0  # the longest close() keeps delivering what is buffered
    confirm_timeout: float = 5.0  # acknowledged delivery: the longest a frame's acknowledgement waits for this handler
    window: int = 512  # RELP: messages sent and not yet acknowledged; as many may arrive twice per broken session
    cafile: str | None = None  # TLS: the CA bundle that signed the daemon's certificate (None: the system's)
    certfile: str | None = None  # TLS: this client's certificate (chain), when the daemon asks for one
    keyfile: str | None = None  # TLS: its private key (None: in certfile)
    server_hostname: str | None = None  # TLS: the name the daemon's certificate must carry (None: the address' host)
    verify: bool = True  # TLS: False accepts any certificate -- for tests only, never in production

    @classmethod
    def pick(cls, owner: str, options: dict[str, Any]) -> DeliveryOptions:
        """Take this class' fields out of ``options`` (what is left is the caller's), validated."""
        mine = {f.name for f in fields(cls)}
        taken = {key: options.pop(key) for key in list(options) if key in mine}
        result = cls(**taken)
        result.validate(owner)
        return result

    def validate(self, owner: str) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(f"{owner} policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        for name in ("max_buffer", "window"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{owner} {name} must be a positive int, got {value!r}")
        for name in ("block_timeout", "timeout", "retry_base", "retry_max", "close_timeout", "confirm_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{owner} {name} must be a number of seconds >= 0, got {value!r}")
        for name in ("cafile", "certfile", "keyfile", "server_hostname"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{owner} {name} must be a path or name (str), got {value!r}")
        if self.keyfile and not self.certfile:
            raise ConfigError(f"{owner} keyfile is set without certfile: give the client certificate too")


def known_options(*classes: Any) -> set[str]:
    return {f.name for cls in classes for f in fields(cls)}


def tls_context(options: DeliveryOptions) -> ssl.SSLContext:
    """A client context: TLS 1.2 or later, the daemon's certificate verified (RFC 5425 section 5)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=options.cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if options.certfile:
        context.load_cert_chain(options.certfile, options.keyfile)
    if not options.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def connect(
    address: tuple[str, int], options: DeliveryOptions, context: ssl.SSLContext | None
) -> socket.socket | ssl.SSLSocket:
    """A connected stream socket to ``address``, wrapped in TLS when ``context`` is given."""
    sock = socket.create_connection(address, timeout=options.timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if context is not None:
            return context.wrap_socket(sock, server_hostname=options.server_hostname or address[0])
    except BaseException:
        sock.close()
        raise
    return sock


def close_quietly(sock: socket.socket | None, *, orderly: bool = False) -> None:
    """Close ``sock``; ``orderly``: a TLS socket first sends its close_notify (bounded by its timeout)."""
    if sock is None:
        return
    if orderly and isinstance(sock, ssl.SSLSocket):
        with contextlib.suppress(OSError, ValueError):
            sock.unwrap()
    with contextlib.suppress(OSError):
        sock.close()


class Outbox:
    """A bounded FIFO of encoded messages between ``emit`` and a sender thread.

    ``queued`` holds messages not yet taken; ``in_flight`` those the sender took and
    has not settled (written but unacknowledged, or being written). Both count against
    ``max_buffer``. Every message is numbered in the order it was put, so "is everything
    put before now settled?" is one comparison with the oldest unsettled number.
    """

    def __init__(self, options: DeliveryOptions) -> None:
        self.options = options
        self.cond = threading.Condition(threading.Lock())
        self.queued: deque[tuple[int, bytes]] = deque()
        self.in_flight: dict[int, bytes] = {}  # number -> message, oldest first
        self.next_number = 0
        self.closing = False
        self.dropped = 0  # records the buffer's policy dropped (or close() could not deliver)
        self.settled_count = 0  # records settled by delivery

    def __len__(self) -> int:
        return len(self.queued) + len(self.in_flight)

    # ------------------------------------------------------------ the emitting side

    def put(self, message: bytes) -> bool:
        """Queue ``message``; False when the policy dropped it (counted)."""
        options = self.options
        with self.cond:
            if self.closing:
                self.dropped += 1
                return False
            if len(self.queued) + len(self.in_flight) >= options.max_buffer:
                if options.policy == "drop_oldest" and self.queued:
                    self.queued.popleft()
                    self.dropped += 1
                    self.cond.notify_all()  # the oldest unsettled number may have moved on
                elif options.policy == "block":
                    deadline = time.monotonic() + options.block_timeout
                    while len(self.queued) + len(self.in_flight) >= options.max_buffer and not self.closing:
                        left = deadline - time.monotonic()
                        if left <= 0 or not self.cond.wait(left):
                            break
                    if self.closing or len(self.queued) + len(self.in_flight) >= options.max_buffer:
                        self.dropped += 1
                        return False
                else:
                    self.dropped += 1
                    return False
            was_empty = not self.queued
            self.queued.append((self.next_number, message))
            self.next_number += 1
            if was_empty:
                self.cond.notify_all()
            return True

    def oldest_unsettled(self) -> int:
        """The number of the oldest message not settled yet (``next_number`` when none); lock held."""
        if self.in_flight:
            return next(iter(self.in_flight))
        if self.queued:
            return self.queued[0][0]
        return self.next_number

    def wait_settled(self, timeout: float) -> bool:
        """True once every message put before this call is settled; False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self.cond:
            target = self.next_number
            while self.oldest_unsettled() < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True

    @property
    def unsettled(self) -> int:
        with self.cond:
            return len(self.queued) + len(self.in_flight)

    # ------------------------------------------------------------ the sender thread

    def take(self, max_items: int, max_bytes: int, timeout: float | None) -> list[tuple[int, bytes]]:
        """Move up to ``max_items`` queued messages (about ``max_bytes``) to ``in_flight``; wait for one."""
        with self.cond:
            if not self.queued and not self.closing:
                self.cond.wait(timeout)
            queued = self.queued
            popleft = queued.popleft
            taken = [popleft() for _ in range(min(max_items, len(queued)))]
            if len(taken) > 1 and sum(len(message) for _, message in taken) > max_bytes:
                size, keep = 0, 0
                for keep, (_, message) in enumerate(taken):  # noqa: B007  # keep is used after the loop
                    size += len(message)
                    if size >= max_bytes:
                        break
                queued.extendleft(reversed(taken[keep + 1 :]))  # the rest goes back, in order
                del taken[keep + 1 :]
            if taken:
                self.in_flight.update(taken)
                self.cond.notify_all()  # room for a blocked emit()
            return taken

    def settle(self, numbers: list[int], *, delivered: bool = True) -> None:
        """The messages ``numbers`` are done: delivered, or (``delivered=False``) lost and counted as dropped."""
        with self.cond:
            deque(map(self.in_flight.pop, numbers, repeat(None)), maxlen=0)  # a loop in C
            if delivered:
                self.settled_count += len(numbers)
            else:
                self.dropped += len(numbers)
            self.cond.notify_all()

    def drop_all(self) -> int:
        """Give up on everything held (close timed out): count it as dropped; return how many."""
        with self.cond:
            lost = len(self.queued) + len(self.in_flight)
            self.queued.clear()
            self.in_flight.clear()
            self.dropped += lost
            self.cond.notify_all()
            return lost


def backoff(attempt: int, options: DeliveryOptions) -> float:
    """Seconds to wait before connection attempt ``attempt`` (1 = the first retry)."""
    return float(min(options.retry_max, options.retry_base * 2 ** max(attempt - 1, 0)))
