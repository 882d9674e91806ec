"""Handlers the reliability tests install in the listener (imported there through PYTHONPATH)."""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

_SEQ = re.compile(r"P\d+:(\d{8}):")


class SlowWhileFlagged(logging.FileHandler):
    """A file handler that takes ``delay`` seconds per record while ``flag`` exists (a stalled sink)."""

    def __init__(self, filename: str, flag: str, delay: float = 0.05) -> None:
        super().__init__(filename, encoding="utf-8")
        self.flag = flag
        self.delay = delay

    def emit(self, record: logging.LogRecord) -> None:
        if os.path.exists(self.flag):
            time.sleep(self.delay)
        super().emit(record)


def slow_sink_config(out: Path, flag: Path, rcvhwm: int = 1000, delay: float = 0.0002) -> dict[str, Any]:
    """A listener config whose one handler writes ``out`` at ``delay`` seconds per record (``flag`` is created)."""
    flag.touch()
    return {
        "version": 1,
        "formatters": {"f": {"format": "%(message)s"}},
        "handlers": {
            "slow": {
                "()": "fault_handlers.SlowWhileFlagged",
                "filename": str(out),
                "flag": str(flag),
                "delay": delay,
                "formatter": "f",
            }
        },
        "root": {"level": "INFO", "handlers": ["slow"]},
        "mplog": {"socket": {"rcvhwm": rcvhwm}},
    }


class LossyDuplicating(logging.FileHandler):
    """The oracle's mutant (RELIABILITY A6): skips every 20th record, writes every 20th+1 twice, truncates one."""

    def emit(self, record: logging.LogRecord) -> None:
        match = _SEQ.search(str(record.msg))
        seq = int(match.group(1)) if match else -1
        if seq % 20 == 0:
            return  # lost, and nobody counted it
        super().emit(record)
        if seq % 20 == 1:
            super().emit(record)  # written twice
        if seq == 7:
            assert self.stream is not None
            self.stream.write(self.format(record)[:-3] + "\n")  # a torn line
            self.flush()


class KillsItsListenerMidFrame(logging.FileHandler):
    """A file handler that SIGKILLs its own process right after writing its ``after``-th record.

    The record is in the file, the frame's mark is not stored yet: the window acknowledged
    delivery has to close. ``marker`` is created before the kill, so a restarted listener
    (same config) does not kill itself again.
    """

    def __init__(
        self, filename: str, marker: str, after: int, *, before: bool = False, torn: bool = False, pause: float = 0.0
    ) -> None:
        super().__init__(filename, encoding="utf-8")
        self.marker = marker
        self.after = after
        self.before = before  # kill instead of writing the after-th record
        self.torn = torn  # kill after writing half of the after-th record's line (a write cut by the kill)
        self.pause = pause  # seconds stuck before the kill (a hung emit: the stats checkpoint goes on meanwhile)
        self.written = 0

    def emit(self, record: logging.LogRecord) -> None:
        if self.before and self.written + 1 == self.after:
            self._die()
        if self.torn and self.written + 1 == self.after and not os.path.exists(self.marker):
            line = self.format(record)
            assert self.stream is not None
            self.stream.write(line[: len(line) // 2])
            self.stream.flush()
            self._die()
        super().emit(record)
        self.written += 1
        if self.written == self.after:
            self._die()

    def _die(self) -> None:
        if not os.path.exists(self.marker):
            time.sleep(self.pause)
            with open(self.marker, "w"):
                pass
            os.kill(os.getpid(), signal.SIGKILL)


class RotatesThenKillsItsListener(logging.handlers.RotatingFileHandler):
    """Like :class:`KillsItsListenerMidFrame`, but rotates its file just before the fatal record.

    The frame's earlier records end up in ``filename.1``, the last one in a new file at
    ``filename``: a file that is no longer the one the listener recorded before the frame.
    """

    def __init__(self, filename: str, marker: str, after: int) -> None:
        super().__init__(filename, backupCount=1, encoding="utf-8")
        self.marker = marker
        self.after = after
        self.written = 0

    def emit(self, record: logging.LogRecord) -> None:
        fatal = self.written + 1 == self.after and not os.path.exists(self.marker)
        if fatal:
            self.doRollover()
        super().emit(record)
        self.written += 1
        if fatal:
            with open(self.marker, "w"):
                pass
            os.kill(os.getpid(), signal.SIGKILL)


class NeverConfirms(logging.Handler):
    """A handler that takes records and never confirms their delivery (acknowledged delivery withholds the ack)."""

    def emit(self, record: logging.LogRecord) -> None:
        pass

    def wait_confirmed(self, timeout: float | None = None) -> bool:
        return False
