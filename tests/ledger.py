"""The per-sender ledger: every record logged is written, dropped by policy, rejected, or lost in a counted gap.

Built on :func:`helpers.check_lines` (what the output holds) and a listener stats
snapshot (what the listener and the senders counted). For each producer::

    logged == written + dropped + rejected + gaps + unexplained

``written`` counts distinct numbered payloads in the output; duplicates and truncated
lines are reported on their own. A test asserts ``unexplained == 0`` (or states its
bound where a crash makes some loss unavoidable) with :meth:`Ledger.assert_balanced`.

A sender stream that never said goodbye (``unclosed``) may have lost its last records
with no later frame to reveal them as a gap: such an entry is possible loss, never a
clean zero, and :meth:`Ledger.assert_balanced` fails on it unless the test allows it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from helpers import check_lines


@dataclass
class Entry:
    """One producer's account."""

    logged: int
    written: int = 0
    dropped: int = 0  # reported by the sender (its policy)
    rejected: int = 0  # refused by the listener's validation
    gaps: int = 0  # sequence numbers the listener never received
    duplicates: int = 0  # lines written more than once
    listener_duplicates: int = 0  # resent records the listener recognised and skipped
    senders: int = 0  # sender streams of this producer seen by the listener
    unclosed: int = 0  # of those, streams whose goodbye never arrived: their tails may be lost uncounted

    @property
    def unexplained(self) -> int:
        return self.logged - self.written - self.dropped - self.rejected - self.gaps

    @property
    def possible_loss(self) -> bool:
        """True when a stream's end was never seen, whatever the remainder says."""
        return self.unclosed > 0


@dataclass
class Ledger:
    entries: dict[int, Entry] = field(default_factory=dict)
    truncated: int = 0
    garbage: int = 0

    def assert_balanced(
        self, *, max_unexplained: int = 0, min_unexplained: int = 0, max_duplicates: int = 0, max_unclosed: int = 0
    ) -> None:
        """Fail unless each remainder lies in [min_unexplained, max_unexplained], duplicates are bounded
        and at most ``max_unclosed`` of a producer's streams ended without a goodbye."""
        problems = []
        for producer, entry in sorted(self.entries.items()):
            if not min_unexplained <= entry.unexplained <= max_unexplained:
                problems.append(f"producer {producer}: unexplained {entry.unexplained} ({entry})")
            if entry.unclosed > max_unclosed:
                problems.append(
                    f"producer {producer}: possible loss, {entry.unclosed} streams ended without a goodbye ({entry})"
                )
            if entry.duplicates > max_duplicates:
                problems.append(f"producer {producer}: {entry.duplicates} duplicate lines ({entry})")
        if self.truncated:
            problems.append(f"{self.truncated} truncated lines")
        assert not problems, "ledger does not balance: " + "; ".join(problems)

    @property
    def logged(self) -> int:
        return sum(e.logged for e in self.entries.values())

    @property
    def written(self) -> int:
        return sum(e.written for e in self.entries.values())


def _sender_totals(snapshot: dict[str, Any], pids: dict[int, int]) -> dict[int, dict[str, int]]:
    by_pid = {pid: producer for producer, pid in pids.items()}
    totals: dict[int, dict[str, int]] = {
        p: dict.fromkeys(("dropped", "rejected", "gaps", "dup", "n", "unclosed"), 0) for p in pids
    }
    for sender in snapshot.get("senders", {}).values():
        producer = by_pid.get(sender["pid"])
        if producer is None:
            continue
        t = totals[producer]
        t["dropped"] += sender["dropped"]
        t["rejected"] += sender["rejected"]
        t["gaps"] += sender["gaps"]
        t["dup"] += sender["duplicates"]
        t["n"] += 1
        t["unclosed"] += not sender.get("closed", True)  # a snapshot without the key says nothing
    return totals


def build_ledger(
    lines: Iterable[str], logged: dict[int, int], snapshot: dict[str, Any], pids: dict[int, int]
) -> Ledger:
    """Balance ``logged`` (producer -> records logged) against the output ``lines`` and the stats ``snapshot``.

    Args:
        pids: producer -> the pid that logged its records (the listener knows senders by pid).
    """
    check = check_lines(lines, logged)
    ledger = Ledger(truncated=check.truncated, garbage=check.garbage)
    written: dict[int, int] = dict.fromkeys(logged, 0)
    dups: dict[int, int] = dict.fromkeys(logged, 0)
    for (producer, seq), count in check.seen.items():
        if producer in written and seq < logged[producer]:
            written[producer] += 1
            dups[producer] += count - 1
    totals = _sender_totals(snapshot, pids)
    for producer, count in logged.items():
        t = totals.get(producer, {})
        ledger.entries[producer] = Entry(
            logged=count,
            written=written[producer],
            dropped=t.get("dropped", 0),
            rejected=t.get("rejected", 0),
            gaps=t.get("gaps", 0),
            duplicates=dups[producer],
            listener_duplicates=t.get("dup", 0),
            senders=t.get("n", 0),
            unclosed=t.get("unclosed", 0),
        )
    return ledger
