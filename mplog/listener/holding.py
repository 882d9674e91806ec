"""The listener gives the CPUs to its own busy workers, for a bounded time.

When this host's workers keep every CPU the listener may run on busy, whatever the
listener spends on a record (decoding, formatting, writing) is taken from them: with two
producers and the listener on two CPUs, a producer's logging call waits for the
listener's share. So while that is the case the listener *holds* the frames it
receives (it keeps receiving, so no sender blocks) and handles them as soon as a CPU is
free, and in any case:

- after ``mplog.yield_to_workers`` seconds (default 1.0) from the first frame held, after
  which it handles every frame without holding until it has caught up;
- when the held frames reach :data:`HOLD_MAX_BYTES`;
- when a frame flagged urgent arrives (it ends with a record at the worker's flush level,
  ERROR by default): it is handled at once, after the frames held before it, so that each
  sender's order is kept; so is a frame that is not one (counted by the decoder);
- when the listener is asked to stop.

"Busy" is measured, never guessed from a load average: a sender on this host counts while
its main thread is runnable (``R`` in ``/proc/<pid>/stat``), and the listener holds only
while at least as many of them as it has CPUs are. A host-wide count of runnable tasks
(``/proc/loadavg``) is read first so that the senders are looked at only when the host
could be saturated, and then at most the 32 heard from most recently. Other programs
keeping the CPUs busy never make the listener hold: it yields to its own workers, not to
the machine. Without ``/proc`` (not Linux) it never holds.
"""

from __future__ import annotations

import math
import os
import socket

from mplog.wire.schema import FLAG_FINAL

__all__ = ["DEFAULT_YIELD_SECONDS", "HOLD_MAX_BYTES", "WorkerWatch"]

# Off by default (issue 15): holding trades latency (up to the hold time) and memory (up to
# HOLD_MAX_BYTES, lost on a crash) for the workers' CPU; a user who wants the trade sets it.
DEFAULT_YIELD_SECONDS = 0.0  # the longest a frame waits for the CPUs while the workers keep them busy
HOLD_MAX_BYTES = 64 * 1024 * 1024  # frames held at once: the listener's memory bound while it yields
CHECK_INTERVAL = 0.02  # seconds between two looks at the workers, and how late an urgent frame can be
MAX_WATCHED = 256  # senders remembered (the most recently heard from)
MAX_LOOKED_AT = 32  # senders read per look, the most recently heard from first: a look costs at most ~0.3 ms


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _runnable_on_host() -> int:
    """Tasks runnable on the whole host right now, the caller included (``/proc/loadavg``'s fourth field)."""
    with open("/proc/loadavg", "rb") as f:
        return int(f.read().split()[3].split(b"/")[0])


def _runnable(pid: int) -> bool | None:
    """Whether ``pid``'s main thread is runnable; None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # "pid (comm) S ...": comm may hold spaces and parentheses, the state follows the last ')'
    state = data.rfind(b")") + 2
    return data[state : state + 1] == b"R"


class WorkerWatch:
    """Knows this host's senders (from the frames' headers) and whether they keep every CPU busy."""

    def __init__(self, cpus: int | None = None) -> None:
        self.host = socket.gethostname()
        self.cpus = cpus or _cpus()
        self.enabled = os.path.exists("/proc/loadavg")
        self._pids: dict[int, None] = {}  # senders on this host, the most recently heard from last
        self._checked = -math.inf
        self._busy = False
        self._was_busy = False  # the last look's own answer

    @property
    def pids(self) -> list[int]:
        return list(self._pids)

    def saw(self, host: str, pid: int, flags: int) -> None:
        """Note a frame's sender (from :func:`mplog.wire.read_envelope`)."""
        if host != self.host:
            return
        pids = self._pids
        pids.pop(pid, None)
        if flags & FLAG_FINAL:  # the sender is closing
            return
        pids[pid] = None
        if len(pids) > MAX_WATCHED:
            del pids[next(iter(pids))]

    def busy(self, now: float) -> bool:
        """Whether at least as many senders as CPUs are runnable (looked at most every CHECK_INTERVAL).

        Busy at one look is enough; idle needs two looks in a row: a busy worker's main
        thread shows as sleeping while one of its other threads holds the GIL (its
        flusher sending a frame), which one look can catch.
        """
        if now - self._checked >= CHECK_INTERVAL:
            self._checked = now
            busy = self._look()
            self._busy, self._was_busy = busy or self._was_busy, busy
        return self._busy

    def _look(self) -> bool:
        if not self.enabled or len(self._pids) < self.cpus:
            return False
        try:
            if _runnable_on_host() - 1 < self.cpus:  # minus the listener's own thread
                return False
        except (OSError, ValueError, IndexError):
            return False
        running = 0
        for pid in list(self._pids)[: -MAX_LOOKED_AT - 1 : -1]:  # busy workers send often: newest first
            state = _runnable(pid)
            if state is None:  # gone without a goodbye
                self._pids.pop(pid, None)
            elif state:
                running += 1
                if running >= self.cpus:
                    return True
        return False
