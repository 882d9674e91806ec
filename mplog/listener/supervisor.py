"""Supervision: restart a listener process that died, and keep its stats whole across restarts.

Two halves live here:

- :class:`Checkpoint` runs **inside the listener process**: a thread writes the stats
  snapshot to a small JSON state file every ``interval`` seconds (atomically: write a
  temporary file, then rename). A listener started again with the same state file
  continues from it, so per-sender ``next_seq`` survives a crash and a restart does
  not count the records delivered before it as a gap.
- :class:`Supervisor` runs **in the parent**, beside the :class:`mplog.Listener` handle:
  a thread waits on the child; when it dies without being asked to, the thread starts
  a new one on the same endpoint and state file, with a backoff that bounds a restart
  storm, and logs one line per restart on the ``mplog.supervisor`` logger.

What a crash can still cost, and why the numbers stay consistent, is in docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psutil

from mplog.exceptions import ConfigError
from mplog.listener.write_errors import cause_of, creation_error
from mplog.transports.base import check_private_dir

if TYPE_CHECKING:
    from mplog.listener.stats import Stats

__all__ = [
    "CHECKPOINT_INTERVAL",
    "Backoff",
    "Checkpoint",
    "Supervisor",
    "ensure_state_dir",
    "live_local_senders",
    "load_checkpoint",
    "process_runs",
    "say",
    "stats_path",
]

CHECKPOINT_INTERVAL = 0.05  # seconds between stats checkpoints (written only when something changed)

log = logging.getLogger("mplog.supervisor")  # the name docs/reliability.md gives users


def live_local_senders(stats: Stats) -> int:
    """How many senders on this host have not said goodbye and whose process still runs.

    A sender's identity carries its pid and process start time, so a reused pid is not
    mistaken for the sender. Used by the drain after the parent died: orphaned workers
    may still be logging, and their records must not be cut off.
    """
    host = socket.gethostname()
    with stats._lock:
        open_senders = [(s.pid, s.start_time) for s in stats.senders.values() if not s.closed and s.host == host]
    return sum(process_runs(pid, start_time) for pid, start_time in open_senders)


def process_runs(pid: int, start_time: float) -> bool:
    """Whether process ``pid`` runs and started at ``start_time`` (not a reused pid); 0.0: unknown, the pid alone."""
    try:
        created = psutil.Process(pid).create_time()
    except psutil.Error:  # gone (or not ours to inspect): not running
        return False
    return not start_time or abs(created - start_time) < 1.0


def stats_path(state_dir: str) -> str:
    return os.path.join(state_dir, "stats.json")


def ensure_state_dir(state_dir: str) -> None:
    """Create the listener's state directory if it is missing: mode 0700, as ``mplog listen`` always did.

    An existing directory is used as it is (a service manager may have made it, e.g.
    systemd's ``StateDirectory=``) if it is this user's (or root's) and others cannot write
    to it: its owner could rewrite the marks a restart trusts. It must let this user create a file, which needs an
    inode and no data block: a listener marks the directory used with an empty file as it
    starts (mplog.listener.continuation), so that a restart never truncates its files. A
    directory that is only full still starts the listener, which says so and retries
    (:class:`Checkpoint`).

    Raises:
        ConfigError: it cannot be created, is not a directory, belongs to another user, others
            can write to it, or no file can be created
            in it (naming ``mplog.state_dir`` and the cause: a read-only file system, no
            inode left, a permission).
    """
    try:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"mplog.state_dir {state_dir!r} cannot be created ({exc.strerror or exc}); "
            "give a directory this user can create or write"
        ) from exc
    # Its owner could rewrite the marks and checkpoints a restart trusts (docs/security.md).
    check_private_dir(state_dir, "mplog.state_dir", "another mplog.state_dir")
    error = creation_error(state_dir)
    if error is not None:
        raise ConfigError(
            f"mplog.state_dir: {cause_of(error, state_dir)} (a restart could not tell it continues this listener, "
            "and would truncate its mode 'w' files)"
        )


def load_checkpoint(path: str) -> dict[str, Any] | None:
    """Return the last stats checkpoint written at ``path``, or None if there is none (or it is unreadable)."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class Checkpoint:
    """Writes ``snapshot()`` to ``path`` every ``interval`` seconds until :meth:`close`.

    A write that fails (a full disk) is tried again at the next interval, whether or not
    the stats changed, for the listener's whole life. The listener says once on stderr
    that it cannot write its checkpoint and what that costs, and once that it can again
    (tests/reliability/test_state_dir_faults.py).

    Args:
        path: the checkpoint file (``stats.json`` in the state directory).
        snapshot: the stats to write.
        interval: seconds between checkpoints (written only when something changed).
        after_write: called on the checkpoint's thread after each checkpoint written;
            returns True to have one more written at once (the listener starts its
            progress file there once it can: mplog.listener.process).
    """

    def __init__(
        self,
        path: str,
        snapshot: Callable[[], dict[str, Any]],
        interval: float = CHECKPOINT_INTERVAL,
        after_write: Callable[[], bool] | None = None,
    ) -> None:
        self.path = path
        self._snapshot = snapshot
        self._interval = interval
        self._after_write = after_write
        self.failing: OSError | None = None  # why the last write failed; None while they succeed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mplog-checkpoint", daemon=True)

    def start(self) -> bool:
        """Write the first checkpoint now, then one every ``interval`` while something changes.

        A listener has marked its state directory used before this (an empty file:
        mplog.listener.continuation), so a listener started on it later continues it and
        appends to its files even when this first checkpoint cannot be written.

        Returns:
            Whether the first checkpoint was written (a full disk must not stop the
            listener from starting: it goes on, says so, and the attempts go on).
        """
        written = self._attempt()
        self._thread.start()
        return written

    def write(self) -> None:
        """Write one checkpoint now (atomically: readers see the old file or the new one)."""
        self._write(self._snapshot())

    def _write(self, snapshot: dict[str, Any]) -> None:
        data = json.dumps(snapshot).encode()
        tmp = f"{self.path}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:  # a large table is more than one write()
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, self.path)

    def _attempt(self, snapshot: dict[str, Any] | None = None) -> bool:
        """Write a checkpoint; say on stderr when writing starts or stops failing. Never raises."""
        try:
            self._write(self._snapshot() if snapshot is None else snapshot)
        except OSError as exc:
            if self.failing is None:
                say(
                    f"mplog: cannot write the stats checkpoint {self.path} ({exc.strerror or exc}): until it can, "
                    "a listener killed or restarted on this state directory goes back to the stats of its last "
                    "checkpoint there (zero if there is none; its files are still appended to, not truncated); "
                    "retrying"
                )
            self.failing = exc
            return False
        except Exception:  # a snapshot that cannot be taken or encoded: tried again at the next interval
            return False
        if self.failing is not None:
            self.failing = None
            say(f"mplog: the stats checkpoint {self.path} is written again")
        if self._after_write is not None and self._after_write():
            return self._attempt()
        return True

    def _run(self) -> None:
        last = None
        pause = self._interval
        while not self._stop.wait(pause):
            started = time.monotonic()
            with contextlib.suppress(Exception):  # a full disk must not end the listener
                snapshot = self._snapshot()
                progress = (snapshot.get("frames"), snapshot.get("malformed_total"), snapshot.get("handler_errors"))
                if (progress != last or self.failing is not None) and self._attempt(snapshot):
                    last = progress
            # A large sender table makes a checkpoint cost tens of milliseconds: at most a
            # tenth of the time goes to it, whatever the interval.
            pause = max(self._interval, 9 * (time.monotonic() - started))

    def close(self, *, final: bool = True) -> None:
        """Stop the thread; with ``final``, write one last checkpoint. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        if final:
            with contextlib.suppress(Exception):
                self.write()


def say(line: str) -> None:
    """One line on the listener's stderr, where its other complaints go; never raises."""
    with contextlib.suppress(Exception):
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


class Backoff:
    """Restart delays: immediate after a long healthy run, doubling while the child keeps dying quickly.

    Args:
        first: the delay before the second restart in a row (seconds).
        cap: the longest delay.
        stable_after: a child that lived this long resets the backoff.
    """

    def __init__(self, first: float = 0.1, cap: float = 10.0, stable_after: float = 10.0) -> None:
        self.first, self.cap, self.stable_after = first, cap, stable_after
        self._quick = 0  # consecutive deaths of children that lived less than stable_after

    def delay(self, lived: float) -> float:
        """The delay before the next restart, given how long the child that just died lived."""
        if lived >= self.stable_after:
            self._quick = 0
        self._quick += 1
        if self._quick == 1:
            return 0.0
        return float(min(self.first * 2 ** (self._quick - 2), self.cap))


class Supervisor:
    """Watches a listener child from the parent and restarts it when it dies unasked.

    Args:
        poll: returns the child's exit code, or None while it runs (``Popen.poll``).
        relaunch: starts a new child on the same endpoint; returns its pid; raises on failure.
        lock: held while relaunching, so that stats() and stop() never see a half-started child.
        backoff: the restart delay policy.
    """

    def __init__(
        self,
        poll: Callable[[], int | None],
        relaunch: Callable[[], int],
        lock: threading.Lock,
        backoff: Backoff | None = None,
    ) -> None:
        self._poll = poll
        self._relaunch = relaunch
        self._lock = lock
        self._backoff = backoff or Backoff()
        self._stop = threading.Event()
        self._started_at = time.monotonic()
        self._recent: deque[float] = deque()
        self.restarts = 0
        self.failures = 0  # relaunch attempts that failed
        self.changed = threading.Condition()  # notified after every restart
        self._thread = threading.Thread(target=self._run, name="mplog-supervisor", daemon=True)

    def start(self) -> Supervisor:
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop watching (before an orderly stop of the child); idempotent."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def restart_now(self) -> bool:
        """Restart a child that died and waits out its backoff at once; True if a child runs now.

        For an orderly stop (:meth:`mplog.Listener.stop`): only a running listener restores
        what the dead one counted (its checkpoint and progress file), drains what the
        workers still hold and flags the senders that ended without a goodbye; the dead
        one's last checkpoint is up to an interval behind and flags nothing.
        """
        if self._stop.is_set():
            return False
        code = self._poll()
        if code is not None:
            self._restart(code, time.monotonic() - self._started_at)
        return self._poll() is None

    def wait_for_restart(self, seen: int, timeout: float) -> bool:
        """Wait until more than ``seen`` restarts happened; True if one did."""
        with self.changed:
            return self.changed.wait_for(lambda: self.restarts > seen or self._stop.is_set(), timeout) and (
                self.restarts > seen
            )

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            code = self._poll()
            if code is None:
                continue
            lived = time.monotonic() - self._started_at
            delay = self._backoff.delay(lived)
            if self._stop.wait(delay):
                return
            self._restart(code, lived)

    def _restart(self, code: int, lived: float) -> None:
        with self._lock:
            if self._stop.is_set() or self._poll() is None:  # (restarted meanwhile: restart_now)
                return
            started = time.monotonic()  # its life counts from here: the start-up is part of it
            try:
                pid = self._relaunch()
            except Exception as exc:
                self.failures += 1
                log.error("mplog listener could not be restarted (attempt %d): %s", self.failures, exc)
                self._started_at = started  # counts as a quick death: the backoff grows
                return
            self._started_at = started
            now = time.monotonic()
            self.restarts += 1
            self._recent.append(now)
            while self._recent and now - self._recent[0] > 60.0:
                self._recent.popleft()
        with self.changed:
            self.changed.notify_all()
        cause = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        log.warning(
            "mplog listener %s after %.1f s; restarted as pid %d (restart %d, %d in the last minute)",
            cause,
            lived,
            pid,
            self.restarts,
            len(self._recent),
        )
