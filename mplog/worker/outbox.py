"""How a worker's handler batches: pending records, the outbox and its policy, the flusher thread, flush and close.

:class:`BatchingHandler` is :class:`mplog.worker.handler.MplogHandler` without its logging
call: it holds the per-process state (reset in a forked child), numbers and frames
what it hands to the transport, bounds what the transport cannot take by
``max_buffer_bytes`` and applies the ``policy`` past that bound, sends a batch
``flush_interval`` seconds after its first record from a background thread, and
delivers what is buffered on ``flush()`` (``flush_within(timeout)``) and ``close()``. The logging call that
fills the batch, and the process-wide hooks that close every handler at exit and on
SIGTERM, are in :mod:`mplog.worker.handler`.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import weakref
from collections import deque
from threading import get_ident
from typing import Any

import msgpack

from mplog.exceptions import TransportError
from mplog.exceptions import report as _report
from mplog.transports import Sender, open_sender, transport_of
from mplog.transports.base import ASYNC_SIGNALS
from mplog.wire import FLAG_FINAL, FLAG_URGENT, encode_sender
from mplog.wire import Sender as SenderId
from mplog.wire.columns import MIN_COLUMNS, ROW, frame_of_body, pack_pending
from mplog.wire.encode import frame_of_packed
from mplog.worker.options import WorkerOptions

__all__ = ["BatchingHandler", "open_handlers"]

# The live handlers of this process: the hooks in mplog.worker close them at exit and on SIGTERM.
_handlers: weakref.WeakSet[BatchingHandler] = weakref.WeakSet()


def open_handlers(endpoint: str) -> list[BatchingHandler]:
    """This process's handlers to ``endpoint`` that are not closed (for a stop to flush them first)."""
    return [h for h in list(_handlers) if h.endpoint == endpoint and not h._closed and h._pid == os.getpid()]


_abandoned: list[Any] = []  # transports inherited across fork: never closed in the child


def _process_start_time() -> float:
    try:
        import psutil  # noqa: PLC0415  # only when a handler is created: keeps `import mplog` light

        return float(psutil.Process().create_time())
    except Exception:
        return time.time()


# flush_within() sends for at most _FLUSH_SLICE seconds at a time, then lends the buffer to
# other threads for _FLUSH_LEND seconds (long enough for a waiting thread to take its lock).
_FLUSH_SLICE = 0.05
_FLUSH_LEND = 0.001


class _Identity:
    """The sender identity of the current process incarnation and handler stream."""

    def __init__(self) -> None:
        stream = int.from_bytes(os.urandom(4), "big")
        self.sender = SenderId(socket.gethostname(), os.getpid(), _process_start_time(), stream)
        self.packed = encode_sender(self.sender)


class BatchingHandler(logging.Handler):
    """Batches encoded records for the listener at ``endpoint``; MplogHandler adds the logging call."""

    def __init__(self, endpoint: str, options: WorkerOptions | None = None) -> None:
        transport_of(endpoint)  # validates the scheme, before Handler.__init__ registers this handler for exit
        super().__init__()
        self.endpoint = endpoint
        self.options = options or WorkerOptions()
        try:
            self._start()
        except BaseException:
            # Handler.__init__ registered this handler for logging.shutdown() at exit; a
            # half-built one must stay inert there, not raise from flush() or close()
            # (see test_a_handler_whose_transport_cannot_open_is_inert_at_exit).
            self._closed = True
            super().close()
            raise
        _handlers.add(self)

    @property
    def options(self) -> WorkerOptions:
        """How this handler batches, bounds and flushes (setup_worker() may replace them)."""
        return self._options

    @options.setter
    def options(self, options: WorkerOptions) -> None:
        self._options = options
        # Read on every logging call: plain attributes, not two lookups each.
        self._limits = options.limits
        self._columns = options.wire_version >= 2
        self._flush_level = options.flush_level
        self._batch_slots = options.batch_records * ROW  # the pending list's length at batch_records
        self._batch_bytes = options.batch_bytes

    # ------------------------------------------------------------ state per process

    def _start(self) -> None:
        """(Re)initialise every piece of per-process state; runs again in a forked child."""
        self._pid = os.getpid()
        self._mutex = threading.RLock()
        self._owner = 0  # ident of the thread inside the buffer (holding _mutex), 0 for none
        # Records not yet in a frame, ROW slots each in one flat list (mplog.wire.columns):
        # the fields of common records (packed a batch at a time) and other records already
        # packed. Their size is estimated (message length + _overhead) until the batch is packed.
        self._pending: list[Any] = []
        self._pending_bytes = 0
        self._overhead = 256  # packed bytes of a common record besides its message; learnt per batch
        self._packer = msgpack.Packer(use_bin_type=True)  # used under _mutex only
        self._outbox: deque[tuple[int, bytes, int]] = deque()  # (records, their packed bytes, frame flags) per batch
        self._outbox_bytes = 0
        self._seq = 0  # number of the next record handed to the transport
        self._dropped = 0  # records dropped by policy (reported in every frame)
        self._frames_sent = 0
        self._errors = 0
        # An outage: under "block", the transport took nothing for a whole block_timeout. Until
        # it takes a frame again, the policy drops at once instead of waiting again per batch.
        self._refused_since = 0.0  # time.monotonic() of the first refusal since a frame was taken; 0.0: none
        self._outage_since = 0.0  # time.monotonic() when the current outage began; 0.0: none
        self._outage_dropped = 0  # records dropped during the current outage
        self._outages = 0
        self._notes: list[str] = []  # stderr lines, written by the flusher thread outside _mutex
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closing = False  # close() has begun: it writes the stderr lines itself, in order
        self._closed = False
        self._refusal_said = False
        self._late_said = False  # a record after close() said once on stderr (MplogHandler._ship)
        # Records logged after close() (dropped): a counter apart from _dropped, which close()
        # may be adding to when a signal handler logs (test_worker_batch_attacks.py, attack 2b).
        self._late = 0
        self._successor: BatchingHandler | None = None  # the handler setup_worker() put in this one's place
        # Last: every other piece of state exists even when these raise (a bad key file).
        self._identity = _Identity()
        self._transport: Sender = self._open_transport()

    def discard_if_unused(self) -> bool:
        """Close without the goodbye frame if no record was ever handed to the transport.

        For :func:`mplog.setup_worker` replacing a handler that never sent anything (the
        one a spawn child got from :mod:`mplog.worker.children` before its initializer asked for
        other options): the listener never heard of this stream, and a goodbye would only
        add an empty sender to its stats (and, to a CURVE listener, a refused plaintext
        connection). Returns False, having done nothing, when there is anything to account for.
        """
        if self._pid != os.getpid() or self._closed:
            return False
        if not self._mutex.acquire(timeout=self.options.close_timeout):
            return False
        try:
            if self._seq or self._dropped or self._pending or self._outbox or self._frames_sent:
                return False
            self._closed = True
            self._transport.close(0.0)
            self._wake.set()
        finally:
            self._mutex.release()
        _handlers.discard(self)
        super().close()
        return True

    def _open_transport(self) -> Sender:
        if self.options.ack:  # frames kept until acknowledged, resent after a listener restart
            from mplog.delivery.ack_sender import open_ack_sender  # noqa: PLC0415  # opt-in

            return open_ack_sender(self.endpoint, self.options)
        return open_sender(self.endpoint, self.options.transport)

    def _after_fork_in_child(self) -> None:
        _abandoned.append(self._transport)
        self._start()

    @property
    def counters(self) -> dict[str, int]:
        """Worker-side counters: records numbered and sent, dropped, buffered, errors.

        ``outages`` counts the times the transport took nothing for a whole ``block_timeout``
        (the ``block`` policy then drops at once until it takes a frame again).
        With acknowledged delivery also ``unacked`` (frames sent, not yet acknowledged),
        ``resent`` (frames sent again) and ``spool_errors`` (failed spool writes).
        """
        counters = {
            "sent": self._seq,
            "frames": self._frames_sent,
            "dropped": self._dropped + self._late,
            # After close() what it could not deliver is counted as dropped, no longer as buffered.
            "buffered": 0 if self._closed else len(self._pending) // ROW + sum(entry[0] for entry in self._outbox),
            "buffered_bytes": 0 if self._closed else self._pending_bytes + self._outbox_bytes,
            "errors": self._errors,
            "outages": self._outages,
        }
        if self._options.ack:
            transport = self._transport
            for name in ("unacked", "resent", "spool_errors"):
                counters[name] = int(getattr(transport, name, 0))
        return counters

    # ------------------------------------------------------------ batching and policy

    def _flush_locked(self, *, apply_policy: bool, urgent: bool = False) -> None:
        """Pack the pending records into one batch and send what the transport takes now.

        ``urgent`` (the batch ends with a record at the flush level) marks its frame
        FLAG_URGENT: a listener yielding the CPUs to busy workers handles it at once.
        """
        if self._pending:
            self._batch_to_outbox(urgent)
        self._send_outbox(0.0)
        if apply_policy and self._outbox_bytes > self.options.max_buffer_bytes:
            self._apply_policy()
        # A record logged while this flush ran (a signal handler, a value's __repr__ that
        # logs) is in a new pending batch that no logging call has announced: wake the flusher.
        if self._outbox or self._pending:
            self._kick()

    def _batch_to_outbox(self, urgent: bool) -> None:
        """Move the pending records, packed as one batch, to the outbox.

        Records appended re-entrantly meanwhile (on this thread, see ``_owner``) start a new
        pending batch. An exception raised while the batch is packed (a signal handler's
        KeyboardInterrupt or timeout, raised wherever it interrupts) puts the batch back in
        front of them, to be packed again by the next flush; one that the packer itself
        raises (it should not) counts the batch's records as dropped. Never loses a record
        without counting it.
        """
        estimate = self._pending_bytes
        batch = self._pending
        packed, count = b"", 0
        try:
            # The list is swapped before its records are counted: a record a signal handler
            # logs before the swap is in this batch and in its count, one after it starts the
            # next batch. (Counted first, a record appended in between was sent uncounted:
            # the next frame's number overlapped it and the listener dropped one record as a
            # duplicate; test_a_record_logged_at_any_instruction_of_the_buffer_path_is_counted_once.)
            self._pending = []
            count = len(batch) // ROW
            # Only the size estimate can be off by a record that interrupts these lines.
            self._pending_bytes -= estimate
            # version 2 (columns) unless the options say 1 or the batch is small (mplog.wire.columns)
            columns = self._columns and count >= MIN_COLUMNS
            packed = pack_pending(self._packer, batch, self._limits, columns=columns)
            self._outbox.append((count, packed, FLAG_URGENT if urgent else 0))
        except Exception:
            if self._pending is not batch and not (self._outbox and self._outbox[-1][1] is packed):
                self._dropped += count
                self._errors += 1
            return
        except BaseException:
            if self._pending is not batch and not (self._outbox and self._outbox[-1][1] is packed):
                self._pending[:0] = batch
                self._pending_bytes += estimate
            raise
        self._outbox_bytes += len(packed)
        self._overhead = max(32, self._overhead + (len(packed) - estimate) // count)

    def _send_outbox(self, timeout: float, stop_at: float = 0.0) -> bool:
        """Hand the outbox's frames to the transport in order, each waiting up to ``timeout``; True if all went.

        ``stop_at``: a time.monotonic() after which no further frame is tried (False returned).
        """
        outbox = self._outbox
        while outbox:
            if stop_at and time.monotonic() >= stop_at:
                return False
            count, packed, flags = outbox[0]
            frame = frame_of_body(self._identity.packed, self._seq, self._dropped, flags, packed)
            try:
                sent = self._transport.send(frame, timeout)
            except TransportError:
                self._errors += 1
                sent = False
            if not sent:
                if not self._refused_since:
                    self._refused_since = time.monotonic()
                return False
            outbox.popleft()
            self._outbox_bytes -= len(packed)
            self._seq += count
            self._frames_sent += 1
            if self._refused_since:
                self._refused_since = 0.0
                if self._outage_since:
                    self._end_outage()
        return True

    def _apply_policy(self) -> None:
        opts = self.options
        if opts.policy == "block" and not self._outage_since:
            self._wait_for_room(opts.block_timeout)
        dropped = self._dropped
        while self._outbox_bytes > opts.max_buffer_bytes and self._outbox:
            count, packed, _ = self._outbox.popleft() if opts.policy == "drop_oldest" else self._outbox.pop()
            self._outbox_bytes -= len(packed)
            self._dropped += count
        if self._outage_since:
            self._outage_dropped += self._dropped - dropped

    def _wait_for_room(self, timeout: float) -> None:
        """Send until the outbox is back within its bound, while the transport has refused for less than ``timeout``.

        The clock starts at the transport's first refusal since it last took a frame. When
        it has taken nothing for ``timeout`` seconds an outage begins: the listener is away
        (or stuck), and waiting ``block_timeout`` again for every batch would stall the
        program (200,000 calls took 351 s; see test_worker_outage.py).
        """
        bound = self.options.max_buffer_bytes
        deadline = (self._refused_since or time.monotonic()) + timeout
        while self._outbox_bytes > bound:
            now = time.monotonic()
            if now >= deadline:
                break
            step = min(deadline - now, 0.05)
            if self._send_outbox(step):
                return
            idle = now + step - time.monotonic()
            if idle > 0:  # the transport refused at once (no connection, a full resend buffer): no busy loop
                time.sleep(idle)
        refused = self._refused_since
        if timeout > 0 and self._outbox_bytes > bound and refused and time.monotonic() - refused >= timeout:
            self._begin_outage(time.monotonic() - refused)

    def _begin_outage(self, waited: float) -> None:
        self._outage_since = time.monotonic()
        self._outage_dropped = 0
        self._outages += 1
        self._notes.append(
            f"mplog: the listener at {self.endpoint} took nothing for {waited:.1f} s (block_timeout): "
            f"records are now dropped without waiting, and counted, until it takes them again (pid {os.getpid()})"
        )

    def _end_outage(self) -> None:
        lasted = time.monotonic() - self._outage_since
        self._notes.append(
            f"mplog: the listener at {self.endpoint} takes records again after {lasted:.1f} s; "
            f"{self._outage_dropped} records were dropped meanwhile (pid {os.getpid()})"
        )
        self._outage_since, self._outage_dropped = 0.0, 0
        try:
            self._kick()  # the flusher writes the line, outside the lock
        except RuntimeError:  # no new thread at interpreter shutdown: close() writes it
            pass

    def _take_notes(self) -> list[str]:
        """The stderr lines waiting to be written (call with ``_mutex`` held; write them after releasing it)."""
        notes, self._notes = self._notes, []
        return notes

    # ------------------------------------------------------------ the flusher thread

    def _kick(self) -> None:
        self._ensure_thread()
        self._wake.set()

    def _ensure_thread(self) -> None:
        """Start the flusher thread if this process has none running."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="mplog-flusher", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        # Signals sent to the process must reach the main thread: delivered to this
        # thread, a SIGTERM would never interrupt a main thread blocked in a lock
        # (a Pool worker waiting for tasks) and Pool.terminate() would hang
        # (see test_pool_terminate_under_forkserver_never_hangs).
        signal.pthread_sigmask(signal.SIG_BLOCK, ASYNC_SIGNALS)
        wake, interval = self._wake, self.options.flush_interval
        while not self._closed:
            if not wake.wait(self._idle_timeout):
                self._housekeeping()  # idle: nothing to send, time for the slow chores
                continue
            if self._closed:
                return
            time.sleep(interval)
            with self._mutex:
                if self._closed or self._pid != os.getpid():
                    return
                wake.clear()
                self._owner = get_ident()
                try:
                    self._flush_locked(apply_policy=False)
                except Exception:
                    self._errors += 1
                finally:
                    self._owner = 0
                notes = self._take_notes() if self._notes and not self._closing else None
            if notes:  # outside the lock: a blocked stderr must never hold up a logging call
                for line in notes:
                    _report(line)
            self._housekeeping()

    # The flusher thread wakes at least this often (None: only when there is something to
    # send) and calls _housekeeping() outside the buffer's lock: work that must stay off
    # the logging call's path (MplogHandler asks the listener for its level there).
    _idle_timeout: float | None = None

    def _housekeeping(self) -> None:
        """Slow chores of the flusher thread; must not raise (MplogHandler adds its own)."""
        if self._outbox:  # the transport is refusing frames: a refused handshake would say why
            self._say_refusal()

    def _say_refusal(self) -> None:
        """Print, once, why the listener refused this sender's connection (a CURVE handshake), if it did."""
        if self._refusal_said:
            return
        try:
            check = getattr(self._transport, "refusal", None)
            text = check() if check is not None else None
        except Exception:
            return
        if text:
            self._refusal_said = True
            _report(text)

    # ------------------------------------------------------------ flush and close

    def flush(self) -> None:
        """Send everything buffered, waiting at most ``close_timeout`` seconds (see :meth:`flush_within`)."""
        self.flush_within()

    def flush_within(self, timeout: float | None = None) -> bool:
        """Send everything buffered, waiting at most ``timeout`` seconds (None: ``close_timeout``); True if all went.

        The bound is on time without progress: while the listener keeps taking frames, the
        wait goes on past ``timeout``.
        """
        if self._pid != os.getpid():
            return False
        if self._closed:
            # logging.shutdown() flushes every handler again at exit, after close(): what
            # close() could not deliver stays undelivered, so do not wait for it twice
            # (see test_exit_with_the_listener_gone_waits_close_timeout_once).
            return not self._pending and not self._outbox
        limit = self.options.close_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        mutex, me = self._mutex, get_ident()
        if not mutex.acquire(timeout=max(limit, 0.0)):
            return False
        outer, self._owner = self._owner, me
        held = True
        try:
            if self._pending:
                self._flush_locked(apply_policy=False)
                if self._pending:  # logged while that flush ran (a __repr__, a signal handler): once more
                    self._flush_locked(apply_policy=False)
            # What is buffered now; records logged from here on may go along, but are not waited for.
            goal = self._seq + sum(entry[0] for entry in self._outbox)
            while self._outbox and self._seq < goal:
                now = time.monotonic()
                remaining = deadline - now
                sent_before = self._frames_sent
                if self._send_outbox(max(min(remaining, 0.05), 0.0), stop_at=now + _FLUSH_SLICE) or remaining <= 0:
                    break
                if self._frames_sent != sent_before:
                    # The listener is taking frames, only slower than we made them: the
                    # bound is on time without progress, not on the size of the backlog
                    # (a backlog larger than close_timeout's worth was lost at exit).
                    deadline = time.monotonic() + limit
                if not outer:
                    # Let other threads' logging calls into the buffer between slices: holding
                    # it for the whole wait made them give up after block_timeout and drop
                    # their records while the listener was taking frames (an outsider: 1-21 of
                    # 48,000 from 16 threads behind a flush_within() loop; see
                    # test_a_flush_within_loop_does_not_make_other_threads_drop_records).
                    self._owner = 0
                    held = False
                    mutex.release()
                    time.sleep(_FLUSH_LEND)
                    if not mutex.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
                        return False
                    held = True
                    self._owner = me
            return self._seq >= goal or (not self._outbox and not self._pending)
        finally:
            if held:
                self._owner = outer
                mutex.release()

    def close(self) -> None:
        """Deliver what is buffered (bounded by ``close_timeout``), say goodbye, release the socket."""
        if self._pid != os.getpid() or self._closed:
            super().close()
            return
        # An outage that ends while this flush delivers is reported before the summary below,
        # not by the flusher thread at some later moment.
        self._closing = True
        delivered = self.flush_within()
        if not self._mutex.acquire(timeout=self.options.close_timeout):
            return
        outer, self._owner = self._owner, get_ident()
        try:
            if self._closed:
                return
            self._closed = True
            if delivered and (self._pending or self._outbox):
                # Logged by other threads (or a signal handler) while the flush above ran: sent
                # too while the listener takes frames (for close_timeout at most), not counted
                # as lost.
                if self._pending:
                    self._flush_locked(apply_policy=False)
                wait = self.options.close_timeout
                delivered = self._send_outbox(wait, stop_at=time.monotonic() + wait)
            lost = len(self._pending) // ROW + sum(entry[0] for entry in self._outbox)
            # Records never handed to the transport were never numbered: report them as
            # dropped in the goodbye frame so the listener's ledger can still balance.
            self._dropped += lost
            final = frame_of_packed(self._identity.packed, self._seq, self._dropped, FLAG_FINAL, count=0, packed=b"")
            # When everything before it went, the goodbye waits for room as a frame of the
            # outbox does: up to close_timeout afresh, however long the flush took while the
            # listener kept taking frames. (What was left of close_timeout, at least 0.2 s,
            # was too short behind a slow listener: every record written, the sender shown
            # as ended without a goodbye; test_a_goodbye_behind_a_slow_listener_arrives.)
            # Otherwise it is tried without waiting: it still counts the records lost as dropped.
            try:
                self._transport.send(final, self.options.close_timeout if delivered else 0.0)
            except TransportError:
                pass
            self._transport.close()
            self._wake.set()
            notes = self._take_notes()
        finally:
            self._owner = outer
            self._mutex.release()
        for line in notes:
            _report(line)
        self._say_refusal()  # before the count below: why records could not be delivered
        if lost or self._dropped:
            _report(
                f"mplog: {lost} records could not be delivered and {self._dropped - lost} were dropped by policy "
                f"(endpoint {self.endpoint}, pid {os.getpid()})"
            )
        _handlers.discard(self)
        super().close()

    def _busy_here(self) -> bool:
        return self._owner == get_ident()
