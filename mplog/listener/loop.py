"""The listener's receive loop: receive -> decode -> dispatch into ``logging``.

This module runs inside the listener process: started by :class:`mplog.Listener`
(``python -m mplog.listener.loop``, driven over a private control pipe) or in the
foreground by ``mplog listen``. Frames never reach a handler unless they decode and
validate; anything else only increments a counter.
"""

from __future__ import annotations

import contextlib
import logging
import logging.config
import operator
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from mplog.exceptions import ConfigError, FrameError, report
from mplog.listener.dispatch import BatchDispatcher
from mplog.listener.gc_threshold import collector_gc
from mplog.listener.holding import CHECK_INTERVAL, HOLD_MAX_BYTES, WorkerWatch
from mplog.listener.progress import ProgressFile
from mplog.listener.stats import UNWRITTEN_AT_STOP, SenderLimits, Stats
from mplog.listener.supervisor import live_local_senders, process_runs
from mplog.listener.write_failures import OUTAGES, Outages, recover
from mplog.transports import NO_ORIGIN, Origin, Receiver
from mplog.wire import FLAG_URGENT, Envelope, Frame, Limits, check_records, decode_header, read_envelope
from mplog.wire.decode import MAX_NAME_CHARS
from mplog.wire.repair import decode_escaped, salvage_records
from mplog.wire.schema import F_NAME

__all__ = [
    "Server",
    "apply_logging_config",
    "install_handler_error_counter",
    "install_sighup_reopen",
    "reopen_file_handlers",
]

_DONE_QUIET = 0.02  # seconds of quiet that end a drain once every sender has said goodbye
# ... and a drain that began after drain_quiet seconds without a frame: longer than a worker's
# default flush_interval (0.05 s), so that a record logged just before the stop still arrives.
_IDLE_QUIET = 0.08
_NAME = operator.itemgetter(F_NAME)  # a record's logger name
DISPATCH_ERROR = "(dispatch)"  # handler_errors key for an exception raised outside any handler
# Frames refused whole for being too large, charged to the sender their envelope names.
_CHARGED = frozenset(("oversized", "over_limit"))
_ENDS_EVERY = 1024  # frames between two looks for ended connections while frames keep coming
# The socket monitor may report a connection's end before the socket has let go of it (the
# ROUTER still accepts a send to its routing id), so after the count moves the open senders'
# connections are looked at again, every _ENDS_RECHECK seconds for _ENDS_WINDOW seconds.
_ENDS_RECHECK, _ENDS_WINDOW = 0.2, 3.0
_UNWRITTEN_COUNT_TIME = 0.5  # seconds a drain that ran out of time spends counting what is still queued


class Server:
    """Owns a bound receiver and dispatches what it receives until stopped."""

    def __init__(
        self,
        receiver: Receiver,
        *,
        limits: Limits | None = None,
        drain_quiet: float = 0.2,
        sender_limits: SenderLimits | None = None,
    ) -> None:
        self.receiver = receiver
        self.limits = limits or Limits()
        self.stats = Stats(sender_limits, self._still_owned)
        self.stop_event = threading.Event()
        self.drain_quiet = drain_quiet
        self.drain_timeout = 10.0
        # Set when the parent died: orphaned workers still running on this host may
        # have records on the way, so the drain waits for them (see mplog.listener.supervisor).
        self.drain_for_live_senders = False
        # A drain that runs out of time counts what is still queued as unwritten (AckServer: no,
        # its unacknowledged frames stay with their workers, to be sent again).
        self.count_unwritten_at_stop = True
        # A restart counts what a frame the kill cut short left in the files (mplog.listener.progress;
        # AckServer: no, it cuts the files back to before that frame, which its worker sends again).
        self.count_cut_frames = True
        self.restarts = 0  # earlier incarnations of this listener (supervised restarts)
        self.dispatcher = BatchDispatcher()  # BatchDispatcher(fast=False): one logger.handle() per record
        # mplog.listener.holding: the longest a frame is held while this host's workers keep every
        # CPU busy (0: never held). Set by whoever starts the server; AckServer keeps 0.
        self.yield_seconds = 0.0
        self.hold_max_bytes = HOLD_MAX_BYTES
        self.watch: WorkerWatch | None = None
        self.held_seconds = 0.0  # time spent holding, in all
        self.held_frames = 0  # frames held right now
        self._held_bytes = 0
        self.hold_ends: dict[str, int] = {}  # holds that ended, by why: idle, time, bytes, urgent, not_a_frame, stop
        self._hostname = socket.gethostname()
        # Each sender's ledger, stored after each of its frames is dispatched, so that a
        # listener killed mid-stream is continued exactly (listener.progress; set by listener.process.resume).
        self.progress: ProgressFile | None = None
        self._ends_seen = 0  # the receiver's connection_ends() when last looked at
        self._ends_until = 0.0  # looked at again until then (time.monotonic()), _ENDS_RECHECK apart
        self._ends_next = 0.0

    # ------------------------------------------------------------ one frame

    def handle_frame(self, data: bytes, origin: Origin = NO_ORIGIN) -> Frame | None:
        """Decode, account and dispatch one frame; bad frames only count.

        ``origin`` is where the receiver says the frame came from (its connection and,
        under CURVE, the client key), whenever the frame is handled: the frame is booked
        to the sender it names in that key's namespace, if that connection may claim it
        (mplog.listener.stats).

        Returns:
            The frame when its envelope was valid (its records may have been rejected; a
            frame refused whole for its size comes back without them), else None: not a
            frame, or a frame whose claim on its sender was refused (counted).
        """
        stats, limits = self.stats, self.limits
        try:
            frame = decode_header(data, limits)
        except FrameError as exc:
            if exc.reason == "bad_utf8":  # one bad string: repair its record, deliver the others
                return self._escaped(data, origin)
            return self._refused(data, exc.reason, origin)
        records = frame.records
        try:
            # the frame's columns when it passed whole (a version 2 frame's were checked as it was decoded)
            columns = frame.columns if frame.columns is not None else check_records(records, limits)
            if records and max(map(len, map(_NAME, records))) > MAX_NAME_CHARS:  # in C, not a loop per record
                raise FrameError("bad_field", "logger name too long")
        except FrameError:
            return self._salvage(frame, origin)
        skip = stats.accept(frame, origin)
        if skip is None:
            return None
        if skip:
            records = records[skip:]
            columns = None  # a frame seen in part before: record by record
        progress = self.progress
        if progress is None:
            self.dispatch(frame, records, origin=origin, columns=columns)
        elif not records:  # nothing to write (a goodbye, or records seen before): no file can show it, kept at once
            progress.store(stats.booked_key, stats.booked)  # type: ignore[arg-type]  # accept() booked it
        else:
            # The ledger with this frame, pending until its records are written (mplog.listener.progress).
            progress.begin(stats.booked_key, stats.booked, len(records), marked=self.count_cut_frames)  # type: ignore[arg-type]  # accept() booked it
            self.dispatch(frame, records, origin=origin, columns=columns)
            progress.commit()
        return frame

    def _escaped(self, data: bytes, origin: Origin) -> Frame | None:
        """A frame msgpack refused for invalid UTF-8: decode it again with the bad bytes kept, then salvage it."""
        try:
            frame = decode_escaped(data, self.limits)
        except FrameError as exc:
            return self._refused(data, exc.reason, origin)
        return self._salvage(frame, origin, escaped=True)

    def _refused(self, data: bytes, reason: str, origin: Origin) -> Frame | None:
        """A frame refused whole: counted under ``malformed[reason]``, and charged to its sender if it names one.

        A frame over the limits (``oversized``, ``over_limit``) whose envelope is valid
        costs its sender its records, counted as that sender's ``rejected`` now rather
        than as a gap when its next frame comes (docs/wire-format.md). Bytes that are not
        msgpack, or not a frame, name no sender: only the counter moves.
        """
        if reason in _CHARGED:
            head = _charged(data)
            if head is not None:
                frame, count = head
                return self._rejected(frame, reason, origin, records=count)
        self.stats.note_malformed(reason)
        return None

    def _rejected(self, frame: Frame, reason: str, origin: Origin, records: int | None = None) -> Frame | None:
        """Count ``frame``'s records as its sender's ``rejected`` (Stats.reject); None when its claim was refused."""
        stats = self.stats
        if not stats.reject(frame, reason, origin, records=records):
            return None
        if self.progress is not None and stats.booked is not None:  # nothing to write: persisted at once
            self.progress.store(stats.booked_key, stats.booked)
        return frame

    def _salvage(self, frame: Frame, origin: Origin, *, escaped: bool = False) -> Frame | None:
        """A frame some of whose records are bad: repair them, deliver every record that can be."""
        stats = self.stats
        try:
            fixed, reasons = salvage_records(frame.records, self.limits, MAX_NAME_CHARS, escaped=escaped)
        except FrameError as exc:  # the frame as a whole is wrong (too many records)
            return self._rejected(frame, exc.reason, origin)
        skip = stats.accept(frame, origin)
        if skip is None:
            return None
        stats.salvaged(frame, fixed[skip:], reasons[skip:], origin)
        kept = [fields for fields in fixed[skip:] if fields is not None]
        progress = self.progress
        if progress is not None and stats.booked is not None:
            if not kept:  # nothing to write: kept at once, as in handle_frame
                progress.store(stats.booked_key, stats.booked)
                return frame
            progress.begin(stats.booked_key, stats.booked, len(kept), marked=self.count_cut_frames)
        self.dispatch(frame, kept, first=frame.seq + skip, origin=origin)
        if progress is not None:
            progress.commit()
        return frame

    def tend(self) -> None:
        """Between frames, when idle and every few hundred frames when busy: upkeep that may not wait for a stop."""

    def after_restore(self, state_dir: str) -> None:
        """Called by :func:`mplog.listener.process.resume` once the stats are restored; AckServer loads its marks."""

    def output_handlers(self) -> list[logging.Handler]:
        """The handlers whose files a frame can reach, measured around each frame (mplog.listener.progress)."""
        from mplog.delivery.intent import file_handlers  # noqa: PLC0415  # only a listener that keeps state needs it

        return list(file_handlers(_all_handlers()))

    def dispatch(
        self,
        frame: Frame,
        records: list[list[Any]],
        first: int | None = None,
        origin: Origin = NO_ORIGIN,
        columns: list[list[Any]] | None = None,
    ) -> None:
        """Hand ``records`` (the frame's records not seen before) to the loggers they name.

        ``first`` is the sequence number the dispatched part of the frame starts at, when
        items refused by salvage_records left ``records`` shorter than that part.
        ``origin`` is the frame's own: its key is stamped on its records. ``columns``:
        ``records`` as columns, when the whole-frame check gave them (mplog.listener.frame_lines).
        """
        stats = self.stats
        host = frame.sender.host
        # Under CURVE, the client key the handshake proved for this frame's connection; set
        # after the payload's extras, so a record cannot claim another sender's key
        # (test_records_carry_the_authenticated_client_key_not_one_the_payload_claims), and
        # carried with the frame, so a frame held back is stamped with its own sender's key
        # (test_held_frames_keep_the_key_of_the_connection_that_sent_them).
        peer = origin.peer_key or None
        # Each record's place in its sender's ledger, for handlers that carry it (RFC 5424
        # structured data): known when the records dispatched are consecutive.
        end = frame.seq + len(frame.records)
        start = end - len(records) if first is None else first
        # A whole batch per handler write where the route allows it (mplog.listener.dispatch); an
        # exception outside every handler (a logger-level filter) is counted per record.
        self.dispatcher.dispatch(
            records,
            host,
            peer,
            lambda: stats.note_handler_error(DISPATCH_ERROR),
            sender=frame.sender.key,
            first_seq=start if len(records) == end - start else None,
            columns=columns,
            written=self.progress.mark_written if self.progress is not None and self.count_cut_frames else None,
        )

    def _still_owned(self, connection: bytes, host: str, pid: int, start_time: float) -> bool:
        """Whether ``connection`` still speaks for the sender it opened (asked only when another claims it).

        It does while the receiver says it is open, unless the sender is on this host and
        its process is gone: a forked child keeps its dead parent's connection open (see
        test_a_forked_child_that_outlives_its_parent_does_not_keep_the_parents_spool_from_being_adopted).
        """
        connected = getattr(self.receiver, "connected", None)
        if connected is None or not connected(connection):
            return False
        if host != self._hostname:
            return True
        return process_runs(pid, start_time)

    # ------------------------------------------------------------ the loop

    def snapshot(self) -> dict[str, Any]:
        """Stats including the transport's own rejects (truncated, oversized)."""
        snap = self.stats.snapshot()
        events = dict(self.receiver.events)
        if events:
            malformed = dict(snap["malformed"])
            for reason, count in events.items():
                malformed[reason] = malformed.get(reason, 0) + count
            snap["malformed"] = malformed
            snap["malformed_total"] = sum(malformed.values())
        connections = dict(getattr(self.receiver, "connections", {}))
        snap["connections"] = connections  # handshakes, refused_* (mplog.transports.curve), disconnected
        snap["refused"] = sum(n for key, n in connections.items() if key.startswith("refused_"))
        snap["handler_drops"] = handler_drops()
        snap["endpoint"] = self.receiver.endpoint
        snap["pid"] = os.getpid()
        snap["restarts"] = self.restarts
        snap["yield"] = {
            "holds": sum(self.hold_ends.values()) + (1 if self.held_frames else 0),  # ended, and one going on
            "held_seconds": round(self.held_seconds, 3),
            "held_frames": self.held_frames,
            "ended": dict(self.hold_ends),
        }
        return snap

    def run(self) -> None:
        """Receive until :attr:`stop_event` is set, then drain until quiet."""
        with collector_gc():  # fewer young collections while frames are decoded (mplog.listener.gc_threshold)
            self._receive_loop()

    def _receive_loop(self) -> None:
        recv, handle = self.receiver.recv, self.handle_frame
        stop, stats = self.stop_event, self.stats
        watch = None
        if self.yield_seconds > 0:
            watch = self.watch = self.watch or WorkerWatch()
        # A receiver that names connections says when one ended: then (when idle, and at most
        # every _ENDS_EVERY frames when busy) the senders it owned are looked at.
        ends = getattr(self.receiver, "connection_ends", None)
        countdown = _ENDS_EVERY
        catching_up = False  # a hold ran out of time or room: no new hold until nothing is waiting
        quiet_since = None  # when the receiver last came back empty after a frame (None: a frame since)
        while not stop.is_set():
            received = recv(0.02)  # how soon a stop request is noticed
            if received is None:
                catching_up = False
                stats.idle_passes += 1  # nothing waiting: a gone sender's goodbye is not still queued
                if quiet_since is None:
                    quiet_since = time.monotonic()
                if ends is not None:
                    self._note_connection_ends(ends)
                self.tend()
                continue
            quiet_since = None
            if watch is not None and not catching_up and self._may_hold(received[0], watch):
                catching_up = self._hold(received, watch)
            else:
                handle(*received)
            countdown -= 1
            if not countdown:
                countdown = _ENDS_EVERY
                if ends is not None:
                    self._note_connection_ends(ends)
                self.tend()
        self.drain(quiet_for=0.0 if quiet_since is None else time.monotonic() - quiet_since)
        if ends is not None:  # while the receiver is still open: the final stats name them too
            self._note_connection_ends(ends)
        if self.count_unwritten_at_stop:  # not in ack mode: there, unacknowledged frames stay with their workers
            self.stats.flag_open_at_stop()

    def _note_connection_ends(self, ends: Callable[[], int]) -> None:
        """Flag the open senders whose connection ended, if one ended since the last look (mplog.listener.stats)."""
        count, now = ends(), time.monotonic()
        if count != self._ends_seen:
            self._ends_seen = count
            self._ends_until = now + _ENDS_WINDOW
        elif now >= self._ends_until or now < self._ends_next:
            return
        self._ends_next = now + _ENDS_RECHECK
        self.stats.note_connection_ends(self.receiver.connected)

    def _may_hold(self, data: bytes, watch: WorkerWatch) -> bool:
        head = _envelope(data)
        if head is None:  # not a frame: handle_frame counts it
            return False
        watch.saw(head.host, head.pid, head.flags)
        return not head.flags & FLAG_URGENT and watch.busy(time.monotonic())

    def _hold(self, first: tuple[bytes, Origin], watch: WorkerWatch) -> bool:
        """Hold frames while the workers keep every CPU busy, then handle them in order (mplog.listener.holding).

        Returns:
            True when the hold ran out of time or room (the caller then catches up without holding).
        """
        held = [first]
        start = time.monotonic()
        self.held_frames = 1
        ended = "error"
        try:
            ended = self._gather(held, watch, start + self.yield_seconds)
        finally:
            self.hold_ends[ended] = self.hold_ends.get(ended, 0) + 1
            self.held_seconds += time.monotonic() - start
            handle = self.handle_frame
            for data, origin in held:
                handle(data, origin)
            self.held_frames = 0
        return ended in ("time", "bytes")

    def _gather(self, held: list[tuple[bytes, Origin]], watch: WorkerWatch, deadline: float) -> str:
        """Receive into ``held`` until a reason to stop holding comes; return the reason."""
        stop = self.stop_event
        self._held_bytes = len(held[0][0])
        while True:
            now = time.monotonic()
            if now >= deadline:
                return "time"
            if self._held_bytes >= self.hold_max_bytes:
                return "bytes"
            if not watch.busy(now):
                return "idle"
            # Sleep, then take every frame waiting: one wake-up per look, not one per frame
            # (each would take a CPU from a worker). Receiving goes on: no sender waits.
            if stop.wait(min(CHECK_INTERVAL, deadline - now)):
                return "stop"
            ended = self._take_waiting(held, watch)
            if ended:
                return ended

    def _take_waiting(self, held: list[tuple[bytes, Origin]], watch: WorkerWatch) -> str | None:
        """Append every frame already waiting to ``held``, each with its origin; a reason to stop holding, or None."""
        recv = self.receiver.recv
        while (received := recv(0)) is not None:
            held.append(received)
            data = received[0]
            self.held_frames = len(held)
            self._held_bytes += len(data)
            head = _envelope(data)
            if head is None:  # handle_frame counts it, after what came before it
                return "not_a_frame"
            watch.saw(head.host, head.pid, head.flags)
            if head.flags & FLAG_URGENT:
                return "urgent"
            if self._held_bytes >= self.hold_max_bytes:
                return "bytes"
        return None

    def drain(self, quiet_for: float = 0.0) -> None:
        """Keep receiving until nothing arrives for ``drain_quiet`` seconds (bounded).

        Once every sender seen has said goodbye (its final frame comes after all its
        records on the same connection), there is nothing left to wait for but strays:
        a short quiet period ends the drain (``Listener.stop()`` took ~0.5 s otherwise).
        So does a listener that had already received nothing for ``drain_quiet`` seconds
        (``quiet_for``) when it was asked to stop: an idle ``mplog listen`` exits at once
        on SIGTERM (see test_an_idle_collector_exits_promptly_on_sigterm).
        """
        deadline = time.monotonic() + self.drain_timeout
        idle = quiet_for >= self.drain_quiet
        while time.monotonic() < deadline:
            quiet = _DONE_QUIET if self.stats.all_closed() else (_IDLE_QUIET if idle else self.drain_quiet)
            received = self.receiver.recv(min(quiet, self.drain_quiet))
            if received is None:
                if self.drain_for_live_senders and live_local_senders(self.stats):
                    continue
                break
            idle = False
            self.handle_frame(*received)
        else:  # out of time with frames still coming
            if self.count_unwritten_at_stop:
                self._count_unwritten()

    def _count_unwritten(self) -> None:
        """Count the frames still queued when a drain ran out of time, unwritten, as their senders' loss (bounded).

        They reached this listener, and not writing them is the stop's doing: each one's
        records become its sender's ``rejected`` and the stats' ``unwritten_at_stop``, so the
        ledger balances and the senders do not show as having ended without a goodbye (a
        goodbye among them is handled as usual). Reading an envelope costs microseconds;
        what arrives after ``_UNWRITTEN_COUNT_TIME`` is left uncounted, its senders unclosed.
        """
        until = time.monotonic() + _UNWRITTEN_COUNT_TIME
        before = self.stats.unwritten_at_stop
        senders: set[str] = set()
        while time.monotonic() < until:
            received = self.receiver.recv(_DONE_QUIET)
            if received is None:
                break
            data, origin = received
            frame, count = _charged(data) or (None, 0)
            if frame is None or not count:  # not a frame (counted as such), or no records (a goodbye)
                self.handle_frame(data, origin)
            elif self._rejected(frame, UNWRITTEN_AT_STOP, origin, records=count) is not None:
                senders.add(frame.sender.key)
        unwritten = self.stats.unwritten_at_stop - before
        if unwritten:
            report(
                f"mplog: the stop's drain ran out after {self.drain_timeout:g} s: {unwritten} records of "
                f"{len(senders)} senders that had reached the listener were not written (counted as "
                f"unwritten_at_stop; a quicker handler lets them through, as does a longer drain where the "
                f"listener was started from Python: Listener.stop(timeout=...))"
            )


def _envelope(data: bytes) -> Envelope | None:
    """A frame's sender and flags without unpacking its records; None when it does not start like a frame."""
    try:
        return read_envelope(data)
    except ValueError:
        return None


def _charged(data: bytes) -> tuple[Frame, int] | None:
    """The sender of a frame refused whole (``oversized``, ``over_limit``), read from its envelope.

    A frame too large for the limits may still name its sender validly: the listener then
    counts its records as that sender's ``rejected`` instead of leaving them to show as a
    gap later. The envelope must pass the decoder's checks (:meth:`Envelope.identity`).
    Called on that error path only.

    Returns:
        ``(frame, count)``: the frame with no records and how many records it declares,
        or None when the envelope is not valid, or declares more records than the frame
        has bytes (each takes one at least).
    """
    try:
        env = read_envelope(data)
        identity = env.identity()
    except ValueError:  # FrameError is one
        return None
    if env.records > len(data):
        return None
    return Frame(identity, env.seq, env.dropped, env.flags, []), env.records


def handler_drops() -> dict[str, int]:
    """Records each buffering handler had to drop (handlers with a ``dropped`` count, e.g. mplog.handlers')."""
    drops: dict[str, int] = {}
    for ref in list(getattr(logging, "_handlerList", [])):  # every handler of this process, by weak reference
        handler = ref()
        count = getattr(handler, "dropped", None)
        if isinstance(handler, logging.Handler) and isinstance(count, int) and not isinstance(count, bool):
            drops[handler.get_name() or type(handler).__name__] = count
    return drops


def install_handler_error_counter(stats: Stats, quiet_interval: float = 10.0) -> None:
    """Count handler failures per handler; say so on stderr at most once per interval, and once when it writes again.

    A failed write to a file leaves a clean stream behind it: what the stream still held is
    dropped, never written behind the count (:func:`mplog.listener.write_failures.recover`).
    Runs only in the listener process, where every handler is mplog's to supervise.
    """
    outages = OUTAGES
    outages.quiet_interval = quiet_interval

    def handle_error(self: logging.Handler, record: logging.LogRecord) -> None:
        name = self.get_name() or type(self).__name__
        stats.note_handler_error(name)
        exc = sys.exc_info()[1]
        # A failed batch write reports each of its records with its one exception: recovered once.
        if exc is not None and exc is not outages.last_failure and _failed_write(self, exc):
            outages.last_failure = exc
            recover(self, _reopen)
        outages.failed(self, name, exc)

    logging.Handler.handleError = handle_error  # type: ignore[method-assign]  # the listener process owns every handler
    _guard_handle(outages)


def _failed_write(handler: logging.Handler, exc: BaseException) -> bool:
    """True when ``exc`` is a write of ``handler``'s stream that failed (an OSError, or the stream was closed)."""
    return isinstance(exc, OSError) or getattr(getattr(handler, "stream", None), "closed", False) is True


def _guard_handle(outages: Outages) -> None:
    """Route an exception escaping ``Handler.handle`` to ``handleError`` instead of the receive loop.

    Several stdlib handlers let errors escape ``emit`` (``FileHandler`` with ``delay=True``
    opening a file in a missing directory, ``WatchedFileHandler`` reopening one), which
    would otherwise end the listener (see
    test_file_handler_in_a_missing_directory_is_counted_and_the_others_go_on). A failing
    handler that handles a record without an error ends its outage (``outages.written``).
    """
    original = logging.Handler.handle
    if getattr(original, "_mplog_guarded", False):
        return

    def guarded(self: logging.Handler, record: logging.LogRecord) -> Any:
        try:
            return original(self, record)
        except Exception:
            self.handleError(record)
            return False

    def handle(self: logging.Handler, record: logging.LogRecord) -> Any:
        failing = outages.failing
        if not failing:  # every handler writes: the guard alone, one check more per record
            return guarded(self, record)
        outage = failing.get(self)
        if outage is None:
            return guarded(self, record)
        errors = outage.records
        handled = guarded(self, record)
        if handled and outage.records == errors:
            outages.written(self)
        return handled

    handle._mplog_guarded = True  # type: ignore[attr-defined]  # marks the wrapper so it is installed once
    logging.Handler.handle = handle  # type: ignore[method-assign]  # the listener process owns every handler


# ---------------------------------------------------------------- SIGHUP: reopen log files


def _all_handlers() -> list[logging.Handler]:
    """Every configured handler: those on loggers and those only named (e.g. a MemoryHandler's target)."""
    found: dict[int, logging.Handler] = {}
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            found[id(handler)] = handler
    named = getattr(logging, "_handlers", {})  # dictConfig names every handler it builds
    for handler in list(named.values()):
        found[id(handler)] = handler
    return list(found.values())


def reopen_file_handlers() -> int:
    """Close and reopen the stream of every ``FileHandler`` (logrotate's ``postrotate`` SIGHUP).

    A handler opened with mode ``'w'`` is reopened for appending, and stays so, so that a
    HUP without a rotation never truncates a file. A handler whose file cannot be reopened
    is left closed; it opens the file again, for appending, at its next record. Returns how
    many were reopened.
    """
    reopened = 0
    for handler in _all_handlers():
        if not isinstance(handler, logging.FileHandler):
            continue
        handler.acquire()
        try:
            if _reopen(handler):
                reopened += 1
        finally:
            handler.release()
    return reopened


def _reopen(handler: logging.FileHandler) -> bool:
    stream = handler.stream
    if stream is None:  # delay=True and nothing written yet: opens at the next record
        return False
    handler.stream = None  # FileHandler reopens a None stream at its next record
    # Appending from now on: a stream left None below must not be reopened with 'w' at the
    # next record (that would truncate a file no rotation moved away).
    handler.mode = handler.mode.replace("w", "a")
    # Closing flushes what the stream still buffers. On a full disk that flush fails and
    # close() raises after closing the file: those bytes are the records whose write already
    # failed and was counted in handler_errors, so they are given up here, not written later.
    with contextlib.suppress(OSError, ValueError):
        stream.flush()
    with contextlib.suppress(OSError, ValueError):
        stream.close()
    try:
        handler.stream = handler._open()
    except OSError as exc:
        with contextlib.suppress(Exception):
            sys.stderr.write(f"mplog: cannot reopen {handler.baseFilename!r}: {exc}\n")
        return False
    return True


def install_sighup_reopen(stop: threading.Event) -> None:
    """Make SIGHUP reopen every file handler; call from the main thread.

    The signal handler only sets an event: the reopen runs on a thread of its own, under
    each handler's lock, so it never closes a stream that the main thread is writing.
    """
    import signal  # noqa: PLC0415  # only the listener process installs signal handlers

    requested = threading.Event()

    def on_sighup(signum: int, frame: Any) -> None:
        requested.set()

    def reopen_when_asked() -> None:
        said = False
        while not stop.is_set():
            if requested.wait(0.25):
                requested.clear()
                try:
                    reopen_file_handlers()
                except Exception as exc:  # the thread must outlive any one reopen: later HUPs still count
                    if not said:
                        said = True
                        with contextlib.suppress(Exception):
                            sys.stderr.write(f"mplog: a SIGHUP reopen failed: {type(exc).__name__}: {exc}\n")

    signal.signal(signal.SIGHUP, on_sighup)
    threading.Thread(target=reopen_when_asked, daemon=True, name="mplog-sighup").start()


# ---------------------------------------------------------------- configuring the handlers


def apply_logging_config(config: dict[str, Any]) -> None:
    """Apply ``config`` with ``logging.config.dictConfig`` in this (the listener) process.

    Raises:
        ConfigError: one line naming what could not be built and why, e.g. ``Unable to
            configure handler 'file': FileNotFoundError: [Errno 2] No such file or directory: ...``.
    """
    try:
        logging.config.dictConfig(config)
    except Exception as exc:
        cause = exc.__cause__ or exc.__context__
        detail = f"{exc}" + (f": {type(cause).__name__}: {cause}" if cause else "")
        raise ConfigError(detail) from exc
