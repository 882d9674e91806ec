"""Listener-side counters and per-sender sequence tracking (gaps, duplicates, drops).

Whose ledger a frame is booked to (docs/security.md, "Sender identity and the ledger"):
the sender its frames claim, in the namespace of its CURVE client key
(:func:`~mplog.listener.sender_table.ledger_key`). Where the transport names connections
(``mp://``, the acknowledging ROUTER), a sender also **belongs to the connection that
opened it** while that connection still holds it: a frame claiming it from another
connection is refused and counted (``claims_refused["taken"]``). A frame starting more
than ``max_seq_jump`` records past the sender's next record is refused and counted
(``claims_refused["seq_jump"]``), never booked as gaps. Both checks cost a few dictionary
lookups per frame, nothing per record. The table of senders is bounded
(:mod:`mplog.listener.sender_table`); the totals stay exact.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from mplog.listener.progress import Progress
from mplog.listener.sender_table import SenderLimits, SenderStats, SenderTable, ledger_key, split_ledger_key
from mplog.transports.base import NO_ORIGIN, Origin
from mplog.wire import FLAG_FINAL, Frame, Sender

__all__ = ["CONNECTION_ENDED", "Balance", "SenderLimits", "SenderStats", "Stats", "ledger", "merge_snapshots"]

PROCESS_GONE = "process gone"  # SenderStats.unclosed: its process (on this host) ended without a goodbye
SILENT = "silent"  # SenderStats.unclosed: nothing from it for SILENT_AFTER seconds (a sender on another host)
UNWRITTEN_AT_STOP = "unwritten_at_stop"  # Stats.reject reason: a valid frame a stop's drain had no time to write
CONNECTION_ENDED = "connection ended"  # SenderStats.unclosed: its connection (mp://, the ack ROUTER) ended
# SenderStats.unclosed: still open when this listener stopped; what it sent after the stop's
# drain is lost with the listener's socket (uncounted), so its end is possible loss.
OPEN_AT_STOP = "open at stop"
_STICKY = (CONNECTION_ENDED, OPEN_AT_STOP)  # kept until the sender sends again or its process is gone
SILENT_AFTER = 300.0  # seconds without a frame after which a sender whose process cannot be checked counts as ended
SWEEP_INTERVAL = 1.0  # seconds between two looks for senders that ended without a goodbye
# A sender whose process is gone may still have frames (its goodbye among them) queued in the
# listener while it catches up: it is flagged only once the receive loop has found nothing
# waiting since its process was first seen gone (Stats.idle_passes), or once nothing has come
# from it for this many seconds (a receive loop that never reports idleness, a hold).
GONE_QUIET = 10.0
# Gap ranges kept per sender for frames that arrive late (a connection dropped and made again
# while the old one still held frames: the listener reads both); older ranges are forgotten.
# Few: a remade connection leaves one or two, and a collector that shares a sender's frames
# with others sees every other frame as a gap (8 ranges x 10,000 senders: about 9 MB at most).
MAX_MISSING_RANGES = 8

_TOTALS = ("rejected", "dropped", "gaps", "duplicates")  # what snapshot() sums over senders, folded ones included

OwnerCheck = Callable[[bytes, str, int, float], bool]  # (connection, host, pid, start_time) -> still owned


def _end_verdicts(candidates: list[tuple[str, str, int, float, float]]) -> dict[str, str]:
    """Sender key -> PROCESS_GONE, SILENT or "" (not ended) for each (key, host, pid, start time, last seen).

    A sender on this host is checked by its process (pid and start time); any other is
    SILENT after ``SILENT_AFTER`` seconds without a frame.
    """
    here, wall = socket.gethostname(), time.time()
    verdicts = {}
    for key, host, pid, start_time, seen in candidates:
        if host == here and start_time > 0:
            verdicts[key] = "" if _process_alive(pid, start_time) else PROCESS_GONE
        else:
            verdicts[key] = SILENT if wall - seen > SILENT_AFTER else ""
    return verdicts


class Stats:
    """Thread-safe counters updated by the receive loop and read by the control channel.

    Args:
        limits: the bounds of the per-sender table and of a sequence jump.
        still_owned: ``(connection, host, pid, start_time) -> bool``, whether the connection
            that opened a sender still speaks for it (the listener asks its receiver whether
            that connection is open and, for a sender on this host, whether its process still
            runs: a forked child can keep a dead worker's connection open). Asked only when a
            second connection claims a sender; without it, never.
    """

    def __init__(self, limits: SenderLimits | None = None, still_owned: OwnerCheck | None = None) -> None:
        self._lock = threading.Lock()
        self.limits = limits or SenderLimits()
        self._still_owned = still_owned or _never_owned
        self.started = time.time()  # the epoch time shown (mplog_start_time_seconds): fixed once taken
        self._started_at = time.monotonic()  # uptime: a step of the wall clock neither shrinks nor stretches it
        self.frames = 0
        self.records = 0
        self.malformed: Counter[str] = Counter()
        self.repaired: Counter[str] = Counter()  # records delivered after a repair, by reason
        self.handler_errors: Counter[str] = Counter()
        self.table = SenderTable(self.limits)
        self.table.still_owned = self._place_still_owned
        self.senders = self.table.senders  # the ledgers by ledger key (those not folded)
        # Frames whose claim on a sender was refused, by why (taken, seq_jump), and their records.
        self.claims_refused: Counter[str] = Counter()
        self.claims_refused_records = 0
        self.unwritten_at_stop = 0  # records a stop's drain had no time to write (Server.drain)
        # The sender the last frame accepted or rejected was booked to, and its ledger key: the
        # receive loop persists that ledger once the frame is dispatched (mplog.listener.progress).
        self.booked_key = ""
        self.booked: SenderStats | None = None
        self._swept = 0.0  # time.monotonic() of the last look for senders that ended without a goodbye
        # How many times the receive loop found nothing waiting (mplog.listener.loop); and, for
        # each open sender whose process was seen gone, that count when it was first seen so.
        self.idle_passes = 0
        self._gone_seen: dict[str, int] = {}

    def note_malformed(self, reason: str) -> None:
        with self._lock:
            self.malformed[reason] += 1

    def note_handler_error(self, handler_name: str) -> None:
        with self._lock:
            self.handler_errors[handler_name] += 1

    # ------------------------------------------------------------ whose ledger a frame is booked to

    def _claim(self, frame: Frame, origin: Origin) -> SenderStats | None:
        """The sender ``frame`` is booked to, or None when its claim is refused (and counted); lock held."""
        table = self.table
        key = ledger_key(frame.sender.key, origin.peer_key)
        sender = table.find(key, frame.sender, origin.peer_key)
        if sender is not None:
            next_seq, who = sender.next_seq, (sender.host, sender.pid, sender.start_time)
        else:
            next_seq, who = 0, (frame.sender.host, frame.sender.pid, float(frame.sender.start_time))
        reason = self._refusal(next_seq, table.owners.get(key, b""), frame.seq, origin.connection, who)
        if reason:
            self._refuse(reason, len(frame.records))
            return None
        if sender is None:
            sender = table.add(key, frame.sender, origin.peer_key)
        if origin.connection:
            table.owners[key] = origin.connection
            if sender.unclosed == CONNECTION_ENDED:  # back on a new connection (the check only when flagged)
                sender.unclosed = ""
        if sender.unclosed == OPEN_AT_STOP:  # it sends to a restarted listener: its end is ahead again
            sender.unclosed = ""
        self.booked_key, self.booked = key, sender
        return sender

    def _place_still_owned(self, key: str, connection: bytes) -> bool:
        """Whether ``connection`` still speaks for the folded sender under ``key`` (its place is then kept)."""
        _, host, pid, _ = split_ledger_key(key)
        return self._still_owned(connection, host, pid, 0.0)

    def _refusal(self, next_seq: int, owner: bytes, seq: int, connection: bytes, who: tuple[str, int, float]) -> str:
        """Why a frame starting at ``seq`` from ``connection`` may not be booked to sender ``who``, or ""; lock held."""
        if seq - next_seq > self.limits.max_seq_jump:
            return "seq_jump"
        # Slow path, a second connection claims a sender: refused while the first still holds it.
        if connection and owner and owner != connection and self._still_owned(owner, *who):
            return "taken"
        return ""

    def _refuse(self, reason: str, records: int) -> None:
        self.claims_refused[reason] += 1
        self.claims_refused_records += records

    def refuse_claim(self, key: str, seq: int, records: int, origin: Origin) -> bool:
        """Check a frame's claim before it is handled (acknowledged delivery); True when refused, and counted.

        :meth:`accept` checks the same again; a frame that passes here passes there.
        """
        with self._lock:
            next_seq, owner, who = self.table.place(key)
            reason = self._refusal(next_seq, owner, seq, origin.connection, who)
            if reason:
                self._refuse(reason, records)
            return bool(reason)

    # ------------------------------------------------------------ accounting

    def accept(self, frame: Frame, origin: Origin = NO_ORIGIN) -> int | None:
        """Account for a valid frame that came from ``origin``.

        Returns:
            How many leading records are duplicates (not to be dispatched), or None when
            the frame's claim on its sender was refused: nothing of it is to be dispatched.
        """
        n = len(frame.records)
        with self._lock:
            sender = self._claim(frame, origin)
            if sender is None:
                return None
            sender.frames += 1
            sender.last_seen = time.time()
            seq, expected = frame.seq, sender.next_seq
            skip = 0
            if seq > expected:
                sender.gaps += seq - expected
                _note_missing(sender, expected, seq)
            elif seq < expected:
                if n and _fill_missing(sender, seq, seq + n):  # late, not a duplicate: booked as a gap before
                    sender.gaps -= n
                else:
                    skip = min(expected - seq, n)
                    sender.duplicates += skip
            sender.next_seq = max(expected, seq + n)
            sender.dropped = max(sender.dropped, frame.dropped)
            sender.records += n - skip
            if frame.flags & FLAG_FINAL:
                sender.closed = True
                sender.unclosed = ""
            self.frames += 1
            self.records += n - skip
        return skip

    def salvaged(self, frame: Frame, records: list[Any], reasons: list[str], origin: Origin = NO_ORIGIN) -> None:
        """Amend :meth:`accept` for a frame that went through salvage_records.

        ``records`` and ``reasons`` are the part of the frame that was not a duplicate: a
        record repaired counts under ``repaired[reason]``, an item refused (None) moves from
        ``received`` to ``rejected`` and counts under ``malformed[reason]``.
        """
        with self._lock:
            sender = self.senders.get(ledger_key(frame.sender.key, origin.peer_key))
            for fields, reason in zip(records, reasons, strict=True):
                if not reason:
                    continue
                if fields is None:
                    self.malformed[reason] += 1
                    self.records -= 1
                    if sender is not None:
                        sender.records -= 1
                        sender.rejected += 1
                    else:  # folded since accept() (another thread made room): the totals stay exact
                        self.table.folded["records"] -= 1
                        self.table.folded["rejected"] += 1
                else:
                    self.repaired[reason] += 1
                    if sender is not None:
                        sender.repaired += 1
                    else:
                        self.table.folded["repaired"] += 1

    def reject(self, frame: Frame, reason: str, origin: Origin = NO_ORIGIN, records: int | None = None) -> bool:
        """Count a frame whose envelope was valid but whose records were not; False when its claim was refused.

        ``records``: how many records the frame holds when ``frame.records`` does not
        (a frame refused whole, of which only the envelope was read). ``reason``
        :data:`UNWRITTEN_AT_STOP`: a valid frame a stop left unwritten, counted in
        ``unwritten_at_stop`` rather than as malformed.
        """
        with self._lock:
            if reason == UNWRITTEN_AT_STOP:
                self.unwritten_at_stop += records if records is not None else len(frame.records)
            else:
                self.malformed[reason] += 1
            sender = self._claim(frame, origin)
            if sender is None:
                return False
            n = len(frame.records) if records is None else records
            seq, expected = frame.seq, sender.next_seq
            if seq > expected:
                sender.gaps += seq - expected
                _note_missing(sender, expected, seq)
            elif seq < expected and n and _fill_missing(sender, seq, seq + n):
                sender.gaps -= n  # late: booked as a gap before, rejected now
            sender.next_seq = max(expected, seq + n)
            sender.rejected += n
            sender.dropped = max(sender.dropped, frame.dropped)
            sender.last_seen = time.time()
        return True

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a snapshot written by an earlier incarnation of this listener.

        Per-sender ``next_seq`` carries over, so records delivered before a restart are
        not counted again as a gap (see mplog.listener.supervisor and docs/reliability.md). The
        folded totals and refused claims carry over too; the folded senders' places come
        from the progress file (:meth:`apply_progress`).
        """
        known = set(SenderStats.__dataclass_fields__)
        with self._lock:
            self.frames += int(state.get("frames", 0))
            self.records += int(state.get("received", 0))
            self.malformed.update({str(k): int(v) for k, v in dict(state.get("malformed", {})).items()})
            self.repaired.update({str(k): int(v) for k, v in dict(state.get("repaired", {})).items()})
            self.handler_errors.update({str(k): int(v) for k, v in dict(state.get("handler_errors", {})).items()})
            self.claims_refused.update({str(k): int(v) for k, v in dict(state.get("claims_refused", {})).items()})
            self.claims_refused_records += int(state.get("claims_refused_records", 0))
            folded = dict(state.get("folded", {}))
            self.table.folded.update({str(k): int(v) for k, v in folded.items() if k != "dormant"})
            for key, values in dict(state.get("senders", {})).items():
                if isinstance(values, dict) and {"host", "pid", "start_time", "stream"} <= set(values):
                    self.table.insert(str(key), SenderStats(**{k: v for k, v in values.items() if k in known}))

    def apply_progress(self, ledgers: list[Progress], folds: list[Progress], folds_counted: int) -> None:
        """Bring the senders to the ledgers the last listener persisted with its last frames (mplog.listener.progress).

        Call after :meth:`restore`. ``folds`` are the fold records, oldest first;
        ``folds_counted`` is how many folds the restored checkpoint counts (its
        ``folded["senders"]``). A fold it does not count is done again, with the
        sender's final ledger; one it counts only says where that sender's stream was,
        if it has not come back since. Then each sender of the table gets its own
        ledger, unless it was folded after its slot was opened. The totals follow.
        """
        with self._lock:
            table = self.table
            in_checkpoint = set(table.senders)
            last_fold: dict[str, int] = {}
            for record in folds:
                last_fold[record.key] = record.fold
                if record.fold > folds_counted:
                    table.fold(record.key, self._ledger_of(record), forget=False)
                elif record.key not in in_checkpoint:  # else it came back before the checkpoint
                    table.restore_places([[record.key, record.next_seq, record.dropped, record.closed]], forget=False)
            for record in ledgers:
                if record.fold >= last_fold.get(record.key, 0):  # (an older slot: the sender was folded since)
                    self._ledger_of(record)
            table.trim()
            folded = table.folded
            self.records = sum(s.records for s in table.senders.values()) + folded["records"]
            self.frames = sum(s.frames for s in table.senders.values()) + folded["frames"]

    def _ledger_of(self, record: Progress) -> SenderStats:
        """The sender ``record`` belongs to, in the table (brought back if folded), given that ledger; lock held."""
        peer_key, host, pid, stream = split_ledger_key(record.key)
        identity = Sender(host, pid, record.start_time, stream)
        table = self.table
        sender = table.find(record.key, identity, peer_key, room=False)
        if sender is None:
            sender = table.add(record.key, identity, peer_key, room=False)
        record.apply(sender)
        return sender

    def next_seq_of(self, key: str) -> int | None:
        """The next record expected from the sender under ledger ``key`` (folded or not); None if unknown."""
        with self._lock:
            return self.table.place(key)[0] if self.table.known(key) else None

    def resume_sender(self, key: str, next_seq: int) -> None:
        """Raise a sender's ``next_seq`` to a persisted high-water mark (acknowledged delivery).

        Records below the mark reached the handlers before a crash, so they count as
        received here and a resent copy counts as a duplicate.
        """
        peer_key, host, pid, stream = split_ledger_key(key)
        identity = Sender(host, pid, 0.0, stream)
        with self._lock:
            sender = self.table.find(key, identity, peer_key) or self.table.add(key, identity, peer_key)
            if next_seq != sender.next_seq:
                delta = next_seq - sender.next_seq
                sender.records += delta
                self.records += delta
                sender.next_seq = next_seq

    def all_closed(self) -> bool:
        """True when every sender seen so far has sent its goodbye frame (folded ones included)."""
        with self._lock:
            return self.table.all_closed()

    def note_ends(self, *, now: bool = False) -> int:
        """Flag the senders that ended without a goodbye (:attr:`SenderStats.unclosed`); return how many are flagged.

        A sender on this host has ended when its process is gone (pid and start time, so a
        reused pid is not mistaken for it); one whose process cannot be checked (another
        host) counts as ended after ``SILENT_AFTER`` seconds without a frame, and is open
        again when it sends. One whose connection ended (:meth:`note_connection_ends`)
        stays so until it sends again, or its process is found gone. Looks at most every
        ``SWEEP_INTERVAL`` seconds unless ``now``; the process checks run outside the lock,
        so the receive loop never waits for them.
        Senders folded out of the table (:mod:`mplog.listener.sender_table`) are not looked at.
        """
        tick = time.monotonic()
        if not now and tick - self._swept < SWEEP_INTERVAL:
            with self._lock:
                return sum(1 for s in self.senders.values() if s.unclosed and not s.closed)
        self._swept = tick
        with self._lock:
            candidates = [
                (key, s.host, s.pid, s.start_time, max(s.last_seen, s.first_seen))
                for key, s in self.senders.items()
                if not s.closed and s.unclosed != PROCESS_GONE
            ]
        idle = self.idle_passes  # read before the process checks: what was queued then has been read
        verdicts = _end_verdicts(candidates)  # outside the lock: process checks
        with self._lock:
            if not now:
                self._hold_back_queued(verdicts, {c[0]: c[4] for c in candidates}, idle)
            return self._apply_end_verdicts(verdicts)

    def _hold_back_queued(self, verdicts: dict[str, str], last_seen: dict[str, float], idle: int) -> None:
        """Turn PROCESS_GONE into "" for a sender whose frames may still be queued here (lock held).

        Its process is gone, but the listener may be behind, its goodbye still waiting in a
        queue (an outsider saw "ended without goodbye" 1 s after clean exits, the listener
        still writing their records). It is flagged once the receive loop has come back empty
        since its process was first seen gone, or after GONE_QUIET seconds without a frame.
        """
        seen, wall = self._gone_seen, time.time()
        for key in [k for k in seen if verdicts.get(k) != PROCESS_GONE]:
            del seen[key]  # closed, flagged, folded or alive: forgotten
        for key, verdict in verdicts.items():
            if verdict != PROCESS_GONE:
                continue
            first = seen.setdefault(key, idle)
            if idle == first and wall - last_seen[key] < GONE_QUIET:
                verdicts[key] = ""
            else:
                seen.pop(key, None)

    def flag_open_at_stop(self) -> int:
        """Flag every sender still open when the stop's drain ended (``unclosed = "open at stop"``); return how many.

        A sender that is still running may hand frames to its socket after the drain: they
        are lost with the listener's socket and no gap will count them, so its end is
        possible loss, as a sender whose process is gone.
        """
        with self._lock:
            flagged = 0
            for sender in self.senders.values():
                if not sender.closed and not sender.unclosed:
                    sender.unclosed = OPEN_AT_STOP
                    flagged += 1
            return flagged

    def _apply_end_verdicts(self, verdicts: dict[str, str]) -> int:
        """Set each sender's ``unclosed`` from ``verdicts``; return how many open senders are flagged (lock held)."""
        for key, verdict in verdicts.items():
            sender = self.senders.get(key)
            # "connection ended" and "open at stop" stay until the sender sends again, unless its process is gone.
            if sender is not None and (sender.unclosed not in _STICKY or verdict == PROCESS_GONE):
                sender.unclosed = verdict
        flagged = 0
        for sender in self.senders.values():
            if sender.closed:
                sender.unclosed = ""  # its goodbye came after all (a backlog)
            elif sender.unclosed:
                flagged += 1
        return flagged

    def note_connection_ends(self, connected: Callable[[bytes], bool]) -> int:
        """Flag the open senders whose connection has ended (``unclosed = "connection ended"``); return how many.

        Called by the receive loop when its receiver says a connection ended (mp://, the
        acknowledging ROUTER), never per frame: ``connected`` is asked once per
        connection that owns a sender still open, outside the lock.
        """
        with self._lock:
            owners = {self.table.owners.get(key, b"") for key, s in self.senders.items() if not s.closed}
        owners.discard(b"")
        ended = {connection for connection in owners if not connected(connection)}
        if not ended:
            return 0
        flagged = 0
        with self._lock:
            owner_of = self.table.owners
            for key, sender in self.senders.items():
                if not sender.closed and not sender.unclosed and owner_of.get(key, b"") in ended:
                    sender.unclosed = CONNECTION_ENDED
                    flagged += 1
        return flagged

    def snapshot(self) -> dict[str, Any]:
        """Return a JSON-ready copy of every counter."""
        unclosed = self.note_ends()
        with self._lock:
            # A shallow copy of each sender's fields (asdict() would deep-copy, ten times slower).
            senders = {key: _public(s) for key, s in self.senders.items()}
            totals = dict.fromkeys(_TOTALS, 0)
            for s in self.senders.values():
                totals["rejected"] += s.rejected
                totals["dropped"] += s.dropped
                totals["gaps"] += s.gaps
                totals["duplicates"] += s.duplicates
            folded = self.table.folded_counts()
            claims = dict(self.claims_refused)
            claims_records = self.claims_refused_records
            malformed = dict(self.malformed)
            repaired = dict(self.repaired)
            handler_errors = dict(self.handler_errors)
            frames, records = self.frames, self.records
        return {
            "uptime": time.monotonic() - self._started_at,
            "started": self.started,
            "frames": frames,
            "received": records,
            "malformed": malformed,
            "malformed_total": sum(malformed.values()),
            "repaired": repaired,
            "repaired_total": sum(repaired.values()),
            **{name: totals[name] + folded[name] for name in _TOTALS},
            "handler_errors": handler_errors,
            "claims_refused": claims,
            "claims_refused_total": sum(claims.values()),
            "claims_refused_records": claims_records,
            "folded": folded,
            "unclosed": unclosed,  # senders that ended without a goodbye: their last records may be lost
            # records that reached this listener but that a stop whose drain ran out of time did not
            # write: in their senders' ``rejected`` as well, so that the ledger balances
            "unwritten_at_stop": self.unwritten_at_stop,
            "senders": senders,
        }


def _never_owned(connection: bytes, host: str, pid: int, start_time: float) -> bool:
    return False


def _process_alive(pid: int, start_time: float) -> bool:
    """True if process ``pid`` runs on this host and started at ``start_time`` (within a second)."""
    import psutil  # noqa: PLC0415  # only the listener looks at processes

    try:
        process = psutil.Process(pid)
        started: float = process.create_time()
        return abs(started - start_time) < 1.0 and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:  # gone, or not ours to inspect
        return False


class Balance(int):
    """What :func:`ledger` returns: the unexplained remainder (an ``int``), and the senders whose end was never seen.

    A sender that ended without a goodbye (``unclosed``) may have lost its last records
    with no later frame to reveal them as a gap: part or all of the remainder can be
    that loss, and even a remainder of 0 only holds for the records logged that the
    caller counted. ``possible_loss`` says so; the repr names it.
    """

    unclosed: int  # senders that ended without a goodbye

    def __new__(cls, remainder: int, unclosed: int = 0) -> Balance:
        balance = super().__new__(cls, remainder)
        balance.unclosed = unclosed
        return balance

    @property
    def possible_loss(self) -> bool:
        """True when a sender's end was never seen: its last records may be lost, uncounted."""
        return self.unclosed > 0

    def __repr__(self) -> str:
        if not self.unclosed:
            return f"Balance({int(self)})"
        return f"Balance({int(self)}, possible loss: {self.unclosed} senders ended without a goodbye)"


def ledger(snapshot: dict[str, Any], logged: int) -> Balance:
    """Return the unexplained remainder: logged - received - dropped - rejected - gaps.

    The result is an ``int`` (0 when every record logged is accounted for) that also
    carries how many senders ended without a goodbye (``.unclosed``, ``.possible_loss``):
    records such a sender logged last may be lost without a gap to count them.
    """
    remainder = int(logged - snapshot["received"] - snapshot["dropped"] - snapshot["rejected"] - snapshot["gaps"])
    senders = snapshot.get("senders", {}).values()
    return Balance(remainder, unclosed=sum(1 for s in senders if s.get("unclosed") and not s.get("closed")))


# The counters by name that merge_snapshots() sums over the collectors.
_MERGED_COUNTERS = ("malformed", "repaired", "handler_errors", "connections", "folded", "claims_refused")


def _merge_sender(senders: dict[str, dict[str, Any]], key: str, one: dict[str, Any]) -> None:
    """Add one collector's view of sender ``key`` to ``senders`` (see :func:`merge_snapshots`)."""
    merged = senders.get(key)
    if merged is None:
        senders[key] = dict(one)
        return
    for name in ("records", "frames", "rejected", "duplicates", "repaired"):
        merged[name] = merged.get(name, 0) + one.get(name, 0)
    for name in ("dropped", "next_seq", "last_seen"):
        merged[name] = max(merged[name], one[name])
    merged["first_seen"] = min(merged["first_seen"], one["first_seen"])
    merged["closed"] = merged["closed"] or one["closed"]
    merged["unclosed"] = merged.get("unclosed") or one.get("unclosed", "")


def merge_snapshots(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine the stats of several collectors that share the same workers (one ledger).

    A worker with several endpoints spreads its frames across collectors, so each one
    sees the others' frames as gaps: summing gaps would count them as lost. Every
    numbered record went to exactly one collector, so per sender the merge takes the
    highest sequence number any collector saw (``next_seq``), sums what was received
    and rejected, and counts as lost only what no collector got:
    ``gaps = next_seq - received - rejected``. ``dropped`` is a running total the
    sender repeats in every frame: the merge keeps the largest report.

    Senders a collector folded (``folded``, see :class:`Stats`) are added as that
    collector counted them: a sender spread over collectors and folded in one of them
    keeps the other collectors' frames among its gaps there.
    """
    senders: dict[str, dict[str, Any]] = {}
    counted: dict[str, Counter[str]] = {name: Counter() for name in _MERGED_COUNTERS}
    for snap in snapshots:
        for name, counter in counted.items():
            counter.update(snap.get(name, {}))
        for key, one in snap.get("senders", {}).items():
            _merge_sender(senders, key, one)
    malformed, repaired, handler_errors = counted["malformed"], counted["repaired"], counted["handler_errors"]
    connections, folded, claims = counted["connections"], counted["folded"], counted["claims_refused"]
    frames = sum(snap.get("frames", 0) for snap in snapshots)
    claims_records = sum(snap.get("claims_refused_records", 0) for snap in snapshots)
    for merged in senders.values():
        merged["gaps"] = max(merged["next_seq"] - merged["records"] - merged["rejected"], 0)
        if merged["closed"]:
            merged["unclosed"] = ""  # one collector got its goodbye
    return {
        "collectors": len(snapshots),
        "frames": frames,
        "received": sum(s["records"] for s in senders.values()) + folded["records"],
        "malformed": dict(malformed),
        "malformed_total": sum(malformed.values()),
        "repaired": dict(repaired),
        "repaired_total": sum(repaired.values()),
        **{name: sum(s[name] for s in senders.values()) + folded[name] for name in _TOTALS},
        "handler_errors": dict(handler_errors),
        "claims_refused": dict(claims),
        "claims_refused_total": sum(claims.values()),
        "claims_refused_records": claims_records,
        "folded": dict(folded),
        "unclosed": sum(1 for s in senders.values() if s.get("unclosed")),
        "connections": dict(connections),
        "refused": sum(n for key, n in connections.items() if key.startswith("refused_")),
        "senders": senders,
    }


def _public(sender: SenderStats) -> dict[str, Any]:
    """A sender's fields for a snapshot: all but its missing ranges."""
    fields = dict(vars(sender))
    del fields["missing"]
    return fields


def _note_missing(sender: SenderStats, start: int, end: int) -> None:
    """Remember that ``[start, end)`` was booked as a gap (the oldest range forgotten past the bound)."""
    if sender.missing is None:
        sender.missing = []
    sender.missing.append((start, end))
    if len(sender.missing) > MAX_MISSING_RANGES:
        del sender.missing[0]


def _fill_missing(sender: SenderStats, start: int, end: int) -> bool:
    """Take ``[start, end)`` out of a booked gap that holds all of it; False when none does."""
    missing = sender.missing or []
    for index, (low, high) in enumerate(missing):
        if low <= start and end <= high:
            rest = [(low, start)] if low < start else []
            if end < high:
                rest.append((end, high))
            missing[index : index + 1] = rest
            return True
    return False
