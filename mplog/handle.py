"""The Listener handle: starts the dedicated listener process and talks to it.

The listener process is started with ``subprocess`` (not multiprocessing spawn, which
bootstraps through unpickling) and driven over a private pipe pair. The pipe doubles
as a lifeline: when this process dies, the listener drains what it has and exits.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from types import TracebackType
from typing import Any

from mplog.config import load_config
from mplog.exceptions import ConfigError, ListenerError, TransportError
from mplog.listener.control_pipe import ControlPipe
from mplog.listener.settings import worker_level
from mplog.listener.stats_view import ListenerStats
from mplog.listener.status_channel import port_in_use_hint
from mplog.listener.supervisor import Supervisor, ensure_state_dir, load_checkpoint, stats_path
from mplog.transports import check_endpoint, default_endpoint, transport_of
from mplog.transports.base import make_private_dir
from mplog.worker import MplogHandler
from mplog.worker.children import route_children
from mplog.worker.env import ENV_ACK, ENV_ENDPOINT, ENV_LEVEL, export_setting, inherited_setting
from mplog.worker.handler import route_root
from mplog.worker.outbox import open_handlers

__all__ = ["Listener", "start_listener"]

START_TIMEOUT = 30.0


class Listener:
    """Handle on a running listener process (see :func:`start_listener`)."""

    def __init__(
        self,
        config: dict[str, Any] | str | os.PathLike[str] | None = None,
        *,
        endpoint: str | None = None,
        transport: str | None = None,
        route_parent: bool = True,
        export_env: bool = True,
        supervise: bool = True,
        ack: bool | None = None,
    ) -> None:
        self._config, self._runtime = load_config(config)
        if ack is not None:
            self._runtime = dataclasses.replace(self._runtime, ack=ack)
        if self._runtime.ack and (transport or self._runtime.transport) != "zmq":
            raise ConfigError("acknowledged delivery (ack=True) needs the ZeroMQ transport, not 'multiprocessing'")
        self._transport = transport or self._runtime.transport
        if endpoint is not None:
            check_endpoint(endpoint, "endpoint")  # mplog.endpoint was checked by load_config
        self._requested_endpoint = endpoint or self._runtime.endpoint
        if self._requested_endpoint and transport and transport_of(self._requested_endpoint) != transport:
            raise ConfigError(f"endpoint {self._requested_endpoint!r} does not belong to transport {transport!r}")
        self._route_parent = route_parent
        self._export_env = export_env
        self._proc: subprocess.Popen[bytes] | None = None
        self._private_dir = ""
        self._lock = threading.Lock()
        self._control: ControlPipe | None = None
        self._final: ListenerStats | None = None
        self._owner_pid = os.getpid()
        self._saved_env: dict[str, str | None] = {}
        self._routed_children: bool | None = None  # whether children were routed before start() (to restore)
        self._saved_root: tuple[list[logging.Handler], int] | None = None
        self._handler: MplogHandler | None = None
        self._supervise = supervise
        self._supervisor: Supervisor | None = None
        self._state_dir = ""
        self._own_state_dir = ""
        self.endpoint = ""
        self.pid = 0
        self.metrics_url = ""  # the Prometheus endpoint (mplog.metrics), once started: http://HOST:PORT/metrics

    # ------------------------------------------------------------ lifecycle

    def start(self) -> Listener:
        """Start the listener process; returns once it has bound its endpoint.

        Raises:
            ConfigError: the handlers could not be built from the config.
            TransportError: the endpoint could not be bound.
            ListenerError: start() was called twice, or the process did not start.
        """
        if self._proc is not None:
            raise ListenerError("this Listener was already started; create a new one")
        endpoint = self._requested_endpoint
        if not endpoint:
            endpoint, self._private_dir = default_endpoint(self._transport)
        self._state_dir = self._runtime.state_dir or self._private_dir
        if self._runtime.state_dir:
            ensure_state_dir(self._runtime.state_dir)  # as mplog listen does: checkpoints must not fail unseen
        if not self._state_dir:
            self._state_dir = self._own_state_dir = make_private_dir()
        reply = self._launch(endpoint, restarts=0)
        if reply is None or reply.get("event") != "ready":
            self._abort()
            message = (reply or {}).get("message", "the listener process exited during start-up")
            kind = (reply or {}).get("kind")
            if kind == "config":
                raise ConfigError(f"the listener could not apply the config: {message}")
            if kind == "transport":
                # Which other use of a tcp port it probably is, as `mplog listen` says it (a newcomer
                # outsider got only "Address already in use" here).
                hint = port_in_use_hint(message)
                # The receiver's own message names the endpoint too: say it once.
                message = message.removeprefix(f"TransportError: cannot bind {endpoint!r}: ")
                raise TransportError(f"the listener could not bind {endpoint!r}: {message}{hint}")
            raise ListenerError(message)
        self.endpoint = reply["endpoint"]
        self.pid = reply["pid"]
        self.metrics_url = str(reply.get("metrics", ""))
        if self._export_env:
            self._set_env(ENV_ENDPOINT, self.endpoint)
            self._set_env(ENV_LEVEL, logging.getLevelName(worker_level(self._config)))
            self._set_env(ENV_ACK, "1" if self._runtime.ack else "0")
            self._routed_children = route_children(True)  # spawn/forkserver children need no setup_worker()
        if self._route_parent:
            root = logging.getLogger()
            self._saved_root = (list(root.handlers), root.level)
            # Another listener's handler on the root logger (listeners nested in one program) is
            # taken off open and put back at this one's stop. Before, it was closed, and put back
            # closed: what the process logged to the outer listener after the inner one stopped
            # was dropped.
            options = {"level": worker_level(self._config), "flush_on_sigterm": False, "ack": self._runtime.ack}
            self._handler = route_root(self.endpoint, options, keep_others_open=True)
        if self._supervise:
            self._supervisor = Supervisor(self._poll_child, self._relaunch, self._lock).start()
        return self

    def _launch(self, endpoint: str, restarts: int) -> dict[str, Any] | None:
        """Start one listener process over a new control pipe; return its first message."""
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "mplog.listener.process", "--control", f"{to_child_r},{from_child_w}"],
                pass_fds=(to_child_r, from_child_w),
                stdin=subprocess.DEVNULL,
                close_fds=True,
            )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self._control = ControlPipe(from_child_r, to_child_w)
        setup = {
            "config": self._config,
            "endpoint": endpoint,
            "runtime": self._runtime.as_dict(),
            "state_dir": self._state_dir,
            "restarts": restarts,
        }
        self._write(setup)
        return self._read(START_TIMEOUT)

    def _poll_child(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def _relaunch(self) -> int:
        """Start a new listener on the same endpoint and state (the supervisor holds the lock)."""
        self._close_control()
        assert self._supervisor is not None
        reply = self._launch(self.endpoint, restarts=self._supervisor.restarts + 1)
        if reply is None or reply.get("event") != "ready":
            assert self._proc is not None
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            raise ListenerError((reply or {}).get("message", "the new listener process exited during start-up"))
        self.pid = int(reply["pid"])
        self.metrics_url = str(reply.get("metrics", ""))  # another port if mplog.metrics asked for port 0
        return self.pid

    @property
    def restarts(self) -> int:
        """How many times the supervisor restarted the listener process."""
        return self._supervisor.restarts if self._supervisor is not None else 0

    def _set_env(self, key: str, value: str) -> None:
        self._saved_env.setdefault(key, inherited_setting(key))
        export_setting(key, value)

    def stats(self, timeout: float = 10.0) -> ListenerStats:
        """Counters from the listener: received, malformed by reason, dropped, gaps, per sender.

        A dict (``stats["received"]``, ``stats["senders"][key]["records"]``) with typed
        properties (``stats.received``) whose ``str()`` is a one-line summary
        (:class:`mplog.listener.stats_view.ListenerStats`).
        """
        if self._final is not None:
            return self._final
        if self._proc is None:
            raise ListenerError("the listener has not been started")
        supervisor = self._supervisor
        seen = supervisor.restarts if supervisor is not None else 0
        reply = self._ask_stats(timeout)
        if reply is None and supervisor is not None and supervisor.wait_for_restart(seen, timeout):
            reply = self._ask_stats(timeout)  # the listener died meanwhile and was restarted
        if reply is None or "stats" not in reply:
            raise ListenerError("the listener did not answer a stats request")
        return ListenerStats(reply["stats"])

    def _ask_stats(self, timeout: float) -> dict[str, Any] | None:
        with self._lock:
            try:
                self._write({"cmd": "stats"})
                return self._read(timeout)
            except OSError:
                return None

    def stop(self, timeout: float = 10.0) -> ListenerStats:
        """Deliver this process's buffered records, drain the listener, stop it; return final stats.

        The drain writes what the workers sent for at most ``timeout`` - 1 s; what it had no
        time to write is counted (``unwritten_at_stop``, and its senders' ``rejected``) and
        said on the listener's stderr. Harmless to call twice (returns the same stats). The
        stats are a :class:`~mplog.listener.stats_view.ListenerStats`, as :meth:`stats` returns them.

        Before the drain, this process's own handler to the listener is closed: in
        acknowledged delivery that waits up to its ``close_timeout`` (10 s) for the
        acknowledgement of what it sent, on top of ``timeout``, when a destination does not
        confirm (what stays unacknowledged is said on stderr, and kept in its spool if it has one).

        A listener that has not stopped by ``timeout`` (a handler that never returns from
        ``emit`` or ``close``) is killed: the stats are its counts of that moment, marked
        ``killed_at_stop``, its open senders flagged as ended without a goodbye (what it still
        held is lost uncounted), and a line on stderr says so.
        """
        if self._final is not None or self._proc is None:
            return self._final if self._final is not None else ListenerStats()
        if os.getpid() != self._owner_pid:
            return ListenerStats()  # a forked copy of this handle: the listener is not ours to stop
        if self._supervisor is not None:
            # A listener that died and waits out its restart backoff is started now: the new one
            # restores what the dead one counted, drains, and flags senders that ended without a
            # goodbye (the dead one's checkpoint lags it and flags nothing).
            self._supervisor.restart_now()
            self._supervisor.stop()  # no restart may race the orderly end
        self._restore_parent()
        deadline = time.monotonic() + timeout
        # Handlers this process set up by hand to this listener (setup_worker() with
        # route_parent=False) deliver what they hold before the drain, as the parent's would.
        for handler in open_handlers(self.endpoint):
            handler.flush_within(min(handler.options.close_timeout, timeout / 2))
        with self._lock:
            try:
                self._write({"cmd": "stop", "timeout": max(timeout - 1.0, 0.5)})
                reply = self._read(timeout)
            except OSError:
                reply = None
        last: dict[str, Any] | None = None
        try:
            self._proc.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            last = self._last_counts() if reply is None else None
            self._proc.kill()
            self._proc.wait()
        final = (reply or {}).get("stats")
        if final is None:
            # Killed (a handler held it past the timeout: its counts of that moment), or it
            # died and was not restarted (its last checkpoint): what it still held is lost
            # uncounted, so its open senders are flagged as possible loss.
            final = last or (load_checkpoint(stats_path(self._state_dir)) or {} if self._state_dir else {})
            _flag_unfinished(final, killed=self._proc.returncode == -signal.SIGKILL, timeout=timeout)
        self._final = ListenerStats(final)
        self._cleanup()
        return self._final

    def _last_counts(self, wait: float = 1.0) -> dict[str, Any] | None:
        """The counts of a listener that has not finished its stop (its control thread still answers)."""
        with self._lock:
            try:
                self._write({"cmd": "stats"})
                answer = self._read(wait)
            except OSError:
                return None
        stats = (answer or {}).get("stats")
        return stats if isinstance(stats, dict) else None

    def _restore_parent(self) -> None:
        if self._handler is not None:
            root = logging.getLogger()
            self._handler.close()
            if self._handler in root.handlers:
                root.removeHandler(self._handler)
                if self._saved_root is not None:
                    handlers, level = self._saved_root
                    for handler in handlers:
                        # An outer listener that stopped first closed its handler: not put back.
                        if not (isinstance(handler, MplogHandler) and handler._closed):
                            root.addHandler(handler)
                    root.setLevel(level)
            self._handler = None
        for key, value in self._saved_env.items():
            export_setting(key, value)
        self._saved_env.clear()
        if self._routed_children is not None:
            route_children(self._routed_children)
            self._routed_children = None

    def _abort(self) -> None:
        assert self._proc is not None
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._final = ListenerStats()
        self._cleanup()

    def _close_control(self) -> None:
        if self._control is not None:
            self._control.close()

    def _cleanup(self) -> None:
        self._close_control()
        for directory in (self._private_dir, self._own_state_dir):
            if directory:
                shutil.rmtree(directory, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._final is None and self._proc.poll() is None

    def __enter__(self) -> Listener:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else ("stopped" if self._final is not None else "new")
        return f"<mplog.Listener {state} endpoint={self.endpoint!r} pid={self.pid}>"

    # ------------------------------------------------------------ control pipe

    def _write(self, message: dict[str, Any]) -> None:
        assert self._control is not None  # started
        self._control.write(message)

    def _read(self, timeout: float) -> dict[str, Any] | None:
        assert self._control is not None  # started
        return self._control.read(timeout)


def start_listener(
    config: dict[str, Any] | str | os.PathLike[str] | None = None,
    *,
    endpoint: str | None = None,
    transport: str | None = None,
    route_parent: bool = True,
    export_env: bool = True,
    supervise: bool = True,
    ack: bool | None = None,
) -> Listener:
    """Start the dedicated listener process and return its handle.

    Args:
        config: a dictConfig dict, a path to a .toml/.json/.yaml file, or None (stderr).
        endpoint: where to bind; default a private ``ipc://`` (or ``mp://``) socket.
        transport: ``"zmq"`` (default) or ``"multiprocessing"``.
        route_parent: also send this process's own logging through the listener; the root
            logger's handlers and level come back at its stop (another listener's handler too,
            when listeners are nested).
        export_env: set ``MPLOG_ENDPOINT`` (and ``MPLOG_LEVEL``) for child processes, and
            route every process multiprocessing starts meanwhile (mplog.worker.children).
        supervise: restart the listener process on the same endpoint if it dies (mplog.listener.supervisor).
        ack: acknowledged delivery (mplog.ack); None: the config's ``mplog.ack``.

    Raises:
        ConfigError: a bad config, naming the key (checked here, or by the listener).
    """
    return Listener(
        config,
        endpoint=endpoint,
        transport=transport,
        route_parent=route_parent,
        export_env=export_env,
        supervise=supervise,
        ack=ack,
    ).start()


def _flag_unfinished(stats: dict[str, Any], *, killed: bool, timeout: float) -> None:
    """Mark ``stats`` of a listener whose stop did not finish, flag its open senders, and say so on stderr."""
    why = "listener killed at stop" if killed else "listener ended at stop"
    senders = stats.get("senders") or {}
    for sender in senders.values():
        if isinstance(sender, dict) and not sender.get("closed"):
            sender["unclosed"] = sender.get("unclosed") or why
    flagged = [s for s in senders.values() if isinstance(s, dict) and s.get("unclosed") and not s.get("closed")]
    stats["unclosed"] = len(flagged)
    if killed:
        stats["killed_at_stop"] = True
        cause = f"did not stop within {timeout:g} s (a handler that blocks in emit or close?) and was killed"
    else:
        cause = "ended without its final stats"
    print(
        f"mplog: the listener {cause}; its stats are what it had counted by then ({stats.get('received', 0)} "
        f"records received); what it still held is lost uncounted, and its {stats['unclosed']} open senders are "
        "flagged as ended without a goodbye (a longer Listener.stop(timeout=...), or handlers with timeouts)",
        file=sys.stderr,
        flush=True,
    )
