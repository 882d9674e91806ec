"""The settings a listener exports to the processes it can reach: endpoint, level, acknowledged delivery.

:func:`mplog.start_listener` exports them (:func:`export_setting`); ``setup_worker()``
with no argument reads them (:func:`inherited_setting`).
"""

from __future__ import annotations

import multiprocessing
import os

from mplog.exceptions import ConfigError

__all__ = ["ENV_ACK", "ENV_ENDPOINT", "ENV_LEVEL", "ack_setting", "export_setting", "inherited_setting"]

ENV_ENDPOINT = "MPLOG_ENDPOINT"
ENV_LEVEL = "MPLOG_LEVEL"
ENV_WIRE_VERSION = "MPLOG_WIRE_VERSION"  # "1": frames a listener older than 0.2 can read (rolling upgrades)
ENV_ACK = "MPLOG_ACK"  # "1": workers started by an acknowledging listener use acknowledged delivery


def inherited_setting(key: str) -> str | None:
    """A setting exported by :func:`mplog.start_listener` to the processes it can reach.

    The environment alone is not enough: a forkserver started earlier holds the
    environment of that moment, so its children would find a stale endpoint. The
    value also travels in multiprocessing's per-process config, which is sent with
    every child that multiprocessing starts, whatever the start method
    (see test_forkserver_started_by_an_earlier_listener_finds_the_current_one).
    """
    config = getattr(multiprocessing.current_process(), "_config", None)
    value = config.get(f"mplog:{key}") if isinstance(config, dict) else None
    return value if isinstance(value, str) else os.environ.get(key)


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def ack_setting(value: str | None) -> bool:
    """``MPLOG_ACK`` as a bool: 1/true/yes/on or 0/false/no/off (any case), unset is off.

    Raises:
        ConfigError: anything else (before, "yes" was read as off without a word).
    """
    text = (value or "").strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ConfigError(f"{ENV_ACK} must be 1 or 0 (or true/false, yes/no, on/off), got {value!r}")


def export_setting(key: str, value: str | None) -> None:
    """Export (or, with None, withdraw) a setting for child processes started from now on."""
    config = getattr(multiprocessing.current_process(), "_config", None)
    if value is None:
        os.environ.pop(key, None)
        if isinstance(config, dict):
            config.pop(f"mplog:{key}", None)
        return
    os.environ[key] = value
    if isinstance(config, dict):
        config[f"mplog:{key}"] = value
