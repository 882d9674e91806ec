"""The worker side: the one handler put on the root logger, its logging call, fork and exit safety.

A logging call merges the record's message and appends its fields to a pending batch
(a record with extras, an exception or a stack is packed there and then); the batch is
packed when it is flushed, a column at a time (:func:`mplog.wire.columns.pack_pending`).
A batch is handed to the transport when it is full, when a record at ``flush_level`` or
above arrives, after ``flush_interval`` seconds (a background thread), and at exit.
Batches the transport cannot take wait in an outbox bounded by ``max_buffer_bytes``;
past that bound the ``policy`` applies and every record dropped is counted and reported
to the listener in later frames.

This module holds that logging call (:class:`MplogHandler`), the process-wide hooks
that close every handler at fork, exit and SIGTERM, and :func:`setup_worker`; the
batching, policy and flusher thread are :mod:`mplog.worker.outbox`, the options
:mod:`mplog.worker.options`. The hooks stay next to the logging call because it reads
their state (``_exit_hooks_pid``, ``_deferred_signal``, ``_closing``) as plain
module globals, one lookup each, on every call.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing.util
import os
import signal
import sys
import threading
import time
from dataclasses import replace
from threading import get_ident
from types import FrameType
from typing import Any

from mplog.delivery import ACK_CLOSE_TIMEOUT
from mplog.exceptions import ConfigError, report
from mplog.transports import check_endpoint
from mplog.transports.base import ASYNC_SIGNALS, default_collector_endpoint, foreign_dir_problem, local_collector
from mplog.wire.columns import PACKED, PACKED_PAD, ROW
from mplog.wire.encode import encode_record, plain_fields
from mplog.worker import level as collector_level
from mplog.worker.env import ENV_ACK, ENV_ENDPOINT, ENV_LEVEL, ENV_WIRE_VERSION, ack_setting, inherited_setting
from mplog.worker.level import LevelFollower
from mplog.worker.options import WorkerOptions
from mplog.worker.outbox import BatchingHandler, _handlers

__all__ = ["MplogHandler", "WorkerOptions", "setup_worker"]


# Process-wide state read on every logging call: kept here, where MplogHandler's hot
# path reads each with one global lookup; only the hooks below rebind them.
_exit_hooks_pid = -1
_closing = False
_deferred_signal = 0
# What Filterer.filter returns for a record every filter passed: the record itself from 3.12 on.
_FILTER_RETURNS_RECORD = sys.version_info >= (3, 12)


class MplogHandler(BatchingHandler):
    """Ships every record it handles to the listener at ``endpoint``."""

    _follower: LevelFollower | None = None  # set by setup_worker() when the listener's level is to be followed

    def _housekeeping(self) -> None:
        # On the flusher thread, never on the logging call's path (mplog.worker.level).
        super()._housekeeping()
        follower = self._follower
        if follower is None or self._closed or not follower.due():
            return
        try:
            if follower.ask(collector_level.REFRESH_TIMEOUT) is not None and follower.level is not None:
                follower.apply(self, follower.level)
        except Exception:
            self._errors += 1

    def follow_listener_level(self, *, ask_timeout: float | None = None) -> None:
        """Take the level the listener accepts: now (bounded by ``ask_timeout``) and again now and then.

        Without an answer the handler and the root logger let everything through (DEBUG),
        as before any answer; the flusher thread asks again every REFRESH_INTERVAL seconds.
        """
        follower = self._follower
        if follower is None or follower.endpoint != self.endpoint:
            follower = self._follower = LevelFollower(self.endpoint)
        if not follower.fresh():
            follower.ask(collector_level.ASK_TIMEOUT if ask_timeout is None else ask_timeout)
        level = follower.level
        follower.apply(self, logging.DEBUG if level is None else level, set_root=True)
        if level is None:
            self.setLevel(logging.NOTSET)
        self._idle_timeout = collector_level.REFRESH_INTERVAL
        # The flusher thread asks again. Started now, not at the first record: a worker whose
        # every record was below the listener's old level never sent one, so never started it,
        # and kept that level for good after the collector was restarted with a lower one.
        self._ensure_thread()

    def _after_fork_in_child(self) -> None:
        super()._after_fork_in_child()
        if self._follower is not None and not self._closed:
            self._ensure_thread()  # a forked child that never logs still follows the listener's level

    def pin_level(self, level: int, *, handler_too: bool) -> None:
        """Stop following the listener: the root logger at ``level``; the handler too, or at NOTSET."""
        self._follower = None
        self._idle_timeout = None
        logging.getLogger().setLevel(level)
        self.setLevel(level if handler_too else logging.NOTSET)

    # ------------------------------------------------------------ the logging call

    # Set per class by __init_subclass__: a subclass whose emit() differs gets logging.Handler.handle.
    _emit_overridden = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._emit_overridden = cls.emit is not MplogHandler.emit

    def handle(self, record: logging.LogRecord) -> Any:
        """Filter ``record`` and emit it; return the filters' result, as ``logging.Handler.handle`` does.

        Unlike ``Handler.handle``, ``emit()`` is called without ``Handler.lock``: the buffer has
        a lock of its own, waited for at most ``block_timeout`` (a logging call never blocks
        without bound), while ``Handler.lock`` has no bound and would queue every other
        logging thread behind one waiting for room in the outbox. Skipping it also spares each
        logging call 3.6 % of its CPU time: the stock ``Handler.handle`` took 7.06 us per call
        against 6.82 (the calling thread's CPU time, medians of 9 interleaved rounds of 200,000
        calls into a live listener, ``python -m benchmarks.handle_cost``, a shared 2-CPU machine).
        A subclass that overrides ``emit()`` gets the stock ``Handler.handle``: its ``emit()``
        runs under ``Handler.lock``, as ``logging`` documents.
        """
        if self._emit_overridden:
            return super().handle(record)
        if self.filters:
            passed: Any = self.filter(record)
            if not passed:
                return passed
            if isinstance(passed, logging.LogRecord):  # 3.12+: a filter may return a replacement record
                record = passed
        else:
            passed = record if _FILTER_RETURNS_RECORD else True
        self._ship(record)  # emit()'s body, one call less on every logging call
        return passed

    def emit(self, record: logging.LogRecord) -> None:
        """Append ``record`` to the pending batch (sending the batch when it is due); never raises."""
        self._ship(record)

    def _after_close(self, record: logging.LogRecord) -> None:
        """A record that reached this handler after close().

        One that a thread was logging as :func:`setup_worker` replaced this handler goes to
        the handler that took its place. Any other is dropped, counted here, and said once
        (it never reaches the listener).
        """
        successor = self._successor
        if successor is not None and not successor._closed:
            successor.handle(record)
            return
        self._late += 1
        if not self._late_said:
            self._late_said = True
            report(
                f"mplog: a record was logged after this process's mplog handler closed (pid {os.getpid()}): it "
                "and any after it are lost, counted only in this process's handler.counters['dropped'] (an "
                "atexit hook registered before mplog was imported, logging after logging.shutdown(), or "
                "another thread still logging after SIGTERM closed the handler; see docs/pools-and-executors.md)"
            )

    def _ship(self, record: logging.LogRecord) -> None:
        # A common record's fields are added to the pending batch as they are and packed
        # with the rest of it at flush (one call per column, see mplog.wire.columns); any
        # other record is packed now and takes a record's slots as (bytes, PACKED, ...).
        try:
            if _exit_hooks_pid != self._pid:
                _install_exit_hooks()
            item: Any = plain_fields(record, self._limits)
            if item is not None:
                size = len(item[3]) + self._overhead  # an estimate until the batch is packed
            else:
                packed = encode_record(record, self._limits)
                item = (packed, PACKED, *PACKED_PAD)
                size = len(packed)
            me = get_ident()
            if self._owner == me:
                # Re-entered from a signal handler (or from inside a flush) on this thread:
                # only append; the outer call sends it (once close() marked it closed, _after_close).
                if self._closed:
                    self._after_close(record)
                    return
                self._pending.extend(item)
                self._pending_bytes += size
                return
            mutex = self._mutex
            # An uncontended try first: acquire(timeout=...) costs twice as much on every call.
            if not (mutex.acquire(False) or mutex.acquire(timeout=self._options.block_timeout)):
                self._dropped += 1  # another thread held the buffer past the bound
                return
            self._owner = me
            try:
                if self._closed:
                    self._after_close(record)
                    return
                pending = self._pending
                pending.extend(item)
                self._pending_bytes = nbytes = self._pending_bytes + size
                slots = len(pending)
                urgent = record.levelno >= self._flush_level
                if urgent or slots >= self._batch_slots or nbytes >= self._batch_bytes:
                    self._flush_locked(apply_policy=True, urgent=urgent)
                elif slots == ROW:  # the batch's first record: the flusher thread sends it in time
                    self._kick()
            finally:
                self._owner = 0
                mutex.release()
        except Exception:
            self._errors += 1
            self.handleError(record)
        if _deferred_signal and not _closing:
            _act_on_deferred_signal()

    def flush_within(self, timeout: float | None = None) -> bool:
        """See :meth:`BatchingHandler.flush_within`; then act on a SIGTERM that came meanwhile."""
        try:
            return super().flush_within(timeout)
        finally:
            if _deferred_signal and not self._closing:  # inside close(), close() acts
                _act_on_deferred_signal()

    def close(self) -> None:
        """See :meth:`BatchingHandler.close`; then act on a SIGTERM that came meanwhile."""
        try:
            super().close()
        finally:
            if _deferred_signal:
                _act_on_deferred_signal()


# ---------------------------------------------------------------- process-wide hooks


def _act_on_deferred_signal() -> None:
    """Close every handler and die of a SIGTERM deferred while the main thread was inside mplog.

    Only on the main thread, once it has left mplog (the end of its logging call,
    ``flush_within()`` or ``close()``): another thread's logging call that ended meanwhile
    closed every handler and then failed to die, since signal.signal() works on the main
    thread only (ValueError raised into that logging call; an asyncio program, whose
    wakeup fd keeps mplog's watcher thread from starting, never died). See
    test_sigterm_deferred_during_a_flush_is_acted_on_by_the_main_thread_not_by_another_threads_logging_call.
    """
    if _closing or get_ident() != threading.main_thread().ident:
        return
    if any(h._busy_here() for h in list(_handlers)):
        return  # still inside mplog further out on this thread: acted on when that call ends
    _close_all()


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
    if get_ident() != threading.main_thread().ident:
        return  # signal.signal() would raise: the main thread acts on _deferred_signal (_act_on_deferred_signal)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_exit_hooks() -> None:
    """Close every handler at exit, on every path a worker process ends by."""
    global _exit_hooks_pid
    _exit_hooks_pid = os.getpid()
    # multiprocessing children end with os._exit() after running these finalizers
    # (atexit does not run there); the registry is cleared at each child's start,
    # which is why this runs again on the first record of every new process.
    multiprocessing.util.Finalize(None, _close_at_finalizers, exitpriority=-100)


def _close_at_finalizers() -> None:
    """multiprocessing's finalizers: close, unless atexit still runs in this process (a spawned child).

    A spawned child runs its finalizers, then ``sys.exit()``, which runs atexit: the
    program's own atexit hooks (registered after mplog was imported) run before mplog's, and
    may log; closing here would drop what they log (an outsider: every record logged from a
    spawned child's atexit hook lost). Forked and forkserver children end with
    ``os._exit()`` after the finalizers, so they close here.
    """
    if not _atexit_runs_later():
        _close_all()


# How a multiprocessing child ends once its work returns, by the nearest entry point on its
# stack: a spawned child through sys.exit() (atexit runs), a forked or forkserver child
# through os._exit() (it does not). Nearest, because a child forked from a spawned process
# carries its parent's frames, spawn_main among them, under its own _launch.
_ENDS_THROUGH_SYS_EXIT = {
    ("multiprocessing.spawn", "spawn_main"): True,
    ("multiprocessing.popen_fork", "_launch"): False,
    ("multiprocessing.forkserver", "_serve_one"): False,
}


def _atexit_runs_later() -> bool:
    """True in a spawned multiprocessing child, whose ``spawn_main`` calls ``sys.exit()`` after the finalizers."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        verdict = _ENDS_THROUGH_SYS_EXIT.get((str(frame.f_globals.get("__name__")), frame.f_code.co_name))
        if verdict is not None:
            return verdict
        frame = frame.f_back
    return False


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
    held = signal.pthread_sigmask(signal.SIG_BLOCK, ASYNC_SIGNALS)  # the thread starts with them blocked
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


def _level_from_env() -> int | None:
    value = inherited_setting(ENV_LEVEL) or ""
    if not value:
        return None
    if value.isdigit():
        return int(value)
    level = logging.getLevelName(value.upper())
    if not isinstance(level, int):
        raise ConfigError(f"{ENV_LEVEL} must be a level name or number, got {value!r}")
    return level


def _opens_alike(old: WorkerOptions, new: WorkerOptions) -> bool:
    """True when ``new`` needs no other transport than the one opened with ``old`` (those options apply at open)."""
    return (old.transport, old.ack, old.ack_timeout, old.spool_dir) == (
        new.transport,
        new.ack,
        new.ack_timeout,
        new.spool_dir,
    )


def setup_worker(endpoint: str | None = None, **options: Any) -> MplogHandler:
    """Route this process's logging to the listener: one mplog handler on the root logger.

    Args:
        endpoint: the listener's URL; defaults to ``$MPLOG_ENDPOINT`` (set by
            :func:`mplog.start_listener` for child processes), else to the default
            endpoint of this user's ``mplog listen`` on this host when one is bound there.
        **options: fields of :class:`WorkerOptions`, :class:`~mplog.wire.Limits` or
            :class:`~mplog.transports.TransportOptions`.

    Returns:
        The handler (calling again with the same endpoint returns the same one).

    Raises:
        ConfigError: no endpoint is known, or an option is wrong.
    """
    return route_root(endpoint, options)


def route_root(endpoint: str | None, options: dict[str, Any], *, keep_others_open: bool = False) -> MplogHandler:
    """:func:`setup_worker`'s body; ``keep_others_open``: the mplog handlers the root logger had are taken off
    it open, not closed (a listener started while another one's handler routes this process puts it back)."""
    endpoint = _endpoint_to_use(endpoint)
    opts = _worker_options(options)
    env_level = _level_from_env() if opts.level is None else None
    handler = _root_handler(endpoint, opts, replace_options=bool(options), keep_others_open=keep_others_open)
    # The level: level= wins, then $MPLOG_LEVEL (start_listener exports its own); without
    # either, the listener is asked what its handlers accept (mplog.worker.level).
    if opts.level is not None:
        handler.pin_level(opts.level, handler_too=False)
    elif env_level is not None:
        handler.pin_level(env_level, handler_too=True)
    else:
        handler.follow_listener_level()
    _install_sigterm_handler(opts)
    return handler


def _endpoint_to_use(endpoint: str | None) -> str:
    """``endpoint``, else ``$MPLOG_ENDPOINT``, else this user's local collector; ConfigError without any."""
    key = "setup_worker(endpoint=...)"
    if not endpoint:
        endpoint, key = (inherited_setting(ENV_ENDPOINT) or "").strip(), ENV_ENDPOINT
    if not endpoint:
        endpoint, key = local_collector() or "", "the local collector's endpoint"
    if not endpoint:
        default = default_collector_endpoint()
        # Say why the directory disqualified it: a collector's refusal there names the same cause.
        problem = foreign_dir_problem(os.path.dirname(default[len("ipc://") :]))
        raise ConfigError(
            f"setup_worker() has no endpoint: pass one, or set {ENV_ENDPOINT} "
            "(mplog.start_listener() sets it for the processes it starts); no local collector "
            f"(mplog listen) was found at its default endpoint {default}" + (f": {problem}" if problem else "")
        )
    # One that can never connect (no port, an ipc path longer than a socket address holds):
    # said now, not as "could not be delivered" at exit (a newcomer's three endpoints).
    check_endpoint(endpoint, key, connect=True)
    return endpoint


def _env_int(name: str) -> int | str:
    """An environment variable as an int, or as the text it holds (which WorkerOptions then refuses, naming it)."""
    text = os.environ.get(name, "")
    try:
        return int(text)
    except ValueError:
        return text


def _worker_options(options: dict[str, Any]) -> WorkerOptions:
    """setup_worker()'s keywords as WorkerOptions, with what the listener exported ($MPLOG_ACK) filled in."""
    if "wire_version" not in options and os.environ.get(ENV_WIRE_VERSION):  # set where the workers run (upgrades)
        options = {**options, "wire_version": _env_int(ENV_WIRE_VERSION)}
    opts = WorkerOptions.from_kwargs(**options)
    if opts.ack is None:  # an acknowledging listener exports MPLOG_ACK=1 (its ROUTER cannot talk to PUSH)
        opts = replace(opts, ack=ack_setting(inherited_setting(ENV_ACK)))
    if opts.spool_dir and not opts.ack:
        raise ConfigError(
            "setup_worker(spool_dir=...) needs acknowledged delivery: pass ack=True, or start the listener "
            "with ack=True (it exports MPLOG_ACK=1 to its workers)"
        )
    if opts.ack and "close_timeout" not in options:  # exit outlasts a listener restart (docs/reliability.md)
        opts = replace(opts, close_timeout=max(opts.close_timeout, ACK_CLOSE_TIMEOUT))
    return opts


def _root_handler(
    endpoint: str, opts: WorkerOptions, *, replace_options: bool, keep_others_open: bool = False
) -> MplogHandler:
    """The root logger's one handler for ``endpoint``: the one it has when it can serve, else a new one."""
    root = logging.getLogger()
    current = [h for h in root.handlers if isinstance(h, MplogHandler)]
    if (
        len(root.handlers) == 1
        and current
        and current[0].endpoint == endpoint
        and not current[0]._closed
        and _opens_alike(current[0].options, opts)
    ):
        handler = current[0]
        if replace_options:
            handler.options = opts
        return handler
    handler = MplogHandler(endpoint, opts)
    # The new handler takes the old ones' place in one step: a logging call sees the old list
    # or the new one, never a root logger without a handler (logging drops INFO records then:
    # an outsider lost ~30,000 of 32,000 records logged by 32 threads during the close below).
    # A thread still holding the old list logs into a closed handler, which hands the record on.
    olds = root.handlers
    if keep_others_open:  # they stay open, each taking what a thread still holding the old list logs
        root.handlers = [handler]
        return handler
    for old in olds:
        if isinstance(old, MplogHandler):
            old._successor = handler
    root.handlers = [handler]
    for old in olds:
        if isinstance(old, MplogHandler) and not old.discard_if_unused():
            old.close()
    return handler


def _install_sigterm_handler(opts: WorkerOptions) -> None:
    """On the main thread: deliver buffered records at SIGTERM (flush_on_sigterm, if no handler is set), watched."""
    on_main_thread = threading.current_thread() is threading.main_thread()
    if opts.flush_on_sigterm and on_main_thread and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _on_sigterm)
    if on_main_thread and signal.getsignal(signal.SIGTERM) is _on_sigterm:
        _watch_sigterm()
