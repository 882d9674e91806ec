"""Acknowledged delivery (opt-in): at-least-once, with duplicates removed by the listener.

Worker side, :class:`AckingSender` wraps the DEALER transport
(:mod:`mplog.transports.zeromq_ack`). Every frame it sends stays in a bounded resend
buffer until the listener acknowledges it; when no acknowledgement arrives for
``ack_timeout`` seconds (the listener died and was restarted, say), every unacknowledged
frame is sent again, oldest first. A full resend buffer refuses new frames, so the
worker's own policy (block, drop_newest, drop_oldest) applies and counts them.

Listener side, :class:`mplog.listener.ack_loop.AckServer` handles each frame as the plain
server does, then flushes every handler, records the sender's new high-water mark (``next_seq``) in a
small state file, and only then acknowledges. A restarted listener reads the marks
back, so a resent frame's records that already reached the handlers are skipped
(counted as ``duplicates``). An acknowledgement is the msgpack array
``[stream, next_seq]``: "every record of stream ``stream`` below ``next_seq`` is written"
(encoded and decoded by :mod:`mplog.delivery.ack_format`).

The duplicate window and everything else this does and does not promise are in
docs/reliability.md.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import weakref
from collections import deque
from typing import Any

from mplog.delivery import ACK_CLOSE_TIMEOUT
from mplog.delivery.ack_format import decode_ack
from mplog.delivery.spool import Spooler
from mplog.delivery.spool_format import goodbye_frame
from mplog.exceptions import report as _report
from mplog.transports.base import ASYNC_SIGNALS, TransportOptions
from mplog.transports.zeromq_ack import DealerSender
from mplog.wire import FLAG_FINAL, read_envelope

__all__ = [
    "AckingSender",
    "open_ack_sender",
]

_REFUSAL_QUIET = 0.2  # seconds: refusals of the same position within this time trigger one resend round


# ---------------------------------------------------------------- worker side


class _Stream:
    """The unacknowledged frames of one sender stream, oldest first."""

    def __init__(self, adopted: str | None = None) -> None:
        self.frames: deque[tuple[int, bytes]] = deque()  # (end_seq, frame)
        self.bytes = 0
        self.acked = 0  # next_seq the listener last acknowledged
        self.progress = self.advanced = time.monotonic()  # last resend round / last acknowledgement
        self.resend_at: int | None = None  # the next frame a resend round has still to send
        self.refused_at, self.refused_when = -1, 0.0
        # A dead worker's stream, adopted from the spool file at this path: said goodbye for once acknowledged.
        self.adopted = adopted
        self.sender, self.end_seq, self.dropped, self.final = b"", 0, 0, False
        # The stream's goodbye frame while it waits for its acknowledgement: only one that says
        # the goodbye came (ack_format) takes it, not one of the records before it, which ends at
        # the same place (a resent copy's can come first; the goodbye was then dropped at close).
        self.goodbye: bytes | None = None

    def keep(self, end_seq: int, frame: bytes, *, goodbye: bool = False) -> None:
        self.frames.append((end_seq, frame))
        self.bytes += len(frame)
        if goodbye:
            self.goodbye = frame

    def acknowledge(self, next_seq: int, closed: bool = False) -> bool:
        """Drop the frames below ``next_seq`` (the goodbye only when ``closed``); True if any went."""
        self.acked = max(self.acked, next_seq)
        frames, popped = self.frames, 0
        while frames and frames[0][0] <= next_seq:
            if frames[0][1] is self.goodbye:
                if not closed:
                    break
                self.goodbye = None
            self.bytes -= len(frames.popleft()[1])
            popped += 1
        if popped:
            self.advanced = self.progress = time.monotonic()
            if self.resend_at is not None:
                self.resend_at = max(self.resend_at - popped, 0)
        return popped > 0


class AckingSender:
    """A Sender that keeps every frame until the listener acknowledges it, resending on silence.

    With ``spool_dir``, kept frames are also written to a spool file (:mod:`mplog.delivery.spool`)
    and the spool files of dead workers found there are adopted: their frames are resent
    under the dead worker's identity, acknowledged per stream, and closed with a goodbye.

    Args:
        endpoint: the listener's endpoint (ipc:// or tcp://).
        options: socket options for the DEALER transport.
        ack_timeout: seconds without progress before every unacknowledged frame is sent again.
        max_unacked_bytes: the resend buffer's bound (and the spool file's); past it :meth:`send` refuses frames.
        close_timeout: the longest :meth:`close` waits for the last acknowledgements.
        spool_dir: a directory private to this user for spool files, or None.
    """

    def __init__(
        self,
        endpoint: str,
        options: TransportOptions,
        *,
        ack_timeout: float = 1.0,
        max_unacked_bytes: int = 16 * 1024 * 1024,
        close_timeout: float = 2.0,
        spool_dir: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._dealer = DealerSender(endpoint, options)
        self._ack_timeout = ack_timeout
        self._max_bytes = max_unacked_bytes
        self._close_timeout = close_timeout
        self._spool_dir = spool_dir
        self._pid = os.getpid()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.resent = 0  # frames sent again after a silence, a refusal or an adoption
        self.unacknowledged_at_close = 0  # records never acknowledged when close() gave up
        self._spooler: Spooler | None = None
        _senders.add(self)
        self._start()

    def _start(self) -> None:
        """(Re)initialise the per-process state; runs again in a forked child (its own spool file)."""
        self._lock = threading.Lock()
        self._own = _Stream()
        self._own_id = -1
        self._streams: dict[int, _Stream] = {}  # by stream id, as acknowledgements name them
        if self._spool_dir is not None:
            self._spooler = Spooler(self._spool_dir, self._max_bytes)
            self._adopt()

    def refusal(self) -> str | None:
        """Why the listener refused the connection (a CURVE handshake), once seen; None otherwise."""
        return self._dealer.refusal()

    @property
    def unacked(self) -> int:
        """Frames sent but not yet acknowledged (this worker's and adopted ones)."""
        return len(self._own.frames) + sum(len(s.frames) for s in self._streams.values() if s is not self._own)

    @property
    def spool_errors(self) -> int:
        """Spool writes that failed (spooling then stopped; the memory buffer goes on)."""
        return self._spooler.errors if self._spooler is not None else 0

    @property
    def spool_path(self) -> str | None:
        """This process's spool file, while it is written."""
        return self._spooler.path if self._spooler is not None else None

    # ------------------------------------------------------------ adopted spools

    def _adopt(self) -> None:
        """Track the frames of dead workers' spool files as streams of their own, to resend and to close."""
        if self._spooler is None:
            return
        for path, found in self._spooler.adopt(self._streams):
            for sid, adopted in found.items():
                stream = self._streams[sid] = _Stream(path)
                for end_seq, frame in adopted.frames:
                    stream.keep(end_seq, frame, goodbye=bool(read_envelope(frame).flags & FLAG_FINAL))
                stream.sender, stream.end_seq, stream.dropped, stream.final = adopted[1:]
                stream.resend_at = 0
                if not adopted.frames:
                    self._finish_adopted(sid, stream)
        if self._spooler.adopted:
            self._start_thread()

    def _finish_adopted(self, stream_id: int, stream: _Stream) -> None:
        """An adopted stream is acknowledged: say goodbye for the dead sender, then delete its file."""
        if not stream.final:
            stream.final = True
            end = max(stream.end_seq, stream.acked)
            stream.keep(end, goodbye_frame(stream.sender, end, stream.dropped), goodbye=True)
            stream.resend_at = len(stream.frames) - 1
            self._push(stream)
        elif self._spooler is not None and stream.adopted is not None:
            del self._streams[stream_id]
            self._spooler.stream_done(stream.adopted, stream_id)

    def _give_up_adopted(self, *, at_close: bool) -> None:
        """Leave an adopted file for the next worker: at close, or when the listener answers others but not it."""
        if self._spooler is None:
            return
        now, waited = time.monotonic(), self._close_timeout
        answering = any(now - s.advanced < waited for s in self._streams.values())
        for path, (_, open_streams) in list(self._spooler.adopted.items()):
            streams = [self._streams[sid] for sid in open_streams]
            if at_close or (answering and all(now - s.advanced >= waited for s in streams)):
                for sid in self._spooler.give_up(path, sum(len(s.frames) for s in streams), waited):
                    del self._streams[sid]

    # ------------------------------------------------------------ sending

    def send(self, frame: bytes, timeout: float = 0.0) -> bool:
        if self._closed:
            return False
        if self._pid != os.getpid():  # forked: the parent's unacknowledged frames are the parent's
            self._reset_after_fork()
        head = read_envelope(frame)
        keep = bool(head.records or head.flags & FLAG_FINAL)
        with self._lock:
            self._read_acks()
            own = self._own
            if own.frames and own.bytes + len(frame) > self._max_bytes:
                return False  # the worker keeps it; its policy applies
            spooler = self._spooler
            spooled = spooler.call("append", frame, head) if keep and spooler is not None else None
            if spooled is False:
                return False  # the spool file is at its bound
            if not self._dealer.send(frame, timeout):
                if spooled and spooler is not None:
                    spooler.call("undo")
                return False
            if self._own_id != head.stream:
                self._streams.pop(self._own_id, None)
                self._own_id = head.stream
                self._streams[head.stream] = own
            if keep:
                if not own.frames:
                    own.progress = time.monotonic()
                own.keep(head.end_seq, frame, goodbye=bool(head.flags & FLAG_FINAL))
        self._start_thread()
        return True

    def _start_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mplog-ack", daemon=True)
            self._thread.start()

    def _release_inherited(self) -> None:
        if self._spooler is not None:
            self._spooler.release_inherited()
            self._spooler = None

    def _reset_after_fork(self) -> None:
        self._release_inherited()
        self._pid, self._thread = os.getpid(), None
        self._start()  # the child's own spool file

    def _read_acks(self) -> None:
        """Drop every frame the listener acknowledged (call with the lock held)."""
        while True:
            data = self._dealer.recv(0.0)
            if data is None:
                return
            ack = decode_ack(data)
            stream = self._streams.get(ack[0]) if ack is not None else None
            if ack is None or stream is None:
                continue
            stream_id, next_seq, refused, closed = ack
            if refused:  # the listener expects next_seq first (it restarted): go back, oldest first
                self._resend_from_refusal(stream, next_seq)
            elif stream.acknowledge(next_seq, closed):
                if stream is self._own:
                    if self._spooler is not None:
                        self._spooler.call("acknowledged", stream_id, next_seq)
                elif not stream.frames:
                    self._finish_adopted(stream_id, stream)

    def _push(self, stream: _Stream) -> None:
        """Send the rest of a resend round, oldest first, until the transport refuses (lock held)."""
        if stream.resend_at is None:
            return
        frames, i = stream.frames, stream.resend_at
        while i < len(frames):
            if not self._dealer.send(frames[i][1], 0.0):
                stream.resend_at = i  # the listener is still away (IMMEDIATE=1): the next tick goes on
                return
            self.resent += 1
            i += 1
        stream.resend_at = None

    def _resend_from_refusal(self, stream: _Stream, next_seq: int) -> None:
        now = time.monotonic()
        if next_seq == stream.refused_at and now - stream.refused_when < _REFUSAL_QUIET:
            return  # one resend round answers a whole burst of refusals
        stream.refused_at, stream.refused_when = next_seq, now
        stream.progress, stream.resend_at = now, 0
        self._push(stream)

    def _resend_if_silent(self) -> None:
        """After ``ack_timeout`` without progress, send a stream's unacknowledged frames again (lock held)."""
        now = time.monotonic()
        for stream in list(self._streams.values()):
            if stream.frames and now - stream.progress >= self._ack_timeout:
                stream.progress, stream.resend_at = now, 0  # at most one resend round per ack_timeout
            self._push(stream)

    def _run(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, ASYNC_SIGNALS)  # signals belong to the main thread
        while not self._closed and self._pid == os.getpid():
            time.sleep(0.02)
            with self._lock:
                if self._closed:
                    return
                self._read_acks()
                self._resend_if_silent()
                self._give_up_adopted(at_close=False)
                if self._spooler is not None and self._spooler.more and not self._spooler.adopted:
                    self._adopt()

    def close(self, linger: float | None = None) -> None:
        """Wait until every frame is acknowledged, then close; idempotent.

        The wait ends ``close_timeout`` seconds after the last acknowledgement that moved
        (not after the first): a slow listener that keeps acknowledging is waited for.

        This worker's spool file is deleted when everything was acknowledged, and kept
        (for the next worker to adopt) otherwise.
        """
        if self._closed:
            return
        if self._pid == os.getpid():
            deadline = time.monotonic() + self._close_timeout
            acked = self._own.acked
            while True:
                with self._lock:
                    self._read_acks()
                    if not self.unacked or time.monotonic() >= deadline:
                        break
                    if self._own.acked != acked:
                        # The listener is acknowledging, only slower than we sent: the bound
                        # is on time without progress, as for a worker's outbox (a fixed 10 s
                        # gave up on a slow listener's backlog, whose stop then wrote it nowhere
                        # and counted nothing; see test_faults.py,
                        # test_a_worker_behind_a_slow_acknowledging_listener_waits_while_it_acknowledges).
                        acked = self._own.acked
                        deadline = time.monotonic() + self._close_timeout
                    self._resend_if_silent()
                time.sleep(0.01)
            with self._lock:
                self._closed = True
                self._close_spools()
        self._closed = True
        self._dealer.close(linger)

    def _close_spools(self) -> None:
        own = self._own
        if own.frames:
            self.unacknowledged_at_close = max(own.frames[-1][0] - own.acked, 0)
            kept = f"; kept in {self.spool_path} for the next worker" if self.spool_path else ""
            _report(
                f"mplog: {self.unacknowledged_at_close} records were sent but never acknowledged "
                f"(endpoint {self.endpoint}, pid {os.getpid()}){kept}"
            )
        if self._spooler is not None:
            self._spooler.close(keep=bool(own.frames))
        self._give_up_adopted(at_close=True)


_senders: weakref.WeakSet[AckingSender] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Close (never unlock) the files a parent's sender holds, now rather than at the child's
    # first send: an inherited descriptor keeps the parent's lock alive after the parent dies,
    # and its spool could not be adopted while this child lives
    # (see test_a_forked_child_that_outlives_its_parent_does_not_keep_the_parents_spool_from_being_adopted).
    for sender in list(_senders):
        if sender._pid != os.getpid():
            sender._release_inherited()


os.register_at_fork(after_in_child=_after_fork_in_child)


def open_ack_sender(endpoint: str, options: Any) -> AckingSender:
    """The worker's transport in acknowledged mode (``options`` is a WorkerOptions)."""
    return AckingSender(
        endpoint,
        options.transport,
        ack_timeout=options.ack_timeout,
        max_unacked_bytes=options.max_buffer_bytes,
        # At exit, wait long enough for a supervised restart and one resend round.
        close_timeout=max(options.close_timeout, ACK_CLOSE_TIMEOUT, 5 * options.ack_timeout),
        spool_dir=getattr(options, "spool_dir", None),
    )
