"""The listener's table of senders: one ledger per sender, bounded, with what is folded out of it kept exact.

Whose ledger a frame is booked to (docs/security.md, "Sender identity and the ledger"):
a sender is the ``host/pid/stream`` its frames claim, **namespaced by the CURVE client
key** the handshake proved (:func:`ledger_key`), so that one client key can never touch
another's ledgers; where the transport names connections, the table also remembers the
connection each sender belongs to (``owners``; the rules are :class:`mplog.listener.stats.Stats`').

The table holds at most ``max_senders`` senders. Beyond it the senders closed, then
silent, the longest are *folded*: their counts move into exact totals (``folded``), and
where their stream was (next sequence number, running drop count, connection) is
remembered for the last ``DORMANT_PER_SLOT * max_senders`` of them, so that a sender
heard from again continues where it was. Those places are persisted with every fold
(:mod:`mplog.listener.progress`), so a restarted listener remembers them too. Not
thread-safe: :class:`mplog.listener.stats.Stats` holds its lock around every call.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mplog.wire import Sender

__all__ = [
    "DORMANT_PER_SLOT",
    "SenderLimits",
    "SenderStats",
    "SenderTable",
    "ledger_key",
    "split_ledger_key",
]

DORMANT_PER_SLOT = 4  # folded senders whose place in their stream is remembered, per table slot
# Places kept past that bound while their connection (mp://, the acknowledging ROUTER) still
# speaks for them, per connection: a worker's connection carries one stream, or a few.
KEPT_PER_CONNECTION = 16
_RECHECKED = 4  # kept places looked at again when they are max_senders already
# Per-sender counts that only grow: a folded sender adds its own to the totals.
ADDITIVE = ("records", "frames", "rejected", "repaired", "gaps", "duplicates")
_Z85_KEY_CHARS = 40  # a CURVE public key in Z85


@dataclass(frozen=True)
class SenderLimits:
    """Bounds on the listener's per-sender accounting (``mplog.limits``; docs/security.md).

    ``max_senders``: senders kept one by one in ``stats()["senders"]``; beyond it, the
    least useful (closed, then silent the longest) are folded into exact totals.
    ``max_seq_jump``: the furthest past a sender's next record a frame may start. A
    worker's drops are never numbered, so a real sender jumps only over records lost in
    transit (at most ``sndhwm + rcvhwm`` = 1,008 frames of at most ``max_records`` =
    100,000 records with the defaults, about 10^8) or sent to another collector; 2^32
    leaves room for 40 times that and refuses a claim of 2^64-1.
    """

    max_senders: int = 10_000
    max_seq_jump: int = 2**32


def ledger_key(sender_key: str, peer_key: str = "") -> str:
    """The key a sender's ledger is kept under: ``host/pid/stream``, prefixed by its CURVE client key."""
    return f"{peer_key}|{sender_key}" if peer_key else sender_key


def split_ledger_key(key: str) -> tuple[str, str, int, int]:
    """``(peer_key, host, pid, stream)`` of a key made by :func:`ledger_key`."""
    peer_key = ""
    head, sep, rest = key.partition("|")
    if sep and len(head) == _Z85_KEY_CHARS:
        peer_key, key = head, rest
    host, pid, stream = key.rsplit("/", 2)
    return peer_key, host, int(pid), int(stream, 16)


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
    repaired: int = 0  # records delivered with a bad field replaced (mplog.wire.decode.salvage_records)
    dropped: int = 0  # records the sender dropped by policy (it reports a running total)
    gaps: int = 0  # numbered records this listener never received
    duplicates: int = 0  # records received twice (dropped here, not dispatched)
    next_seq: int = 0
    first_seen: float = field(default_factory=time.time)
    last_seen: float = 0.0
    closed: bool = False  # the sender said goodbye (orderly end)
    peer_key: str = ""  # under CURVE, the client key whose namespace this sender is in
    # Not closed, and known to have ended ("process gone") or silent for a long time ("silent"):
    # its last records may be lost without any gap to count them (mplog.listener.stats.Stats.note_ends).
    unclosed: str = ""
    # The latest ranges [start, end) booked as gaps, oldest first (at most MAX_MISSING_RANGES): a
    # frame that arrives late, wholly inside one, is delivered and taken out of the gaps. Not
    # in snapshots, not persisted (after a restart a late frame counts as a duplicate, as before).
    missing: list[tuple[int, int]] | None = field(default=None, repr=False, compare=False)


class SenderTable:
    """At most ``limits.max_senders`` ledgers by ledger key, and exact totals of those folded out."""

    def __init__(self, limits: SenderLimits) -> None:
        self.limits = limits
        self.senders: dict[str, SenderStats] = {}
        self.owners: dict[str, bytes] = {}  # ledger key -> the connection it belongs to (mp://, ROUTER)
        self.folded: Counter[str] = Counter()  # the ADDITIVE counts and dropped, plus senders, returned, forgotten
        # Folded senders' place in their stream: key -> (next_seq, dropped, closed, owner),
        # oldest fold first; bounded by DORMANT_PER_SLOT * max_senders.
        self._dormant: dict[str, tuple[int, int, bool, bytes]] = {}
        self._dormant_open = 0  # of those, senders that had not said goodbye
        # Folded senders' gap ranges (SenderStats.missing), so that a late frame is booked the
        # same whether its sender was folded meanwhile or not; forgotten with their places.
        self._dormant_missing: dict[str, list[tuple[int, int]]] = {}
        # Called with the key of a folded sender whose place is forgotten: the acknowledging
        # listener drops its persisted mark (mplog.listener.ack_loop.MarksFile).
        self.on_forget: Callable[[str], None] | None = None
        # Called with a folded sender's key, its final ledger and the fold's number
        # (folded["senders"] after it): its slot in the progress file (mplog.listener.progress) is retired.
        self.on_fold: Callable[[str, SenderStats, int], None] | None = None
        # Whether a folded sender's connection still speaks for it (ledger key, connection), set
        # by Stats. A place due to be forgotten is kept instead while it does, at most
        # KEPT_PER_CONNECTION per connection and max_senders in all (_kept): forgetting it let
        # another connection claim a live worker's identity on mp:// and the acknowledging
        # ROUTER (a churn outsider flooded 55,000 one-shot identities through one connection,
        # then wrote as the quiet worker, whose own later records were lost).
        self.still_owned: Callable[[str, bytes], bool] | None = None
        self._kept: dict[str, tuple[int, int, bool, bytes]] = {}
        self._kept_by: Counter[bytes] = Counter()

    def find(self, key: str, sender: Sender, peer_key: str, *, room: bool = True) -> SenderStats | None:
        """The ledger under ``key``, brought back into the table if it was folded; None for a new sender.

        ``room=False`` brings it back without folding others (a restore, which trims once at its end).
        """
        found = self.senders.get(key)
        if found is not None:
            return found
        entry = self._dormant.pop(key, None) or self._unkeep(key)
        if entry is None:
            return None
        next_seq, dropped, closed, owner = entry
        self._dormant_open -= not closed
        self.folded["dropped"] -= dropped  # its running total is the table's again
        self.folded["returned"] += 1
        if owner:
            self.owners[key] = owner
        back = self.add(key, sender, peer_key, room=room)
        back.next_seq, back.dropped, back.closed = next_seq, dropped, closed
        back.missing = self._dormant_missing.pop(key, None)
        return back

    def add(self, key: str, sender: Sender, peer_key: str, *, room: bool = True) -> SenderStats:
        """A new ledger under ``key`` (after folding others if the table is full, unless ``room=False``)."""
        host, pid, start_time, stream = sender
        return self.insert(key, SenderStats(host, pid, float(start_time), stream, peer_key=peer_key), room=room)

    def insert(self, key: str, sender: SenderStats, *, room: bool = True) -> SenderStats:
        """Put ``sender`` in the table under ``key`` (folding others first if the table is full and ``room``)."""
        if room:
            self.make_room()
        self.senders[key] = sender
        return sender

    def places(self) -> list[list[Any]]:
        """The folded senders' places, oldest fold first: ``[key, next_seq, dropped, closed]`` (for the checkpoint)."""
        places = (*self._kept.items(), *self._dormant.items())
        return [[key, next_seq, dropped, closed] for key, (next_seq, dropped, closed, _) in places]

    def restore_places(self, places: list[list[Any]], *, forget: bool = True) -> None:
        """Remember the places :meth:`places` listed (a restart: connections are new, so no owners).

        ``forget=False``: keep every place for now (a restore, which calls :meth:`trim` at its end).
        """
        for item in places:
            if not (isinstance(item, (list, tuple)) and len(item) == 4 and isinstance(item[0], str)):
                continue
            key, next_seq, dropped, closed = item
            if key in self.senders or not isinstance(next_seq, int) or not isinstance(dropped, int):
                continue
            old = self._dormant.pop(key, None) or self._unkeep(key)
            if old is not None:
                self._dormant_open -= not old[2]
            self._dormant[key] = (next_seq, dropped, bool(closed), b"")
            self._dormant_open += not closed
        if forget:
            self._forget_beyond()

    def place(self, key: str) -> tuple[int, bytes, tuple[str, int, float]]:
        """``(next_seq, owner, (host, pid, start_time))`` of the sender under ``key``, folded or not (0 if unknown)."""
        sender = self.senders.get(key)
        if sender is not None:
            return sender.next_seq, self.owners.get(key, b""), (sender.host, sender.pid, sender.start_time)
        next_seq, _, _, owner = self._dormant.get(key) or self._kept.get(key) or (0, 0, False, b"")
        _, host, pid, _ = split_ledger_key(key)
        return next_seq, owner, (host, pid, 0.0)  # a folded sender's start time is not kept: its pid alone

    def known(self, key: str) -> bool:
        return key in self.senders or key in self._dormant or key in self._kept

    def all_closed(self) -> bool:
        return not self._dormant_open and all(sender.closed for sender in self.senders.values())

    def folded_counts(self) -> dict[str, int]:
        """The folded totals, every name present, with ``dormant``: the places remembered now."""
        counts = dict.fromkeys((*ADDITIVE, "dropped", "senders", "returned", "forgotten"), 0)
        counts.update(self.folded)
        counts["dormant"] = len(self._dormant) + len(self._kept)
        return counts

    def trim(self) -> None:
        """Fold until the table holds at most ``max_senders``, then forget the places past their bound (a restore)."""
        excess = len(self.senders) - self.limits.max_senders
        if excess > 0:
            for key, sender in heapq.nsmallest(excess, self.senders.items(), key=_fold_order):
                self.fold(key, sender, forget=False)
        self._forget_beyond()

    def make_room(self) -> None:
        """Fold senders until one more fits: closed ones first, then those silent the longest.

        A tenth of the table goes at once, so the choice (one pass over the table) costs a
        fraction of a pass per sender added.
        """
        limit = self.limits.max_senders
        if len(self.senders) < limit:
            return
        count = min(len(self.senders), max(len(self.senders) - limit + 1, limit // 10))
        for key, sender in heapq.nsmallest(count, self.senders.items(), key=_fold_order):
            self.fold(key, sender)

    def fold(self, key: str, sender: SenderStats, *, forget: bool = True) -> None:
        """Move ``sender`` (the ledger under ``key``) out of the table into the totals, remembering its place.

        ``forget=False`` keeps every place for now (a restore replaying folds, which calls :meth:`trim` at its end).
        """
        del self.senders[key]
        folded = self.folded
        for name in ADDITIVE:
            folded[name] += getattr(sender, name)
        folded["dropped"] += sender.dropped
        folded["senders"] += 1
        older = self._dormant.pop(key, None) or self._unkeep(key)  # (a restore may fold one whose place it has)
        if older is not None:
            self._dormant_open -= not older[2]
        self._dormant[key] = (sender.next_seq, sender.dropped, sender.closed, self.owners.pop(key, b""))
        self._dormant_open += not sender.closed
        if sender.missing:
            self._dormant_missing[key] = sender.missing
        if self.on_fold is not None:
            self.on_fold(key, sender, folded["senders"])
        if forget:
            self._forget_beyond()

    def _forget_beyond(self) -> None:
        """Forget the oldest places past ``DORMANT_PER_SLOT * max_senders`` (keeping those still owned, see _keep)."""
        limit = DORMANT_PER_SLOT * self.limits.max_senders
        while len(self._dormant) > limit:
            oldest = next(iter(self._dormant))
            entry = self._dormant.pop(oldest)
            if not self._keep(oldest, entry):
                self._forget(oldest, entry)

    def _keep(self, key: str, entry: tuple[int, int, bool, bytes]) -> bool:
        """Keep the place of a sender whose connection still speaks for it, within the bounds; True if kept."""
        owner, closed = entry[3], entry[2]
        if not owner or closed or self.still_owned is None or self._kept_by[owner] >= KEPT_PER_CONNECTION:
            return False
        if not self.still_owned(key, owner):
            return False
        if len(self._kept) >= self.limits.max_senders:
            # Full: the oldest few are looked at again (a few each time, so that a flood costs
            # no pass over them all). Those whose connection ended are forgotten; the others go
            # to the back. Still full: this one is not kept. First come keeps, so a flood keeps
            # nothing of a worker's that was kept before it (docs/security.md).
            for other in list(itertools.islice(self._kept, _RECHECKED)):
                if self.still_owned(other, self._kept[other][3]):
                    self._kept[other] = self._kept.pop(other)  # to the back
                else:
                    self._forget(other, self._kept[other])
                    self._unkeep(other)
            if len(self._kept) >= self.limits.max_senders:
                return False
        self._kept[key] = entry
        self._kept_by[owner] += 1
        return True

    def _unkeep(self, key: str) -> tuple[int, int, bool, bytes] | None:
        entry = self._kept.pop(key, None)
        if entry is not None:
            owner = entry[3]
            self._kept_by[owner] -= 1
            if not self._kept_by[owner]:
                del self._kept_by[owner]
        return entry

    def _forget(self, key: str, entry: tuple[int, int, bool, bytes]) -> None:
        self._dormant_open -= not entry[2]
        self._dormant_missing.pop(key, None)
        self.folded["forgotten"] += 1
        if self.on_forget is not None:
            self.on_forget(key)


def _fold_order(item: tuple[str, SenderStats]) -> tuple[bool, float]:
    """Closed senders first, then the longest silent."""
    sender = item[1]
    return (not sender.closed, sender.last_seen)
