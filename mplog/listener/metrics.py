"""The listener's Prometheus endpoint: opt-in (``mplog.metrics = "HOST:PORT"``, ``mplog listen --metrics``).

Every value is read from the listener's stats snapshot (:meth:`mplog.listener.loop.Server.snapshot`)
when Prometheus scrapes, by a custom collector on a registry of its own: nothing is
counted twice and nothing is added to the receive loop. Series are per listener, never per
sender: every worker process is a new sender, and a label per sender would grow without
bound. ``prometheus_client`` is an optional dependency (``pip install 'mplog[metrics]'``),
imported only by a listener that serves metrics.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from mplog.exceptions import ConfigError, TransportError
from mplog.transports.base import check_bind_address

__all__ = ["MetricsServer", "parse_address", "start_metrics_server"]

Snapshot = Callable[[], dict[str, Any]]


def parse_address(value: object, *, insecure: bool = False, key: str = "mplog.metrics") -> tuple[str, int]:
    """Check a ``HOST:PORT`` to serve metrics on (``[::1]:9464`` for IPv6); return ``(host, port)``.

    Raises:
        ConfigError: not ``HOST:PORT``, a bad port, a non-loopback host without ``insecure``,
            or ``prometheus_client`` is not installed.
    """
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"{key} must be 'HOST:PORT', e.g. '127.0.0.1:9464', got {value!r}")
    host, _, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(
            f"{key} must be 'HOST:PORT' with a port from 0 to 65535, e.g. '127.0.0.1:9464', got {value!r}"
        )
    try:
        check_bind_address(f"tcp://{_bracketed(host)}:{port_text}", secure=False, insecure_ok=insecure)
    except ConfigError:
        raise ConfigError(
            f"{key} {value!r} serves metrics beyond loopback, in plaintext and to anyone who connects; "
            "bind 127.0.0.1 (and scrape through a tunnel or a local agent), or set mplog.insecure = true "
            "(mplog listen --insecure) to expose them"
        ) from None
    if importlib.util.find_spec("prometheus_client") is None:
        raise ConfigError(f"{key} needs prometheus_client: pip install 'mplog[metrics]' (or remove {key})")
    return host, int(port_text)


def _bracketed(host: str) -> str:
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


class _SnapshotCollector:
    """A prometheus_client collector whose every scrape reads one stats snapshot."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        snap = self._snapshot()
        yield from _record_counters(snap)
        yield from _connection_counters(snap)
        yield from _senders(snap)
        yield from _claim_counters(snap)
        if "unconfirmed" in snap:  # acknowledged delivery (mplog.listener.ack_loop)
            yield from _acknowledged(snap)
        yield from _holding_and_start(snap)


def _counter(name: str, text: str, value: float) -> Any:
    from prometheus_client.core import CounterMetricFamily  # noqa: PLC0415  # optional

    return CounterMetricFamily(f"mplog_{name}", text, value=value)


def _by(name: str, text: str, label: str, values: dict[str, int]) -> Any:
    """A counter with one sample per key of ``values``, labelled ``label``."""
    from prometheus_client.core import CounterMetricFamily  # noqa: PLC0415  # optional

    family = CounterMetricFamily(f"mplog_{name}", text, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def _record_counters(snap: dict[str, Any]) -> Iterator[Any]:
    """What became of the frames and records: received, rejected, dropped, lost, malformed, repaired, failed."""
    yield _counter("frames_received", "Frames received with a valid envelope.", snap.get("frames", 0))
    yield _counter("records_received", "Records dispatched to the handlers.", snap.get("received", 0))
    yield _counter(
        "records_rejected", "Records refused by validation (counted under malformed).", snap.get("rejected", 0)
    )
    yield _counter(
        "records_dropped", "Records the workers dropped by policy, as they report it.", snap.get("dropped", 0)
    )
    yield _counter("gaps", "Numbered records never received (lost between worker and listener).", snap.get("gaps", 0))
    yield _counter("duplicates", "Records received twice (not dispatched again).", snap.get("duplicates", 0))
    yield _by(
        "malformed",
        "Frames (or items) that did not decode or validate, by reason.",
        "reason",
        snap.get("malformed", {}),
    )
    yield _by("repaired", "Records delivered with a bad field replaced, by reason.", "reason", snap.get("repaired", {}))
    yield _by("handler_errors", "Handler failures, by handler.", "handler", snap.get("handler_errors", {}))
    yield _by(
        "handler_dropped",
        "Records a buffering handler had to drop, by handler.",
        "handler",
        snap.get("handler_drops", {}),
    )


def _connection_counters(snap: dict[str, Any]) -> Iterator[Any]:
    """Connections refused (by reason) and other connection events; the supervisor's restarts."""
    connections = snap.get("connections", {})
    refused = {key.removeprefix("refused_"): n for key, n in connections.items() if key.startswith("refused_")}
    yield _by("connections_refused", "Connections refused (auth: key not allowed; protocol; other).", "reason", refused)
    events = {key: n for key, n in connections.items() if not key.startswith("refused_")}
    yield _by("connection_events", "Connection events: handshakes, disconnected.", "event", events)
    yield _counter("restarts", "Times the supervisor restarted the listener process.", snap.get("restarts", 0))


def _claim_counters(snap: dict[str, Any]) -> Iterator[Any]:
    """Frames refused because of the sender they claimed, and their records."""
    yield _by(
        "claims_refused",
        "Frames refused because they claimed a sender not theirs (taken) or jumped past the window (seq_jump).",
        "reason",
        snap.get("claims_refused", {}),
    )
    refused_records = snap.get("claims_refused_records", 0)
    yield _counter("claims_refused_records", "Records in the frames whose claim was refused.", refused_records)


def _holding_and_start(snap: dict[str, Any]) -> Iterator[Any]:
    """Frames held for busy workers (a gauge), the time spent holding, and when the stats began."""
    from prometheus_client.core import GaugeMetricFamily  # noqa: PLC0415  # optional

    held = snap.get("yield", {})
    yield GaugeMetricFamily(
        "mplog_frames_held",
        "Frames held back while the workers keep every CPU busy.",
        value=held.get("held_frames", 0),
    )
    yield _counter("held_seconds", "Time spent holding frames for busy workers.", held.get("held_seconds", 0.0))
    # The moment the stats began, as taken then: now - uptime moved by a little at every scrape,
    # and a changing value reads as a restart (an observability outsider: 5 values in 5 scrapes).
    start = float(snap.get("started") or time.time() - float(snap.get("uptime", 0.0)))
    yield GaugeMetricFamily(
        "mplog_start_time_seconds", "When this listener's stats began, seconds since the epoch.", value=start
    )


def _senders(snap: dict[str, Any]) -> Iterator[Any]:
    """The sender gauges (table, folded, ended without a goodbye) and the folding counters."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # noqa: PLC0415  # optional

    table = snap.get("senders", {})
    folded = snap.get("folded", {})
    senders = GaugeMetricFamily(
        "mplog_senders",
        "Senders seen: in the table, live or closed (said goodbye); folded out of it (mplog.limits.max_senders).",
        labels=["state"],
    )
    closed = sum(1 for sender in table.values() if sender.get("closed"))
    senders.add_metric(["live"], len(table) - closed)
    senders.add_metric(["closed"], closed)
    senders.add_metric(["folded"], max(folded.get("senders", 0) - folded.get("returned", 0), 0))
    yield senders
    unclosed = GaugeMetricFamily(
        "mplog_senders_unclosed",
        "Senders that ended without a goodbye (their last records may be lost, uncounted), by why it is known.",
        labels=["reason"],
    )
    reasons: dict[str, int] = {}
    for sender in table.values():
        why = sender.get("unclosed")
        if why and not sender.get("closed"):
            reasons[why] = reasons.get(why, 0) + 1
    for why, count in sorted(reasons.items()):
        unclosed.add_metric([why.replace(" ", "_")], count)
    yield unclosed
    folds = CounterMetricFamily(
        "mplog_sender_folds",
        "Senders folded out of the table, folded senders heard from again, and those whose place was forgotten.",
        labels=["event"],
    )
    for event, key in (("folded", "senders"), ("returned", "returned"), ("forgotten", "forgotten")):
        folds.add_metric([event], folded.get(key, 0))
    yield folds


def _acknowledged(snap: dict[str, Any]) -> Iterator[Any]:
    """The counters of acknowledged delivery (only a listener with ``ack`` has them)."""
    from prometheus_client.core import CounterMetricFamily  # noqa: PLC0415  # optional

    for name, key, text in (
        ("ack_unconfirmed", "unconfirmed", "Frames not acknowledged: a handler had not confirmed delivery in time."),
        ("ack_out_of_order", "out_of_order", "Frames refused because they came ahead of a gap (the worker resends)."),
        ("ack_rolled_back", "rolled_back", "Half-written frames of a killed listener cut off its files at restart."),
        ("ack_rollback_skipped", "rollback_skipped", "Files such a frame reached that could not be cut back."),
    ):
        yield CounterMetricFamily(f"mplog_{name}", text, value=snap.get(key, 0))
    from prometheus_client.core import GaugeMetricFamily  # noqa: PLC0415  # optional

    # What a full state directory keeps off the disk (mplog.listener.ack_loop.MarksFile).
    state = snap.get("state_on_disk", {})
    for family, name, key, text in (
        (GaugeMetricFamily, "ack_marks_in_memory", "marks_in_memory",
         "Senders whose marks a full state directory keeps in memory only (exactly once is off for them)."),
        (GaugeMetricFamily, "ack_intent_in_memory", "intent_in_memory",
         "1 while a full state directory keeps the write-ahead intent in memory only (a crash may repeat a frame)."),
        (CounterMetricFamily, "ack_slots_refused", "slots_refused",
         "New senders' slots in acked.json that a full state directory refused (each retried)."),
        (CounterMetricFamily, "ack_frames_without_intent", "frames_without_intent",
         "Frames handled without a stored intent because the state directory could not grow the intent file."),
    ):  # fmt: skip
        yield family(f"mplog_{name}", text, value=state.get(key, 0))


_POLL_INTERVAL = 0.02  # how soon close() is noticed (socketserver's default, 0.5 s, made mplog listen slow to stop)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # the stdlib's signature
        pass  # a scrape is not worth a line on the listener's stderr


class MetricsServer:
    """An HTTP server answering ``GET /metrics`` from its own threads until :meth:`close`.

    prometheus_client's WSGI app on a threading ``wsgiref`` server of our own, rather than
    ``start_http_server``: its serving loop polls for shutdown every 0.5 s, which an idle
    ``mplog listen`` then spent on every SIGTERM.
    """

    def __init__(self, host: str, port: int, snapshot: Snapshot) -> None:
        from prometheus_client import CollectorRegistry, make_wsgi_app  # noqa: PLC0415  # optional

        registry = CollectorRegistry()
        registry.register(_SnapshotCollector(snapshot))

        class Server(ThreadingMixIn, WSGIServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
            daemon_threads = True

        try:
            self._server = make_server(host, port, make_wsgi_app(registry), Server, handler_class=_QuietHandler)
        except OSError as exc:
            raise TransportError(f"cannot serve metrics on {_bracketed(host)}:{port}: {exc}") from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(_POLL_INTERVAL,), name="mplog-metrics", daemon=True
        )
        self._thread.start()
        self.url = f"http://{_bracketed(host)}:{self._server.server_port}/metrics"
        self._closed = threading.Event()

    def close(self) -> None:
        """Stop serving; idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)


def start_metrics_server(runtime: dict[str, Any], snapshot: Snapshot) -> MetricsServer | None:
    """Serve ``snapshot`` at ``runtime["metrics"]`` (``HOST:PORT``); None when it is not set.

    Raises:
        ConfigError: a bad address (see :func:`parse_address`).
        TransportError: the address could not be bound.
    """
    address = runtime.get("metrics")
    if not address:
        return None
    host, port = parse_address(address, insecure=bool(runtime.get("insecure", False)))
    return MetricsServer(host, port, snapshot)
