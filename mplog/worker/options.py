"""How a worker batches, bounds and flushes: :class:`WorkerOptions` and its validation.

Every option is a plain value that ``dictConfig`` and the ``worker`` table of a
listener's configuration can express; a bad key or value is a :class:`ConfigError`
that names it and the fix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields, replace
from typing import Any

from mplog.exceptions import ConfigError
from mplog.transports import TransportOptions
from mplog.wire import Limits

__all__ = ["POLICIES", "WorkerOptions"]

POLICIES = ("block", "drop_newest", "drop_oldest")
# The worker's socket options given in seconds (TransportOptions): checked, since a bad one
# would only fail when the transport opens, in the logging call that opens it.
_TRANSPORT_SECONDS = (
    "linger",
    "write_timeout",
    "heartbeat_ivl",
    "heartbeat_timeout",
    "stall_timeout",
    "reconnect_ivl_max",
)


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker batches, bounds and flushes what it sends."""

    batch_records: int = 512  # a batch is sent when it holds this many records...
    batch_bytes: int = 64 * 1024  # ...or this many bytes...
    flush_interval: float = 0.05  # ...or when its first record is this old (seconds)
    flush_level: int = logging.ERROR  # records at or above this level are sent at once
    max_buffer_bytes: int = 16 * 1024 * 1024  # unsent data held before the policy applies
    policy: str = "block"  # block | drop_newest | drop_oldest
    block_timeout: float = 2.0  # the longest a logging call waits under "block"
    close_timeout: float = 2.0  # the longest exit waits to deliver what is buffered
    flush_on_sigterm: bool = True  # deliver buffered records when SIGTERM ends the process
    level: int | None = None  # root logger level; None: $MPLOG_LEVEL, else the listener's answer, else DEBUG
    ack: bool | None = None  # acknowledged delivery (mplog.ack); None: on if the listener exported $MPLOG_ACK=1
    ack_timeout: float = 1.0  # seconds without an acknowledgement before unacknowledged frames are resent
    spool_dir: str | None = None  # acknowledged delivery: unacknowledged frames also kept in a file here (mplog.ack)
    wire_version: int = 2  # 2: batches as columns (docs/wire-format.md); 1: for listeners older than 0.2 (upgrades)
    limits: Limits = field(default_factory=Limits)
    transport: TransportOptions = field(default_factory=TransportOptions)

    @classmethod
    def from_kwargs(cls, **options: Any) -> WorkerOptions:
        """Build options from keyword arguments, naming any bad key and its fix."""
        known = {f.name: f for f in fields(cls)}
        nested = {
            "limits": {f.name for f in fields(Limits)},
            "transport": {f.name for f in fields(TransportOptions)},
        }
        top: dict[str, Any] = {}
        sub: dict[str, dict[str, Any]] = {"limits": {}, "transport": {}}
        for key, value in options.items():
            if key in known:
                top[key] = value
                continue
            for group, names in nested.items():
                if key in names:
                    sub[group][key] = value
                    break
            else:
                choices = sorted(set(known) | nested["limits"] | nested["transport"])
                raise ConfigError(f"setup_worker() got an unknown option {key!r}; known options: {', '.join(choices)}")
        for name in ("level", "flush_level"):
            if name in top:
                top[name] = _level_number(name, top[name])
        opts = cls(**top)
        if sub["limits"]:
            opts = replace(opts, limits=replace(opts.limits, **sub["limits"]))
        if sub["transport"]:
            opts = replace(opts, transport=replace(opts.transport, **sub["transport"]))
        opts.validate()
        return opts

    def validate(self) -> None:
        if type(self.wire_version) is not int or self.wire_version not in (1, 2):
            raise ConfigError(
                f"wire_version must be 1 or 2, got {self.wire_version!r}; 1 only for a listener older than "
                "mplog 0.2, which cannot read version 2 frames (docs/wire-format.md, Versions)"
            )
        if self.policy not in POLICIES:
            raise ConfigError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        for name in ("batch_records", "batch_bytes", "max_buffer_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if self.spool_dir is not None and not isinstance(self.spool_dir, str):
            raise ConfigError(f"spool_dir must be a directory path (str), got {self.spool_dir!r}")
        if self.spool_dir and self.ack is False:
            raise ConfigError("spool_dir keeps unacknowledged frames: it needs ack=True (or drop spool_dir)")
        for name in ("flush_interval", "block_timeout", "close_timeout", "ack_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{name} must be a number of seconds >= 0, got {value!r}")
        for name in _TRANSPORT_SECONDS:
            value = getattr(self.transport, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
                raise ConfigError(f"{name} must be a number of seconds >= 0, got {value!r}")


def _level_number(name: str, value: Any) -> Any:
    """A level option as a number: a name in any case ("info") becomes one; ConfigError naming ``name`` else."""
    if value is None and name == "level":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        number = logging.getLevelName(value.strip().upper())
        if isinstance(number, int):
            return number
    raise ConfigError(f"{name} must be a level name such as 'INFO' or a number, got {value!r}")
