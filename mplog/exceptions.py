"""The exception tree of mplog: everything raised on purpose derives from MplogError."""

from __future__ import annotations

import contextlib
import sys

__all__ = ["ConfigError", "FrameError", "ListenerError", "MplogError", "TransportError", "report"]


class MplogError(Exception):
    """Base class of every error mplog raises on purpose."""


class ConfigError(MplogError, ValueError):
    """A configuration value is wrong; the message names the key and the fix."""


class FrameError(MplogError, ValueError):
    """A frame could not be decoded; ``reason`` is the short counter name."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class TransportError(MplogError, OSError):
    """A transport could not be opened or used."""


class ListenerError(MplogError, RuntimeError):
    """The listener process could not be started or controlled."""


def report(line: str) -> None:
    """One line on stderr: mplog's channel for what it can neither raise nor log (it is the logging)."""
    with contextlib.suppress(Exception):
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
