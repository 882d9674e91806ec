"""Listener-side counters and per-sender sequence tracking (gaps, duplicates, drops)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from mplog.wire import FLAG_FINAL, Frame

__all__ = ["SenderStats", "Stats", "ledger", "merge_snapshots"]


@dataclass
class SenderStats:
    """What one sender stream delivered, as this listener saw it."""

    host: str
    pid: int
    start_time: float
    stream: int
    records: int = 0  # records dispatched to handlers
    frames: int = 0
    rejected: int = 0  # records refused by validation (a frame that failed as a whole, or an item that was no record)
    repaired: int = 0  # records delivered with a bad field replaced (mplog.wire_decode.salvage_records)
    dropped: int = 0  # records the sender dropped by policy (it reports a running total)
    gaps: int = 0  # numbered records this listener never received
    duplicates: int = 0  # records received twice (dropped here, not dispatched)
    next_seq: int = 0
    first_seen: float = field(default_factory=time.time)
    last_seen: float = 0.0
    closed: bool = False  # the sender said goodbye (orderly end)


class Stats:
    """Thread-safe counters updated by the receive loop and read by the control channel."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.frames = 0
        self.records = 0
        self.malformed: Counter[str] = Counter()
        self.repaired: Counter[str] = Counter()  # records delivered after a repair, by reason
        self.handler_errors: Counter[str] = Counter()
        self.senders: dict[str, SenderStats] = {}

    def note_malformed(self, reason: str) -> None:
        with self._lock:
            self.malformed[reason] += 1

    def note_handler_error(self, handler_name: str) -> None:
        with self._lock:
            self.handler_errors[handler_name] += 1

    def _sender(self, frame: Frame) -> SenderStats:
        key = frame.sender.key
        stats = self.senders.get(key)
        if stats is None:
            host, pid, start_time, stream = frame.sender
            stats = self.senders[key] = SenderStats(host, pid, float(start_time), stream)
        return stats

    def accept(self, frame: Frame) -> int:
        """Account for a valid frame; return how many leading records are duplicates."""
        n = len(frame.records)
        with self._lock:
            sender = self._sender(frame)
            sender.frames += 1
            sender.last_seen = time.time()
            seq, expected = frame.seq, sender.next_seq
            skip = 0
            if seq > expected:
                sender.gaps += seq - expected
            elif seq < expected:
                skip = min(expected - seq, n)
                sender.duplicates += skip
            sender.next_seq = max(expected, seq + n)
            sender.dropped = max(sender.dropped, frame.dropped)
            sender.records += n - skip
            if frame.flags & FLAG_FINAL:
                sender.closed = True
            self.frames += 1
            self.records += n - skip
        return skip

    def salvaged(self, frame: Frame, records: list[Any], reasons: list[str]) -> None:
        """Amend :meth:`accept` for a frame that went through salvage_records.

        ``records`` and ``reasons`` are the part of the frame that was not a duplicate: a
        record repaired counts under ``repaired[reason]``, an item refused (None) moves from
        ``received`` to ``rejected`` and counts under ``malformed[reason]``.
        """
        with self._lock:
            sender = self._sender(frame)
            for fields, reason in zip(records, reasons, strict=True):
                if not reason:
                    continue
                if fields is None:
                    self.malformed[reason] += 1
                    self.records -= 1
                    sender.records -= 1
                    sender.rejected += 1
                else:
                    self.repaired[reason] += 1
                    sender.repaired += 1

    def reject(self, frame: Frame, reason: str) -> None:
        """Count a frame whose envelope was valid but whose records were not."""
        with self._lock:
            self.malformed[reason] += 1
            sender = self._sender(frame)
            n = len(frame.records)
            seq, expected = frame.seq, sender.next_seq
            if seq > expected:
                sender.gaps += seq - expected
            sender.next_seq = max(expected, seq + n)
            sender.rejected += n
            sender.dropped = max(sender.dropped, frame.dropped)
            sender.last_seen = time.time()

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a snapshot written by an earlier incarnation of this listener.

        Per-sender ``next_seq`` carries over, so records delivered before a restart are
        not counted again as a gap (see mplog.supervisor and docs/reliability.md).
        """
        known = set(SenderStats.__dataclass_fields__)
        with self._lock:
            self.frames += int(state.get("frames", 0))
            self.records += int(state.get("received", 0))
            self.malformed.update({str(k): int(v) for k, v in dict(state.get("malformed", {})).items()})
            self.repaired.update({str(k): int(v) for k, v in dict(state.get("repaired", {})).items()})
            self.handler_errors.update({str(k): int(v) for k, v in dict(state.get("handler_errors", {})).items()})
            for key, values in dict(state.get("senders", {})).items():
                if isinstance(values, dict) and {"host", "pid", "start_time", "stream"} <= set(values):
                    self.senders[str(key)] = SenderStats(**{k: v for k, v in values.items() if k in known})

    def resume_sender(self, key: str, next_seq: int) -> None:
        """Raise a sender's ``next_seq`` to a persisted high-water mark (acknowledged delivery).

        Records below the mark reached the handlers before a crash, so they count as
        received here and a resent copy counts as a duplicate.
        """
        with self._lock:
            sender = self.senders.get(key)
            if sender is None:
                host, pid, stream = key.rsplit("/", 2)
                sender = self.senders[key] = SenderStats(host, int(pid), 0.0, int(stream, 16))
            if next_seq != sender.next_seq:
                delta = next_seq - sender.next_seq
                sender.records += delta
                self.records += delta
                sender.next_seq = next_seq

    def all_closed(self) -> bool:
        """True when every sender seen so far has sent its goodbye frame."""
        with self._lock:
            return all(sender.closed for sender in self.senders.values())

    def snapshot(self) -> dict[str, Any]:
        """Return a JSON-ready copy of every counter."""
        with self._lock:
            senders = {key: asdict(s) for key, s in self.senders.items()}
            malformed = dict(self.malformed)
            repaired = dict(self.repaired)
            handler_errors = dict(self.handler_errors)
            frames, records = self.frames, self.records
        return {
            "uptime": time.time() - self.started,
            "frames": frames,
            "received": records,
            "malformed": malformed,
            "malformed_total": sum(malformed.values()),
            "repaired": repaired,
            "repaired_total": sum(repaired.values()),
            "rejected": sum(s["rejected"] for s in senders.values()),
            "dropped": sum(s["dropped"] for s in senders.values()),
            "gaps": sum(s["gaps"] for s in senders.values()),
            "duplicates": sum(s["duplicates"] for s in senders.values()),
            "handler_errors": handler_errors,
            "senders": senders,
        }


def ledger(snapshot: dict[str, Any], logged: int) -> int:
    """Return the unexplained remainder: logged - received - dropped - rejected - gaps."""
    return int(logged - snapshot["received"] - snapshot["dropped"] - snapshot["rejected"] - snapshot["gaps"])


def merge_snapshots(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine the stats of several collectors that share the same workers (one ledger).

    A worker with several endpoints spreads its frames across collectors, so each one
    sees the others' frames as gaps: summing gaps would count them as lost. Every
    numbered record went to exactly one collector, so per sender the merge takes the
    highest sequence number any collector saw (``next_seq``), sums what was received
    and rejected, and counts as lost only what no collector got:
    ``gaps = next_seq - received - rejected``. ``dropped`` is a running total the
    sender repeats in every frame: the merge keeps the largest report.
    """
    senders: dict[str, dict[str, Any]] = {}
    malformed: Counter[str] = Counter()
    repaired: Counter[str] = Counter()
    handler_errors: Counter[str] = Counter()
    connections: Counter[str] = Counter()
    frames = 0
    for snap in snapshots:
        frames += snap.get("frames", 0)
        malformed.update(snap.get("malformed", {}))
        repaired.update(snap.get("repaired", {}))
        handler_errors.update(snap.get("handler_errors", {}))
        connections.update(snap.get("connections", {}))
        for key, one in snap.get("senders", {}).items():
            merged = senders.get(key)
            if merged is None:
                senders[key] = dict(one)
                continue
            for name in ("records", "frames", "rejected", "duplicates", "repaired"):
                merged[name] = merged.get(name, 0) + one.get(name, 0)
            for name in ("dropped", "next_seq", "last_seen"):
                merged[name] = max(merged[name], one[name])
            merged["first_seen"] = min(merged["first_seen"], one["first_seen"])
            merged["closed"] = merged["closed"] or one["closed"]
    for merged in senders.values():
        merged["gaps"] = max(merged["next_seq"] - merged["records"] - merged["rejected"], 0)
    return {
        "collectors": len(snapshots),
        "frames": frames,
        "received": sum(s["records"] for s in senders.values()),
        "malformed": dict(malformed),
        "malformed_total": sum(malformed.values()),
        "repaired": dict(repaired),
        "repaired_total": sum(repaired.values()),
        "rejected": sum(s["rejected"] for s in senders.values()),
        "dropped": sum(s["dropped"] for s in senders.values()),
        "gaps": sum(s["gaps"] for s in senders.values()),
        "duplicates": sum(s["duplicates"] for s in senders.values()),
        "handler_errors": dict(handler_errors),
        "connections": dict(connections),
        "refused": sum(n for key, n in connections.items() if key.startswith("refused_")),
        "senders": senders,
    }
