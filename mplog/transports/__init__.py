"""Transports move frame bytes between workers and the listener.

``ipc://`` and ``tcp://`` endpoints use ZeroMQ (:mod:`mplog.transports.zeromq`);
``mp://PATH`` endpoints use one ``multiprocessing.connection`` channel per producer
(:mod:`mplog.transports.mpqueue`).
"""

from __future__ import annotations

import os

from mplog.exceptions import ConfigError
from mplog.transports.base import (
    NO_ORIGIN,
    Origin,
    Receiver,
    Sender,
    TransportOptions,
    endpoint_problem,
    make_private_dir,
)

__all__ = [
    "NO_ORIGIN",
    "TRANSPORTS",
    "Origin",
    "Receiver",
    "Sender",
    "TransportOptions",
    "check_endpoint",
    "default_endpoint",
    "open_receiver",
    "open_sender",
    "transport_of",
]

TRANSPORTS = ("zmq", "multiprocessing")


def transport_of(endpoint: str) -> str:
    """Name the transport an endpoint URL belongs to."""
    scheme = endpoint.split("://", 1)[0] if "://" in endpoint else ""
    if scheme in ("ipc", "tcp"):
        return "zmq"
    if scheme == "mp":
        return "multiprocessing"
    raise ConfigError(
        f"endpoint {endpoint!r} has no known scheme; use ipc://PATH or tcp://HOST:PORT (ZeroMQ) or mp://PATH"
    )


def check_endpoint(endpoint: str, key: str, *, connect: bool = False) -> None:
    """Check that ``endpoint`` (each of its comma-separated parts) can be bound (``connect``: connected to) as written.

    Raises:
        ConfigError: naming ``key``, the endpoint and the fix.
    """
    try:
        transport_of(endpoint)
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    for part in (part.strip() for part in endpoint.split(",")):
        problem = endpoint_problem(part, connect=connect) if part else None
        if problem is not None:
            raise ConfigError(f"{key} {part!r}: {problem}")


def default_endpoint(transport: str) -> tuple[str, str]:
    """Return ``(endpoint, private_dir)`` for a listener on this host."""
    if transport not in TRANSPORTS:
        raise ConfigError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
    directory = make_private_dir()
    path = os.path.join(directory, "listener.sock")
    return (f"ipc://{path}" if transport == "zmq" else f"mp://{path}"), directory


def open_sender(endpoint: str, options: TransportOptions | None = None) -> Sender:
    """Open the worker end for ``endpoint`` (lazily: nothing connects until the first send)."""
    options = options or TransportOptions()
    if transport_of(endpoint) == "zmq":
        from mplog.transports.zeromq import ZmqSender  # noqa: PLC0415  # pyzmq loaded only when used

        return ZmqSender(endpoint, options)
    from mplog.transports.mpqueue import MpSender  # noqa: PLC0415  # loaded only when used

    return MpSender(endpoint, options)


def open_receiver(endpoint: str, options: TransportOptions | None = None) -> Receiver:
    """Bind the listener end for ``endpoint``."""
    options = options or TransportOptions()
    if transport_of(endpoint) == "zmq":
        from mplog.transports.zeromq import ZmqReceiver  # noqa: PLC0415  # pyzmq loaded only when used

        return ZmqReceiver(endpoint, options)
    from mplog.transports.mpqueue import MpReceiver  # noqa: PLC0415  # loaded only when used

    return MpReceiver(endpoint, options)
