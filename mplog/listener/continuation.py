"""A listener that continues an earlier one never truncates a log file that one wrote.

A ``FileHandler`` configured with ``mode = "w"`` truncates its file when it opens it.
That is what a user asks for when the listener starts; it is not what they ask for when
the supervisor restarts a killed listener, or when ``mplog listen`` is started again on
its ``mplog.state_dir``: the new listener continues the earlier one's stats, so
truncating would silently throw away records the stats count as written (and, in ack
mode, records already acknowledged to their workers).

So a listener that continues an earlier run (:func:`continues_earlier_run`) calls
:func:`append_on_first_open` before it applies the config: from then on, in that
process, the first time each file handler opens its file it opens it for appending
('w' becomes 'a', 'w+' 'a+'), whatever mode it was configured with. This is one hook on
``logging.FileHandler._open``, so it covers every file handler of ``logging`` and
``logging.handlers`` (FileHandler, WatchedFileHandler, RotatingFileHandler,
TimedRotatingFileHandler), mplog's rotating handlers, subclasses whose default mode is
'w', handlers made by ``'()'`` factories, and ``delay = true`` (the first open then
comes with the first record). Later opens keep the configured mode: a rollover opens a
new file, and a SIGHUP reopen appends on its own (mplog.listener.loop). mplog's
``FactoryStreamHandler`` follows the same rule for a ``mode`` in its factory's arguments
(``factory = "ext://builtins.open"``). A handler that opens its file some other way (a
custom ``_open`` that does not call the base class's, a stream built by a ``'()'``
factory) is outside this rule; docs/reliability.md says so.

Appending is also what the ack mode's write-ahead intent needs (mplog.delivery.intent): the
restarted listener cuts a half-written frame off the end of each file, and appended
writes then land at that end.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from mplog.handlers.stream import FactoryStreamHandler
from mplog.listener.supervisor import stats_path

__all__ = ["append_on_first_open", "continues_earlier_run", "open_for_appending"]

_original_open = logging.FileHandler._open
_enabled = False


def continues_earlier_run(state_dir: str | None, restarts: int = 0) -> bool:
    """True for a supervised restart, or a listener whose state directory already holds a stats checkpoint.

    A listener writes its first checkpoint as it starts (mplog.listener.supervisor.Checkpoint),
    so a listener killed at any point after start-up leaves one behind.
    """
    return restarts > 0 or bool(state_dir and os.path.exists(stats_path(state_dir)))


def open_for_appending(mode: str) -> str:
    """The mode that opens the same way as ``mode`` but never truncates: 'w' -> 'a', 'wb' -> 'ab', 'w+' -> 'a+'."""
    return mode.replace("w", "a")


def append_on_first_open(enabled: bool = True) -> None:
    """From now on in this process, each file handler's first open appends (see the module docstring).

    Call before ``dictConfig`` builds the handlers; ``enabled=False`` turns it off again
    (for a process that runs a listener in the foreground and goes on).
    """
    global _enabled  # one switch for the whole listener process
    _enabled = enabled
    FactoryStreamHandler.append_on_first_open = enabled  # its factory's 'mode' argument, e.g. builtins.open
    if enabled and logging.FileHandler._open is not _open:
        logging.FileHandler._open = _open  # type: ignore[method-assign]  # the listener process owns every handler


def _open(self: logging.FileHandler) -> Any:
    if not _enabled or self.__dict__.get("_mplog_opened"):
        return _original_open(self)
    self._mplog_opened = True  # type: ignore[attr-defined]  # later opens (rollover) keep the configured mode
    mode = self.mode
    self.mode = open_for_appending(mode)
    try:
        return _original_open(self)
    finally:
        self.mode = mode
