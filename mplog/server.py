"""The listener's receive loop: receive -> decode -> dispatch into ``logging``.

This module runs inside the listener process: started by :class:`mplog.Listener`
(``python -m mplog.server``, driven over a private control pipe) or in the
foreground by ``mplog listen``. Frames never reach a handler unless they decode and
validate; anything else only increments a counter.
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
import sys
import threading
import time
from typing import Any

from mplog.exceptions import FrameError
from mplog.stats import Stats
from mplog.transports import Receiver
from mplog.wire import Limits, check_records, decode_header, make_log_record

__all__ = ["Server", "install_handler_error_counter"]

_MAX_NAME = 1024  # longest logger name dispatched (each name creates a Logger for good)
DISPATCH_ERROR = "(dispatch)"  # handler_errors key for an exception raised outside any handler


class Server:
    """Owns a bound receiver and dispatches what it receives until stopped."""

    def __init__(self, receiver: Receiver, *, limits: Limits | None = None, drain_quiet: float = 0.2) -> None:
        self.receiver = receiver
        self.limits = limits or Limits()
        self.stats = Stats()
        self.stop_event = threading.Event()
        self.drain_quiet = drain_quiet
        self.drain_timeout = 10.0
        self._loggers: dict[str, logging.Logger] = {}

    # ------------------------------------------------------------ one frame

    def handle_frame(self, data: bytes) -> None:
        """Decode, account and dispatch one frame; bad frames only count."""
        stats, limits = self.stats, self.limits
        try:
            frame = decode_header(data, limits)
        except FrameError as exc:
            stats.note_malformed(exc.reason)
            return
        records = frame.records
        try:
            check_records(records, limits)
            for fields in records:
                if len(fields[0]) > _MAX_NAME:
                    raise FrameError("bad_field", "logger name too long")
        except FrameError as exc:
            stats.reject(frame, exc.reason)
            return
        skip = stats.accept(frame)
        if skip:
            records = records[skip:]
        host = frame.sender.host
        loggers = self._loggers
        for fields in records:
            name = fields[0]
            logger = loggers.get(name)
            if logger is None:
                logger = loggers[name] = logging.getLogger(name) if name != "root" else logging.getLogger()
            if logger.isEnabledFor(fields[1]):
                try:
                    logger.handle(make_log_record(fields, host))
                except Exception:  # a logger-level filter raised (handlers are guarded on their own)
                    stats.note_handler_error(DISPATCH_ERROR)

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
        snap["endpoint"] = self.receiver.endpoint
        snap["pid"] = os.getpid()
        return snap

    def run(self) -> None:
        """Receive until :attr:`stop_event` is set, then drain until quiet."""
        recv, handle = self.receiver.recv, self.handle_frame
        stop = self.stop_event
        while not stop.is_set():
            data = recv(0.05)
            if data is not None:
                handle(data)
        self.drain()

    def drain(self) -> None:
        """Keep receiving until nothing arrives for ``drain_quiet`` seconds (bounded)."""
        deadline = time.monotonic() + self.drain_timeout
        while time.monotonic() < deadline:
            data = self.receiver.recv(self.drain_quiet)
            if data is None:
                break
            self.handle_frame(data)


def install_handler_error_counter(stats: Stats, quiet_interval: float = 10.0) -> None:
    """Count handler failures per handler; print at most one report per handler per interval.

    Runs only in the listener process, where every handler is mplog's to supervise.
    """
    last_report: dict[str, float] = {}

    def handle_error(self: logging.Handler, record: logging.LogRecord) -> None:
        name = self.get_name() or type(self).__name__
        stats.note_handler_error(name)
        now = time.monotonic()
        if now - last_report.get(name, -quiet_interval) >= quiet_interval:
            last_report[name] = now
            exc = sys.exc_info()[1]
            try:
                sys.stderr.write(f"mplog: handler {name!r} failed: {type(exc).__name__}: {exc}\n")
            except Exception:
                pass

    logging.Handler.handleError = handle_error  # type: ignore[method-assign]  # the listener process owns every handler
    _guard_handle()


def _guard_handle() -> None:
    """Route an exception escaping ``Handler.handle`` to ``handleError`` instead of the receive loop.

    Several stdlib handlers let errors escape ``emit`` (``FileHandler`` with ``delay=True``
    opening a file in a missing directory, ``WatchedFileHandler`` reopening one), which
    would otherwise end the listener (see
    test_file_handler_in_a_missing_directory_is_counted_and_the_others_go_on).
    """
    original = logging.Handler.handle
    if getattr(original, "_mplog_guarded", False):
        return

    def handle(self: logging.Handler, record: logging.LogRecord) -> Any:
        try:
            return original(self, record)
        except Exception:
            self.handleError(record)
            return False

    handle._mplog_guarded = True  # type: ignore[attr-defined]  # marks the wrapper so it is installed once
    logging.Handler.handle = handle  # type: ignore[method-assign]  # the listener process owns every handler


# ---------------------------------------------------------------- child process entry


class _Control:
    """The private pipe pair between the parent's Listener and this process."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._reader = os.fdopen(read_fd, "rb", buffering=0)
        self._write_fd = write_fd
        self._lock = threading.Lock()
        self._buffer = b""

    def read(self) -> dict[str, Any] | None:
        while b"\n" not in self._buffer:
            chunk = self._reader.read(65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        return message

    def write(self, message: dict[str, Any]) -> None:
        data = json.dumps(message).encode() + b"\n"
        with self._lock:
            view = memoryview(data)
            while view:
                written = os.write(self._write_fd, view)
                view = view[written:]


def _watch_control(server: Server, control: _Control) -> None:
    parent = os.getppid()
    while True:
        try:
            message = control.read()
        except (OSError, ValueError):
            message = None
        if message is None:  # the parent is gone: drain what arrived and exit
            server.stop_event.set()
            return
        command = message.get("cmd")
        if command == "stats":
            control.write({"stats": server.snapshot()})
        elif command == "stop":
            server.drain_timeout = float(message.get("timeout", server.drain_timeout))
            server.stop_event.set()
            return
        if os.getppid() != parent:
            server.stop_event.set()
            return


def _watch_parent(server: Server, parent: int) -> None:
    # A pipe can stay open after the parent died (its forked children hold the
    # write end), so the parent pid is watched as well.
    while not server.stop_event.wait(0.25):
        if os.getppid() != parent:
            server.stop_event.set()


def child_main(read_fd: int, write_fd: int) -> int:
    """Entry point of the listener process started by :class:`mplog.Listener`."""
    from mplog.config import build_receiver

    control = _Control(read_fd, write_fd)
    setup = control.read()
    if setup is None:
        return 1
    try:
        logging.config.dictConfig(setup["config"])
    except Exception as exc:
        cause = exc.__cause__ or exc.__context__
        detail = f"{exc}" + (f": {type(cause).__name__}: {cause}" if cause else "")
        control.write({"event": "error", "kind": "config", "message": detail})
        return 2
    try:
        receiver, limits = build_receiver(setup["endpoint"], setup.get("runtime", {}))
    except Exception as exc:
        control.write({"event": "error", "kind": "transport", "message": f"{type(exc).__name__}: {exc}"})
        return 3
    server = Server(receiver, limits=limits)
    install_handler_error_counter(server.stats)
    control.write({"event": "ready", "endpoint": receiver.endpoint, "pid": os.getpid()})
    parent = os.getppid()
    threading.Thread(target=_watch_control, args=(server, control), daemon=True, name="mplog-control").start()
    threading.Thread(target=_watch_parent, args=(server, parent), daemon=True, name="mplog-lifeline").start()
    try:
        server.run()
    finally:
        logging.shutdown()
        receiver.close()
    try:
        control.write({"event": "stopped", "stats": server.snapshot()})
    except OSError:
        pass  # the parent is gone
    return 0


if __name__ == "__main__":
    read_fd, write_fd = (int(x) for x in sys.argv[sys.argv.index("--control") + 1].split(","))
    sys.exit(child_main(read_fd, write_fd))
