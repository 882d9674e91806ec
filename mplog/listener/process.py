"""The listener process: the one builder, used by its entry point and by ``mplog listen``.

Three steps, each used by both: :func:`prepare_process` readies this process
(niceness, never truncating a continued run's files, the handlers from dictConfig);
:func:`build_receiver` binds the endpoint; :func:`build_listener` builds the
:class:`~mplog.listener.loop.Server` (under ``mplog.ack``, the
:class:`~mplog.listener.ack_loop.AckServer`) and what runs beside it: the handler error
counter, queue listeners, the state continued from an earlier run, the status channel,
the metrics endpoint, SIGHUP reopening. :meth:`ListenerProcess.run` receives until
stopped and closes it all in order.

:func:`child_main` is the entry point of the process :class:`mplog.Listener` starts
(``python -m mplog.listener.process --control R,W``), driven over the control pipe
(:mod:`mplog.listener.control_pipe`); ``mplog listen`` builds the same listener in the
foreground (:mod:`mplog.cli`).
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import sys
import threading
import time
from typing import Any

from mplog.exceptions import ConfigError
from mplog.handlers.queued import QueuedHandler, start_queue_listeners, stop_queue_listeners
from mplog.listener.continuation import (
    append_on_first_open,
    claim_log_files,
    claim_state_dir,
    continues_earlier_run,
    mark_used,
)
from mplog.listener.control_pipe import ControlPipe
from mplog.listener.loop import Server, apply_logging_config, install_handler_error_counter, install_sighup_reopen
from mplog.listener.progress import OutputFiles, ProgressFile, progress_path, read_progress
from mplog.listener.settings import (
    apply_nice,
    limits_for,
    sender_limits_for,
    transport_options_for,
    worker_level,
    yield_seconds,
)
from mplog.listener.supervisor import Checkpoint, load_checkpoint, say, stats_path
from mplog.listener.write_failures import end_cut_lines_on_open
from mplog.transports import Receiver, open_receiver, transport_of

__all__ = ["ListenerProcess", "build_listener", "build_receiver", "child_main", "prepare_process", "resume"]


def prepare_process(config: dict[str, Any], runtime: dict[str, Any], state_dir: str | None, restarts: int = 0) -> None:
    """Ready this process to be a listener: niceness, no truncation of a continued run, the handlers.

    Raises:
        ConfigError: a handler could not be built (one line naming it and why).
    """
    # Before any thread starts (ZeroMQ's I/O thread, handlers' own threads): niceness
    # is per thread on Linux and a new thread inherits its creator's.
    apply_nice(runtime)
    if state_dir:  # before any file is opened: a second listener on it would share its files and state
        claim_state_dir(state_dir)
    claim_log_files(config.get("handlers"))  # the same for each log file (one config started twice)
    append_on_first_open(continues_earlier_run(state_dir, restarts))  # a continued run never truncates
    end_cut_lines_on_open()  # after it (it wraps its hook): a file left inside a line gets a line end first
    apply_logging_config(config)
    _resolve_queued_targets()
    if not restarts:
        _warn_stdlib_http()


def _resolve_queued_targets() -> None:
    """Resolve every QueuedHandler's target names now (a missing one: ConfigError at start, not per record)."""
    for ref in list(getattr(logging, "_handlerList", [])):
        handler = ref()
        if isinstance(handler, QueuedHandler) and handler.listener is None:
            try:
                handler.start()
            except ConfigError as exc:
                raise ConfigError(f"handlers.{handler.get_name() or '?'}: {exc}") from None


def _warn_stdlib_http() -> None:
    """Say on stderr which handlers are the stdlib HTTPHandler: it ignores the server's answer and has no timeout."""
    names = [
        handler.get_name() or "?"
        for handler in (ref() for ref in list(getattr(logging, "_handlerList", [])))
        if type(handler) is logging.handlers.HTTPHandler
    ]
    if names:
        print(
            f"mplog: handler {', '.join(repr(n) for n in names)} is the stdlib logging.handlers.HTTPHandler, which "
            "counts a record the server refused (401, 500, 503) as delivered and waits for an answer without a "
            "timeout (a stop then gives up on it); use mplog.handlers.HTTPHandler with a timeout (docs/handlers.md)",
            file=sys.stderr,
            flush=True,
        )


def build_receiver(endpoint: str, runtime: dict[str, Any]) -> Receiver:
    """Bind the listener's receiver for ``endpoint`` with the runtime settings applied.

    Raises:
        ConfigError: a setting that cannot apply to this endpoint (e.g. a bad CURVE key).
        TransportError: the endpoint could not be bound.
    """
    options = transport_options_for(runtime)
    if runtime.get("ack"):  # acknowledged delivery: a ROUTER that can answer each sender
        if transport_of(endpoint) != "zmq":
            raise ConfigError(f"mplog.ack needs an ipc:// or tcp:// endpoint, got {endpoint!r}")
        from mplog.transports.zeromq_ack import RouterReceiver  # noqa: PLC0415  # only acknowledging listeners

        return RouterReceiver(endpoint, options)
    return open_receiver(endpoint, options)


def _server(receiver: Receiver, runtime: dict[str, Any]) -> Server:
    """The receive loop over ``receiver``: an AckServer when it is the acknowledging ROUTER."""
    limits, sender_limits = limits_for(runtime), sender_limits_for(runtime)
    if runtime.get("ack"):
        from mplog.listener.ack_loop import AckServer  # noqa: PLC0415  # acknowledged delivery is opt-in
        from mplog.transports.zeromq_ack import RouterReceiver  # noqa: PLC0415  # only acknowledging listeners

        assert isinstance(receiver, RouterReceiver)  # build_receiver's, for mplog.ack
        return AckServer(receiver, limits=limits, sender_limits=sender_limits)
    server = Server(receiver, limits=limits, sender_limits=sender_limits)
    server.yield_seconds = yield_seconds(runtime)
    return server


class ListenerProcess:
    """A built listener: its server and what runs beside it; :meth:`run` until stopped."""

    def __init__(self, server: Server, checkpoint: Checkpoint | None, status: Any, metrics: Any) -> None:
        self.server = server
        self.checkpoint = checkpoint
        self.status = status  # the status channel (mplog.listener.status_channel), or None
        self.metrics = metrics  # the Prometheus endpoint (mplog.listener.metrics), or None

    @property
    def endpoint(self) -> str:
        return self.server.receiver.endpoint

    def run(self) -> dict[str, Any]:
        """Receive until the server's stop event is set, drain, close everything; return the final stats."""
        server = self.server
        try:
            server.run()
        finally:
            if self.status is not None:
                self.status.close()
            if self.metrics is not None:
                self.metrics.close()
            stop_queue_listeners()  # deliver what they hold while their handlers are still open
            logging.shutdown()
            server.receiver.close()
            if self.checkpoint is not None:
                self.checkpoint.close()
        server.stats.note_ends(now=True)  # the final stats name every sender that ended without a goodbye
        return server.snapshot()


def build_listener(
    receiver: Receiver, config: dict[str, Any], runtime: dict[str, Any], state_dir: str | None, restarts: int = 0
) -> ListenerProcess:
    """Build the listener around ``receiver`` (:func:`build_receiver`'s, after :func:`prepare_process`).

    Raises:
        Exception: the status channel or the metrics endpoint could not be bound (a
            TransportError, ConfigError or the OSError of the bind); the receiver is closed.
    """
    from mplog.listener.metrics import start_metrics_server  # noqa: PLC0415  # prometheus_client only where configured
    from mplog.listener.status_channel import start_control_server  # noqa: PLC0415  # zmq only in the listener

    server = _server(receiver, runtime)
    install_handler_error_counter(server.stats)
    start_queue_listeners()  # dictConfig (3.12+) builds a QueueHandler's listener but does not start it
    checkpoint = resume(server, state_dir, restarts)  # a restart continues the earlier stats
    status = metrics = None
    try:
        level = worker_level(config)  # what workers that ask are told (mplog.worker.level)
        status = start_control_server(receiver.endpoint, server.snapshot, runtime, level=level)
        metrics = start_metrics_server(runtime, server.snapshot)
    except BaseException:
        if status is not None:
            status.close()
        receiver.close()
        raise
    install_sighup_reopen(server.stop_event)
    return ListenerProcess(server, checkpoint, status, metrics)


# ---------------------------------------------------------------- continuing an earlier run


def resume(server: Server, state_dir: str | None, restarts: int = 0) -> Checkpoint | None:
    """Continue from the state an earlier incarnation left in ``state_dir``; start checkpointing.

    The directory is marked used first (an empty file: mplog.listener.continuation), so a
    listener started on it later never truncates what this one writes, even if no
    checkpoint can be written. The stats checkpoint is restored, then each sender's
    ledger as the progress file (mplog.listener.progress) had it after the dead
    listener's last frame, then (acknowledged delivery) the marks. A new checkpoint
    holding all of it is written before the progress file is started afresh, so a
    listener killed during this start finds the same inputs again. If it cannot be
    written (a full disk), the dead listener's progress file stays until one is: the
    attempts go on (:class:`_StateFiles`).

    Returns:
        The running checkpoint thread, or None when the listener keeps no state.
    """
    server.restarts = restarts
    if not state_dir:
        return None
    used = continues_earlier_run(state_dir, restarts)
    error = mark_used(state_dir)
    if error is not None:
        say(
            f"mplog: cannot mark the state directory {state_dir} used ({error.strerror or error}): a listener "
            "started on it later may truncate the mode 'w' files this one writes"
        )
    path = stats_path(state_dir)
    state = load_checkpoint(path)
    if state is not None:
        server.stats.restore(state)
    elif used:
        say(
            f"mplog: {state_dir} was used by an earlier listener but holds no stats checkpoint (it could not "
            "write one): its files are appended to, and its stats start from zero"
        )
    # Before anything is written: a file that grew since the dead listener measured it got its last frame.
    files = OutputFiles(server.output_handlers())
    ledgers, folds = read_progress(progress_path(state_dir), files if server.count_cut_frames else files.sizes)
    for cut in files.cut:  # its handler's open gave it a line end to write first (end_cut_lines_on_open)
        say(f"mplog: the listener was killed while writing {cut}; its cut last line is ended")
    if ledgers or folds:
        counted = (state or {}).get("folded", {})
        server.stats.apply_progress(ledgers, folds, int(counted.get("senders", 0)) if isinstance(counted, dict) else 0)
    server.after_restore(state_dir)  # acknowledged delivery: the persisted marks
    keeper = _StateFiles(server, progress_path(state_dir))
    checkpoint = Checkpoint(path, server.snapshot, after_write=keeper.after_checkpoint)
    if not checkpoint.start():
        keeper.fail(checkpoint.failing)
    return checkpoint


class _StateFiles:
    """Starts the progress file once a checkpoint is written, and again after it could not be.

    The progress file is started only after a checkpoint holding the same state, so that
    an older progress file never overrules a newer checkpoint: until then the dead
    listener's file stays (its ledgers are the only record of its last frames). A file
    that cannot be created (a full disk) is removed, said once on stderr, and tried again
    with later checkpoints, at most once a second, for the listener's whole life.
    """

    RETRY = 1.0  # seconds between attempts to create the progress file

    def __init__(self, server: Server, path: str) -> None:
        self.server = server
        self.path = path
        self.failing = False
        self._next = 0.0

    def fail(self, error: OSError | None) -> None:
        """The progress file cannot be started (``error``; None: no checkpoint could be written first); said once."""
        if not self.failing:
            why = error.strerror or str(error) if error is not None else "no stats checkpoint written yet"
            say(
                f"mplog: cannot keep {self.path} ({why}): until it can, a listener killed mid-stream counts the "
                "records written since its last checkpoint as gaps; retrying"
            )
        self.failing = True

    def after_checkpoint(self) -> bool:
        """Called after each checkpoint written; True when the progress file was just started (write one more)."""
        if self.server.progress is not None or time.monotonic() < self._next:
            return False
        error = _start_progress(self.server, self.path)
        if error is not None:
            self._next = time.monotonic() + self.RETRY
            self.fail(error)
            return False
        if self.failing:
            self.failing = False
            say(f"mplog: {self.path} is kept again")
        return True


def _start_progress(server: Server, path: str) -> OSError | None:
    """Persist every sender's ledger with each frame from now on (listener.progress); the error if the file fails.

    Runs on the checkpoint's thread once the listener receives: the receive loop picks the
    file up at its next frame (it reads ``server.progress`` once per frame).
    """
    stats = server.stats
    with stats._lock:
        table = stats.table
        try:
            progress = ProgressFile(path, table, server.output_handlers())
        except OSError as exc:
            with contextlib.suppress(OSError):  # an older one must not overrule the checkpoints to come
                os.unlink(path)
            return exc
        table.on_fold = progress.fold
    server.progress = progress
    return None


# ---------------------------------------------------------------- the child process entry


def _watch_control(server: Server, control: ControlPipe) -> None:
    parent = os.getppid()
    while True:
        try:
            message = control.read()
        except (OSError, ValueError):
            message = None
        if message is None:  # the parent is gone: drain what arrived and exit
            server.drain_for_live_senders = True
            server.stop_event.set()
            return
        command = message.get("cmd")
        if command == "stats":
            control.write({"stats": server.snapshot()})
        elif command == "stop":
            # Still answers "stats" after this: a parent whose stop ran out of time asks for
            # the last counts before it kills a listener that a handler holds (Listener.stop).
            server.drain_timeout = float(message.get("timeout", server.drain_timeout))
            server.stop_event.set()
        if os.getppid() != parent:
            server.drain_for_live_senders = True
            server.stop_event.set()
            return


def _watch_parent(server: Server, parent: int) -> None:
    # A pipe can stay open after the parent died (its forked children hold the
    # write end), so the parent pid is watched as well.
    while not server.stop_event.wait(0.25):
        if os.getppid() != parent:
            server.drain_for_live_senders = True
            server.stop_event.set()


def child_main(read_fd: int, write_fd: int) -> int:
    """Entry point of the listener process started by :class:`mplog.Listener`."""
    control = ControlPipe(read_fd, write_fd)
    setup = control.read()
    if setup is None:
        return 1
    runtime: dict[str, Any] = setup.get("runtime", {})
    state_dir, restarts = setup.get("state_dir"), int(setup.get("restarts", 0))
    try:
        prepare_process(setup["config"], runtime, state_dir, restarts)
    except ConfigError as exc:
        control.write({"event": "error", "kind": "config", "message": str(exc)})
        return 2
    try:
        receiver = build_receiver(setup["endpoint"], runtime)
    except Exception as exc:
        kind = "config" if isinstance(exc, ConfigError) else "transport"  # a refused bind or bad key names its fix
        control.write({"event": "error", "kind": kind, "message": f"{type(exc).__name__}: {exc}"})
        return 3
    try:
        listener = build_listener(receiver, setup["config"], runtime, state_dir, restarts)
    except Exception as exc:  # the status channel or the metrics endpoint
        control.write({"event": "error", "kind": "transport", "message": f"{type(exc).__name__}: {exc}"})
        return 3
    server = listener.server
    ready = {"event": "ready", "endpoint": listener.endpoint, "pid": os.getpid()}
    control.write({**ready, "metrics": listener.metrics.url} if listener.metrics is not None else ready)
    parent = os.getppid()
    threading.Thread(target=_watch_control, args=(server, control), daemon=True, name="mplog-control").start()
    threading.Thread(target=_watch_parent, args=(server, parent), daemon=True, name="mplog-lifeline").start()
    final = listener.run()
    with contextlib.suppress(OSError):  # the parent may be gone
        control.write({"event": "stopped", "stats": final})
    return 0


if __name__ == "__main__":
    read_fd, write_fd = (int(x) for x in sys.argv[sys.argv.index("--control") + 1].split(","))
    sys.exit(child_main(read_fd, write_fd))
