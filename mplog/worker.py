"""The worker side: the one handler put on the root logger, batching, fork and exit safety.

A logging call encodes the record (message merged, exception rendered) and appends
the bytes to a pending batch. A batch is handed to the transport when it is full,
when a record at ``flush_level`` or above arrives, after ``flush_interval`` seconds
(a background thread), and at exit. Batches the transport cannot take wait in an
outbox bounded by ``max_buffer_bytes``; past that bound the ``policy`` applies and
every record dropped is counted and reported to the listener in later frames.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing.util
import os
import signal
import socket
import sys
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field, fields, replace
from threading import get_ident
from types import FrameType
from typing import Any

from mplog.exceptions import ConfigError, TransportError
from mplog.transports import Sender, TransportOptions, open_sender, transport_of
from mplog.wire import FLAG_FINAL, Limits, build_frame, encode_record, encode_sender
from mplog.wire import Sender as SenderId

__all__ = ["MplogHandler", "WorkerOptions", "setup_worker"]

ENV_ENDPOINT = "MPLOG_ENDPOINT"
ENV_LEVEL = "MPLOG_LEVEL"
ENV_ACK = "MPLOG_ACK"
ACK_CLOSE_TIMEOUT = 10.0  # acknowledged delivery: the least an exit waits to deliver and be acknowledged
POLICIES = ("block", "drop_newest", "drop_oldest")


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker batches, bounds and flushes what it sends."""

    batch_records: int = 512  # a batch is sent when it holds this many records...
    batch_bytes: int = 64 * 1024  # ...or this many bytes...
    flush_interval: float = 0.05  # ...or when its first record is this old (seconds)
    flush_level: int = logging.ERROR  # records at or above this level are sent at once
    max_buffer_bytes: int = 16 * 1024 * 1024  # unsent data held before the policy applies
    policy: str = "block"  # block | drop_newest | drop_oldest
    block_timeout: float = 2.0  # the longest a logging call waits under "block"
    close_timeout: float = 2.0  # the longest exit waits to deliver what is buffered
    flush_on_sigterm: bool = True  # deliver buffered records when SIGTERM ends the process
    level: int | None = None  # root logger level; None: $MPLOG_LEVEL or DEBUG
    ack: bool | None = None  # acknowledged delivery (mplog.ack); None: on if the listener exported $MPLOG_ACK=1
    ack_timeout: float = 1.0  # seconds without an acknowledgement before unacknowledged frames are resent
    spool_dir: str | None = None  # acknowledged delivery: unacknowledged frames also kept in a file here (mplog.ack)
    limits: Limits = field(default_factory=Limits)
    transport: TransportOptions = field(default_factory=TransportOptions)

    @classmethod
    def from_kwargs(cls, **options: Any) -> WorkerOptions:
        """Build options from keyword arguments, naming any bad key and its fix."""
        known = {f.name: f for f in fields(cls)}
        nested = {
            "limits": {f.name for f in fields(Limits)},
            "transport": {f.name for f in fields(TransportOptions)},
        }
        top: dict[str, Any] = {}
        sub: dict[str, dict[str, Any]] = {"limits": {}, "transport": {}}
        for key, value in options.items():
            if key in known:
                top[key] = value
                continue
            for group, names in nested.items():
                if key in names:
                    sub[group][key] = value
                    break
            else:
                choices = sorted(set(known) | nested["limits"] | nested["transport"])
                raise ConfigError(f"setup_worker() got an unknown option {key!r}; known options: {', '.join(choices)}")
        opts = cls(**top)
        if sub["limits"]:
            opts = replace(opts, limits=replace(opts.limits, **sub["limits"]))
        if sub["transport"]:
            opts = replace(opts, transport=replace(opts.transport, **sub["transport"]))
        opts.validate()
        return opts

    def validate(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        for name in ("batch_records", "batch_bytes", "max_buffer_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if self.spool_dir is not None and not isinstance(self.spool_dir, str):
            raise ConfigError(f"spool_dir must be a directory path (str), got {self.spool_dir!r}")
        if self.spool_dir and self.ack is False:
            raise ConfigError("spool_dir keeps unacknowledged frames: it needs ack=True (or drop spool_dir)")
        for name in ("flush_interval", "block_timeout", "close_timeout", "ack_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{name} must be a number of seconds >= 0, got {value!r}")


_ASYNC_SIGNALS = set(signal.valid_signals()) - {
    signal.SIGSEGV,
    signal.SIGBUS,
    signal.SIGFPE,
    signal.SIGILL,
    signal.SIGKILL,
    signal.SIGSTOP,
}
_handlers: weakref.WeakSet[MplogHandler] = weakref.WeakSet()
_exit_hooks_pid = -1
_abandoned: list[Any] = []  # transports inherited across fork: never closed in the child


def _process_start_time() -> float:
    try:
        import psutil  # noqa: PLC0415  # only when a handler is created: keeps `import mplog` light

        return float(psutil.Process().create_time())
    except Exception:
        return time.time()


class _Identity:
    """The sender identity of the current process incarnation and handler stream."""

    def __init__(self) -> None:
        stream = int.from_bytes(os.urandom(4), "big")
        self.sender = SenderId(socket.gethostname(), os.getpid(), _process_start_time(), stream)
        self.packed = encode_sender(self.sender)


class MplogHandler(logging.Handler):
    """Ships every record it handles to the listener at ``endpoint``."""

    def __init__(self, endpoint: str, options: WorkerOptions | None = None) -> None:
        super().__init__()
        transport_of(endpoint)  # validates the scheme
        self.endpoint = endpoint
        self.options = options or WorkerOptions()
        self._start()
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
        self._flush_level = options.flush_level
        self._batch_records = options.batch_records
        self._batch_bytes = options.batch_bytes

    # ------------------------------------------------------------ state per process

    def _start(self) -> None:
        """(Re)initialise every piece of per-process state; runs again in a forked child."""
        self._pid = os.getpid()
        self._mutex = threading.RLock()
        self._owner = 0  # ident of the thread inside the buffer (holding _mutex), 0 for none
        self._identity = _Identity()
        self._transport: Sender = self._open_transport()
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._outbox: deque[tuple[list[bytes], int]] = deque()
        self._outbox_bytes = 0
        self._seq = 0  # number of the next record handed to the transport
        self._dropped = 0  # records dropped by policy (reported in every frame)
        self._frames_sent = 0
        self._errors = 0
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def _open_transport(self) -> Sender:
        if self.options.ack:  # frames kept until acknowledged, resent after a listener restart
            from mplog.ack import open_ack_sender  # noqa: PLC0415  # opt-in

            return open_ack_sender(self.endpoint, self.options)
        return open_sender(self.endpoint, self.options.transport)

    def _after_fork_in_child(self) -> None:
        _abandoned.append(self._transport)
        self._start()

    @property
    def counters(self) -> dict[str, int]:
        """Worker-side counters: records numbered and sent, dropped, buffered, errors.

        With acknowledged delivery also ``unacked`` (frames sent, not yet acknowledged),
        ``resent`` (frames sent again) and ``spool_errors`` (failed spool writes).
        """
        counters = {
            "sent": self._seq,
            "frames": self._frames_sent,
            "dropped": self._dropped,
            "buffered": len(self._pending) + sum(len(b) for b, _ in self._outbox),
            "buffered_bytes": self._pending_bytes + self._outbox_bytes,
            "errors": self._errors,
        }
        if self._options.ack:
            transport = self._transport
            for name in ("unacked", "resent", "spool_errors"):
                counters[name] = int(getattr(transport, name, 0))
        return counters

    # ------------------------------------------------------------ the logging call

    def handle(self, record: logging.LogRecord) -> bool:  # type: ignore[override, unused-ignore]  # 3.12: LogRecord|bool
        # Handler.handle would hold Handler.lock without a bound; emit() has its own bounded lock.
        if not self.filters:  # the usual case: skip Filterer.filter's loop, and emit()'s call
            try:
                if _exit_hooks_pid != self._pid:
                    _install_exit_hooks()
                self._add(encode_record(record, self._limits), record.levelno >= self._flush_level)
            except Exception:
                self._errors += 1
                self.handleError(record)
            return True
        rv = self.filter(record)
        if isinstance(rv, logging.LogRecord):
            record = rv
        if rv:
            self.emit(record)
        return bool(rv)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if _exit_hooks_pid != self._pid:
                _install_exit_hooks()
            self._add(encode_record(record, self._limits), record.levelno >= self._flush_level)
        except Exception:
            self._errors += 1
            self.handleError(record)

    def _add(self, data: bytes, urgent: bool) -> None:
        me = get_ident()
        if self._owner == me:
            # Re-entered from a signal handler (or from inside a flush) on this thread:
            # only append; the outer call sends it.
            self._pending.append(data)
            self._pending_bytes += len(data)
            return
        mutex = self._mutex
        # An uncontended try first: acquire(timeout=...) costs twice as much on every call.
        if not (mutex.acquire(False) or mutex.acquire(timeout=self._options.block_timeout)):
            self._dropped += 1  # another thread held the buffer past the bound
            return
        self._owner = me
        try:
            if self._closed:
                self._dropped += 1
                return
            pending = self._pending
            pending.append(data)
            self._pending_bytes = nbytes = self._pending_bytes + len(data)
            count = len(pending)
            if urgent or count >= self._batch_records or nbytes >= self._batch_bytes:
                self._flush_locked(apply_policy=True)
            elif count == 1:
                self._kick()
        finally:
            self._owner = 0
            mutex.release()
        if _deferred_signal and not _closing:
            _close_all()

    # ------------------------------------------------------------ batching and policy

    def _flush_locked(self, *, apply_policy: bool) -> None:
        if self._pending:
            batch, nbytes = self._pending, self._pending_bytes
            self._pending, self._pending_bytes = [], 0
            self._outbox.append((batch, nbytes))
            self._outbox_bytes += nbytes
        self._send_outbox(0.0)
        if apply_policy and self._outbox_bytes > self.options.max_buffer_bytes:
            self._apply_policy()
        if self._outbox:
            self._kick()

    def _send_outbox(self, timeout: float) -> bool:
        outbox = self._outbox
        while outbox:
            batch, nbytes = outbox[0]
            frame = build_frame(self._identity.packed, self._seq, self._dropped, 0, batch)
            try:
                sent = self._transport.send(frame, timeout)
            except TransportError:
                self._errors += 1
                sent = False
            if not sent:
                return False
            outbox.popleft()
            self._outbox_bytes -= nbytes
            self._seq += len(batch)
            self._frames_sent += 1
        return True

    def _apply_policy(self) -> None:
        opts = self.options
        if opts.policy == "block":
            deadline = time.monotonic() + opts.block_timeout
            while self._outbox_bytes > opts.max_buffer_bytes:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._send_outbox(min(remaining, 0.05)):
                    break
        while self._outbox_bytes > opts.max_buffer_bytes and self._outbox:
            batch, nbytes = self._outbox.popleft() if opts.policy == "drop_oldest" else self._outbox.pop()
            self._outbox_bytes -= nbytes
            self._dropped += len(batch)

    # ------------------------------------------------------------ the flusher thread

    def _kick(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="mplog-flusher", daemon=True)
            self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        # Signals sent to the process must reach the main thread: delivered to this
        # thread, a SIGTERM would never interrupt a main thread blocked in a lock
        # (a Pool worker waiting for tasks) and Pool.terminate() would hang
        # (see test_pool_terminate_under_forkserver_never_hangs).
        signal.pthread_sigmask(signal.SIG_BLOCK, _ASYNC_SIGNALS)
        wake, interval = self._wake, self.options.flush_interval
        while not self._closed:
            wake.wait()
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

    # ------------------------------------------------------------ flush and close

    def flush(self, timeout: float | None = None) -> bool:  # type: ignore[override]  # adds a bound and a result
        """Send everything buffered, waiting at most ``timeout`` seconds; True if all went."""
        if self._pid != os.getpid():
            return False
        if self._closed:
            # logging.shutdown() flushes every handler again at exit, after close(): what
            # close() could not deliver stays undelivered, so do not wait for it twice
            # (see test_exit_with_the_listener_gone_waits_close_timeout_once).
            return not self._pending and not self._outbox
        limit = self.options.close_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        if not self._mutex.acquire(timeout=max(limit, 0.0)):
            return False
        outer, self._owner = self._owner, get_ident()
        try:
            if self._pending:
                self._flush_locked(apply_policy=False)
            while self._outbox:
                remaining = deadline - time.monotonic()
                sent_before = self._frames_sent
                if self._send_outbox(max(min(remaining, 0.05), 0.0)) or remaining <= 0:
                    break
                if self._frames_sent != sent_before:
                    # The listener is taking frames, only slower than we made them: the
                    # bound is on time without progress, not on the size of the backlog
                    # (a backlog larger than close_timeout's worth was lost at exit).
                    deadline = time.monotonic() + limit
            return not self._outbox
        finally:
            self._owner = outer
            self._mutex.release()

    def close(self) -> None:
        """Deliver what is buffered (bounded by ``close_timeout``), say goodbye, release the socket."""
        if self._pid != os.getpid() or self._closed:
            super().close()
            return
        delivered = self.flush()
        if not self._mutex.acquire(timeout=self.options.close_timeout):
            return
        outer, self._owner = self._owner, get_ident()
        try:
            if self._closed:
                return
            self._closed = True
            lost = len(self._pending) + sum(len(batch) for batch, _ in self._outbox)
            # Records never handed to the transport were never numbered: report them as
            # dropped in the goodbye frame so the listener's ledger can still balance.
            self._dropped += lost
            final = build_frame(self._identity.packed, self._seq, self._dropped, FLAG_FINAL, [])
            try:
                self._transport.send(final, 0.2 if delivered else 0.0)
            except TransportError:
                pass
            self._transport.close()
            self._wake.set()
        finally:
            self._owner = outer
            self._mutex.release()
        if lost or self._dropped:
            _report(
                f"mplog: {lost} records could not be delivered and {self._dropped - lost} were dropped by policy "
                f"(endpoint {self.endpoint}, pid {os.getpid()})"
            )
        _handlers.discard(self)
        super().close()

    def _busy_here(self) -> bool:
        return self._owner == get_ident()


def _report(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except Exception:
        pass


# ---------------------------------------------------------------- process-wide hooks


_closing = False
_deferred_signal = 0


def _close_all() -> None:
    global _closing
    if _closing:
        return
    _closing = True
    try:
        for handler in list(_handlers):
            try:
                handler.close()
            except Exception:  # noqa: PERF203  # one failing handler must not keep the others open
                pass
    finally:
        _closing = False
    if _deferred_signal:
        _die(_deferred_signal)


def _die(signum: int) -> None:
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_exit_hooks() -> None:
    """Close every handler at exit, on every path a worker process ends by."""
    global _exit_hooks_pid
    _exit_hooks_pid = os.getpid()
    # multiprocessing children end with os._exit() after running these finalizers
    # (atexit does not run there); the registry is cleared at each child's start,
    # which is why this runs again on the first record of every new process.
    multiprocessing.util.Finalize(None, _close_all, exitpriority=-100)


def _after_fork_in_child() -> None:
    handlers = list(_handlers)
    for handler in handlers:
        handler._after_fork_in_child()
    # A child forked from a configured process (a Pool worker with no initializer)
    # must still deliver its last batch when Pool.terminate() sends SIGTERM.
    if handlers and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        try:
            signal.signal(signal.SIGTERM, _on_sigterm)
        except ValueError:  # not the main thread of the child
            pass
    if signal.getsignal(signal.SIGTERM) is _on_sigterm:
        _watch_sigterm()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Pool.terminate() and service managers end workers with SIGTERM: deliver what
    # is buffered first, then die of the same signal as before. If the signal
    # interrupted mplog itself on this thread (an emit, or the exit-time close),
    # flushing here would resend or lose the batch in hand: the interrupted code
    # finishes first and then dies (see test_sigterm_during_close_neither_duplicates_nor_loses).
    global _deferred_signal
    if _closing or any(h._busy_here() for h in list(_handlers)):
        _deferred_signal = signum
        return
    _close_all()
    _die(signum)


_wakeup: tuple[int, int, int] | None = None  # (pid, read fd, write fd) of the SIGTERM watch


def _watch_sigterm() -> None:
    """Send SIGTERM to the main thread again until mplog's handler has acted on it.

    CPython can lose the wake-up of a main thread that blocks in a lock just as SIGTERM
    arrives (a Pool worker waiting for its next task): the signal is marked as caught
    but the handler never runs, and Pool.terminate() waits for that worker forever
    (about 1 pool in 30 measured, with any Python-level SIGTERM handler). The C-level
    handler writes every caught signal to the wakeup fd; a thread reading it sends
    SIGTERM again, whose EINTR lets the handler run
    (see test_pool_terminate_under_forkserver_never_hangs).
    """
    global _wakeup
    inherited = _wakeup
    if inherited is not None and inherited[0] == os.getpid():
        return  # already watching in this process
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    try:
        previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except ValueError:  # not the main thread
        previous = write_fd
    if inherited is not None and previous == inherited[2]:
        os.close(inherited[1])  # the parent's pipe, inherited by fork: this process needs its own
        os.close(inherited[2])
    elif previous != -1:
        if previous != write_fd:
            signal.set_wakeup_fd(previous)  # someone else's (asyncio's): leave it to them
        os.close(read_fd)
        os.close(write_fd)
        return
    _wakeup = (os.getpid(), read_fd, write_fd)
    thread = threading.Thread(target=_resend_sigterm, args=(read_fd,), name="mplog-sigterm", daemon=True)
    held = signal.pthread_sigmask(signal.SIG_BLOCK, _ASYNC_SIGNALS)  # the thread starts with them blocked
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _resend_sigterm(read_fd: int) -> None:
    main = threading.main_thread().ident
    while True:
        try:
            caught = os.read(read_fd, 256)
        except OSError:
            return
        if not caught or main is None:
            return
        if signal.SIGTERM not in caught:
            continue
        # Until the handler ends the process (or deliberately defers to a close in
        # progress, which a repeated signal does not disturb).
        while signal.getsignal(signal.SIGTERM) is _on_sigterm:
            time.sleep(0.2)
            if signal.getsignal(signal.SIGTERM) is not _on_sigterm:
                break
            try:
                signal.pthread_kill(main, signal.SIGTERM)
            except (OSError, ValueError):
                return


atexit.register(_close_all)
os.register_at_fork(after_in_child=_after_fork_in_child)


def inherited_setting(key: str) -> str | None:
    """A setting exported by :func:`mplog.start_listener` to the processes it can reach.

    The environment alone is not enough: a forkserver started earlier holds the
    environment of that moment, so its children would find a stale endpoint. The
    value also travels in multiprocessing's per-process config, which is sent with
    every child that multiprocessing starts, whatever the start method
    (see test_forkserver_started_by_an_earlier_listener_finds_the_current_one).
    """
    config = getattr(multiprocessing.current_process(), "_config", None)
    value = config.get(f"mplog:{key}") if isinstance(config, dict) else None
    return value if isinstance(value, str) else os.environ.get(key)


def export_setting(key: str, value: str | None) -> None:
    """Export (or, with None, withdraw) a setting for child processes started from now on."""
    config = getattr(multiprocessing.current_process(), "_config", None)
    if value is None:
        os.environ.pop(key, None)
        if isinstance(config, dict):
            config.pop(f"mplog:{key}", None)
        return
    os.environ[key] = value
    if isinstance(config, dict):
        config[f"mplog:{key}"] = value


def _level_from_env() -> int:
    value = inherited_setting(ENV_LEVEL) or ""
    if not value:
        return logging.DEBUG
    if value.isdigit():
        return int(value)
    level = logging.getLevelName(value.upper())
    if not isinstance(level, int):
        raise ConfigError(f"{ENV_LEVEL} must be a level name or number, got {value!r}")
    return level


def setup_worker(endpoint: str | None = None, **options: Any) -> MplogHandler:
    """Route this process's logging to the listener: one mplog handler on the root logger.

    Args:
        endpoint: the listener's URL; defaults to ``$MPLOG_ENDPOINT`` (set by
            :func:`mplog.start_listener` for child processes).
        **options: fields of :class:`WorkerOptions`, :class:`~mplog.wire.Limits` or
            :class:`~mplog.transports.TransportOptions`.

    Returns:
        The handler (calling again with the same endpoint returns the same one).

    Raises:
        ConfigError: no endpoint is known, or an option is wrong.
    """
    endpoint = endpoint or inherited_setting(ENV_ENDPOINT)
    if not endpoint:
        raise ConfigError(
            f"setup_worker() has no endpoint: pass one, or set {ENV_ENDPOINT} "
            "(mplog.start_listener() sets it for the processes it starts)"
        )
    opts = WorkerOptions.from_kwargs(**options)
    if opts.ack is None:  # an acknowledging listener exports MPLOG_ACK=1 (its ROUTER cannot talk to PUSH)
        opts = replace(opts, ack=inherited_setting(ENV_ACK) == "1")
    if opts.spool_dir and not opts.ack:
        raise ConfigError(
            "setup_worker(spool_dir=...) needs acknowledged delivery: pass ack=True, or start the listener "
            "with ack=True (it exports MPLOG_ACK=1 to its workers)"
        )
    if opts.ack and "close_timeout" not in options:  # exit outlasts a listener restart (docs/reliability.md)
        opts = replace(opts, close_timeout=max(opts.close_timeout, ACK_CLOSE_TIMEOUT))
    root = logging.getLogger()
    level = opts.level if opts.level is not None else _level_from_env()
    current = [h for h in root.handlers if isinstance(h, MplogHandler)]
    if len(root.handlers) == 1 and current and current[0].endpoint == endpoint and not current[0]._closed:
        handler = current[0]
        if options:
            handler.options = opts
    else:
        handler = MplogHandler(endpoint, opts)
        for old in list(root.handlers):
            root.removeHandler(old)
            if isinstance(old, MplogHandler):
                old.close()
        root.addHandler(handler)
    root.setLevel(level)
    on_main_thread = threading.current_thread() is threading.main_thread()
    if opts.flush_on_sigterm and on_main_thread and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _on_sigterm)
    if on_main_thread and signal.getsignal(signal.SIGTERM) is _on_sigterm:
        _watch_sigterm()
    return handler
