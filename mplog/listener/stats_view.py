"""A listener's stats as users see them: a dict with typed properties and a one-line ``str()``.

:meth:`mplog.Listener.stats` and :meth:`~mplog.Listener.stop` return a
:class:`ListenerStats`: the snapshot the listener sent, so ``stats["received"]`` and
``stats["senders"][key]["records"]`` keep working and ``json.dumps(stats)`` gives the
whole of it, while ``stats.received`` is an ``int`` and ``print(stats)`` prints one
line (:func:`summary`), the same words ``mplog status`` puts in its head line.
:func:`json_safe` makes any snapshot strict JSON (a NaN that a sender claimed as its
start time becomes ``null``), for ``mplog status --json``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["ListenerStats", "SenderCounts", "json_safe", "printable", "summary"]


def printable(value: object) -> str:
    """``value`` as text fit for a terminal line: control and other unprintable characters escaped.

    Every string a sender chose (its host, process or logger name, its ledger key) goes
    through this before ``mplog status`` or the listener's stderr print it: a host name of
    ``"web1\\n..."`` with ANSI/OSC escapes used to add fake rows to the status table and
    send control sequences to the operator's terminal (test_format_status_puts_a_forged_host_on_one_row_escaped).
    ESC is shown as ``\\x1b``, a newline as ``\\n``, as Python's ``repr`` writes them.
    """
    text = str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _int(mapping: Mapping[str, Any], key: str) -> int:
    value = mapping.get(key, 0)
    return int(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0


def _total(mapping: Mapping[str, Any], key: str) -> int:
    """A counter that the snapshot holds either as a number or as a map of counts by reason."""
    value = mapping.get(key, 0)
    if isinstance(value, Mapping):
        return sum(int(n) for n in value.values() if isinstance(n, (int, float)) and math.isfinite(n))
    return _int(mapping, key)


class SenderCounts(dict[str, Any]):
    """One sender's entry of ``stats["senders"]``, with typed properties."""

    @property
    def host(self) -> str:
        return str(self.get("host", ""))

    @property
    def pid(self) -> int:
        return _int(self, "pid")

    @property
    def stream(self) -> int:
        return _int(self, "stream")

    @property
    def records(self) -> int:
        """Records handed to the handlers."""
        return _int(self, "records")

    @property
    def dropped(self) -> int:
        return _int(self, "dropped")

    @property
    def gaps(self) -> int:
        return _int(self, "gaps")

    @property
    def duplicates(self) -> int:
        return _int(self, "duplicates")

    @property
    def rejected(self) -> int:
        return _int(self, "rejected")

    @property
    def closed(self) -> bool:
        """The sender said goodbye (an orderly end)."""
        return bool(self.get("closed", False))

    @property
    def unclosed(self) -> str:
        """Why its end was never seen (``"process gone"``, ``"silent"``): its last records may be lost; "" if not."""
        return "" if self.closed else str(self.get("unclosed") or "")

    def __str__(self) -> str:
        state = "closed" if self.closed else (f"no goodbye, {self.unclosed}" if self.unclosed else "open")
        return (
            f"{printable(self.host)}/{printable(self.pid)}: {self.records} records, dropped {self.dropped}, "
            f"gaps {self.gaps}, duplicates {self.duplicates}, {state}"
        )


class ListenerStats(dict[str, Any]):
    """A listener's stats snapshot: index it as the dict it is, or read the typed properties.

    ``str()`` is :func:`summary`: one line for people; ``repr()`` and ``json.dumps()``
    show every counter.
    """

    def __init__(self, snapshot: Mapping[str, Any] | None = None) -> None:
        super().__init__(snapshot or {})
        senders = self.get("senders")
        if isinstance(senders, Mapping):
            self["senders"] = {
                key: SenderCounts(value) if isinstance(value, Mapping) else value for key, value in senders.items()
            }

    @property
    def received(self) -> int:
        """Records handed to the handlers."""
        return _int(self, "received")

    @property
    def frames(self) -> int:
        return _int(self, "frames")

    @property
    def dropped(self) -> int:
        """Records the workers dropped by policy (their own count, reported in every frame)."""
        return _int(self, "dropped")

    @property
    def gaps(self) -> int:
        """Numbered records that never arrived."""
        return _int(self, "gaps")

    @property
    def duplicates(self) -> int:
        return _int(self, "duplicates")

    @property
    def rejected(self) -> int:
        return _int(self, "rejected")

    @property
    def malformed(self) -> int:
        """Everything refused by the decoder, all reasons together (``stats["malformed"]`` has them apart)."""
        return _total(self, "malformed")

    @property
    def repaired(self) -> int:
        """Records delivered with a bad field replaced, all reasons together."""
        return _total(self, "repaired")

    @property
    def handler_errors(self) -> int:
        """Handler failures, all handlers together (``stats["handler_errors"]`` has them by handler)."""
        return _total(self, "handler_errors")

    @property
    def handler_drops(self) -> int:
        """Records that arrived but that a buffering handler dropped (``stats["handler_drops"]`` by handler).

        Not in the :func:`~mplog.listener.stats.ledger` (they were received); they never reached their destination.
        """
        return _total(self, "handler_drops")

    @property
    def killed_at_stop(self) -> bool:
        """True when ``Listener.stop()`` had to kill the listener: these are the counts it had then, and what it
        still held is lost uncounted (its open senders are flagged as ended without a goodbye)."""
        return bool(self.get("killed_at_stop", False))

    @property
    def refused(self) -> int:
        """Connections refused (CURVE allow-list, protocol, not ZMTP)."""
        return _int(self, "refused")

    @property
    def claims_refused(self) -> int:
        """Frames refused because they claimed a sender that was not theirs (docs/security.md)."""
        return _int(self, "claims_refused_total")

    @property
    def unclosed(self) -> int:
        """Senders that ended without a goodbye (``stats["senders"][key]["unclosed"]``): possible loss."""
        return _int(self, "unclosed")

    @property
    def unwritten_at_stop(self) -> int:
        """Records that reached the listener but that a stop whose drain ran out of time did not write.

        Counted in their senders' ``rejected`` too; ``Listener.stop(timeout=...)`` sets the drain's time.
        """
        return _int(self, "unwritten_at_stop")

    @property
    def unconfirmed(self) -> int:
        """Acknowledged delivery: frames left unacknowledged because a handler had not confirmed delivery in time."""
        return _int(self, "unconfirmed")

    @property
    def out_of_order(self) -> int:
        """Acknowledged delivery: frames refused because they came ahead of a gap (their worker resends)."""
        return _int(self, "out_of_order")

    @property
    def folded(self) -> int:
        """Senders kept only in the totals, past ``mplog.limits.max_senders`` (not in :attr:`senders`)."""
        folded = self.get("folded")
        if not isinstance(folded, Mapping):
            return 0
        return max(_int(folded, "senders") - _int(folded, "returned"), 0)

    @property
    def senders(self) -> dict[str, SenderCounts]:
        """Per sender stream, keyed ``host/pid/stream``."""
        senders = self.get("senders")
        return dict(senders) if isinstance(senders, Mapping) else {}

    @property
    def uptime(self) -> float:
        value = self.get("uptime", 0.0)
        return float(value) if isinstance(value, (int, float)) else 0.0

    def __str__(self) -> str:
        return summary(self)


def summary(stats: Mapping[str, Any]) -> str:
    """One line for people: what arrived, from how many senders, and every kind of loss or trouble.

    Folded senders, refused connections and claims, senders that ended without a goodbye,
    acknowledged delivery's unconfirmed and out-of-order frames, and handler errors (by
    handler) are named only when there are some.
    """
    view = stats if isinstance(stats, ListenerStats) else ListenerStats(stats)
    senders = view.senders
    closed = sum(1 for sender in senders.values() if isinstance(sender, SenderCounts) and sender.closed)
    folded = f" (+{view.folded} folded)" if view.folded else ""  # past mplog.limits.max_senders: in the totals only
    line = (
        f"received {view.received} records from {len(senders)} senders{folded} ({closed} closed): "
        f"dropped {view.dropped}, gaps {view.gaps}, duplicates {view.duplicates}, "
        f"malformed {view.malformed}, repaired {view.repaired}"
    )
    if view.rejected:  # records of frames refused whole (oversized, over a limit, unwritten at stop)
        line += f", rejected {view.rejected}"
    if view.refused:
        line += f", refused {view.refused} connections"
    if view.claims_refused:  # frames that claimed a sender they may not write to (docs/security.md)
        line += f", refused claims {view.claims_refused}"
    if view.unwritten_at_stop:  # the stop's drain ran out of time: counted, in the senders' rejected too
        line += f", unwritten at stop {view.unwritten_at_stop}"
    if view.unclosed:  # their last records may be lost, with no gap to count them (docs/reliability.md)
        line += f", {view.unclosed} ended without goodbye (possible loss)"
    if view.unconfirmed:  # acknowledged delivery: a destination (rsyslog over RELP) did not confirm in time
        line += f", unconfirmed {view.unconfirmed} frames"
    if view.out_of_order:  # acknowledged delivery: frames ahead of a gap, refused and resent
        line += f", out of order {view.out_of_order} frames (resent)"
    # records that arrived but a buffering handler dropped, by handler
    line += by_handler_text("handler drops", view.get("handler_drops"))
    if view.killed_at_stop:
        line += ", killed at stop (what it still held is lost uncounted)"
    # records that arrived but a handler could not write: last, by handler
    line += by_handler_text("handler errors", view.get("handler_errors"))
    return line


def by_handler_text(label: str, counts: Any) -> str:
    """``, LABEL 501 (file 501)``: a count by handler name, to append to a summary line; '' when there is none.

    ``counts`` is a snapshot's map of counts by handler (a bare number is shown without names).
    """
    if isinstance(counts, (int, float)) and not isinstance(counts, bool):
        return f", {label} {int(counts)}" if math.isfinite(counts) and counts else ""
    if not isinstance(counts, Mapping):
        return ""
    each = {str(k): int(n) for k, n in counts.items() if isinstance(n, (int, float)) and math.isfinite(n) and n}
    if not each:
        return ""
    names = ", ".join(f"{name} {n}" for name, n in sorted(each.items()))
    return f", {label} {sum(each.values())} ({names})"


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None, so that strict JSON can carry it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
