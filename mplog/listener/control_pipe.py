"""The control pipe between the parent's :class:`mplog.Listener` and the listener process it started.

One JSON object per line, over a pair of pipes handed to the child (``--control R,W``).
The parent sends the setup, then ``{"cmd": "stats"}`` and ``{"cmd": "stop"}``; the child
answers ``{"event": "ready" | "error" | "stopped", ...}`` and ``{"stats": ...}``. An end
of file means the other side is gone: for the child, its parent died (it drains and exits).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import threading
import time
from typing import Any

__all__ = ["ControlPipe"]


class ControlPipe:
    """One side of the control pipe: reads from ``read_fd``, writes to ``write_fd`` (both owned)."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self._buffer = b""
        self._lock = threading.Lock()  # one message at a time: the child answers from two threads

    def write(self, message: dict[str, Any]) -> None:
        """Send one message, whole.

        Raises:
            OSError: the other side closed its end.
        """
        view = memoryview(json.dumps(message).encode() + b"\n")
        with self._lock:
            while view:
                written = os.write(self.write_fd, view)
                view = view[written:]

    def read(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next message; None at end of file or when ``timeout`` seconds pass first (None: wait).

        Raises:
            OSError: the pipe failed.
            ValueError: a line that is not JSON.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                ready, _, _ = select.select([self.read_fd], [], [], remaining)
                if not ready:
                    return None
            chunk = os.read(self.read_fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        return message

    def close(self) -> None:
        """Close both ends; harmless twice (a closed descriptor's number may belong to another file by then)."""
        fds, self.read_fd, self.write_fd = (self.read_fd, self.write_fd), -1, -1
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
