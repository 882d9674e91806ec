"""The listener's settings from the ``mplog`` table: limits, socket options, holding, niceness, the workers' level.

:mod:`mplog.config` loads and checks a config file (it calls these to check the
``mplog.limits`` and ``mplog.socket`` tables); these turn the checked runtime table into
what the listener process is built from (:mod:`mplog.listener.process`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import fields, replace
from typing import Any

from mplog.exceptions import ConfigError
from mplog.listener.holding import DEFAULT_YIELD_SECONDS
from mplog.listener.stats import SenderLimits
from mplog.transports import TransportOptions
from mplog.transports import curve as security
from mplog.wire import Limits

__all__ = [
    "apply_nice",
    "limits_for",
    "sender_limits_for",
    "transport_options_for",
    "worker_level",
    "yield_seconds",
]


def worker_level(config: dict[str, Any]) -> int:
    """The lowest level at which a record can reach a handler in the listener: what workers need to send.

    For the root logger and each configured logger: its effective level (its own, else its
    nearest configured ancestor's, else the root's, WARNING by default), raised to the
    lowest level among the handlers it reaches (its own, then its ancestors' while
    ``propagate`` holds). A logger that reaches no handler counts at its effective level
    (logging's last resort may take its records). Filters are left out: they only take away.
    Workers are told this level (``MPLOG_LEVEL``, the status channel's ``level`` answer).
    """
    loggers = config.get("loggers") or {}
    entries: dict[str, dict[str, Any]] = {"": config.get("root") or {}}
    entries.update({name: spec for name, spec in loggers.items() if isinstance(spec, dict) and name})
    handlers = config.get("handlers") or {}
    lowest = []
    for name in entries:
        chain = [name, *_configured_ancestors(name, entries)] if name else [""]
        own = [_level_of(entries[n].get("level"), root=not n) for n in chain]
        effective = next((level for level in own if level is not None), logging.WARNING)
        reached = []
        for link in chain:
            spec = entries[link]
            for handler in spec.get("handlers") or []:
                handler_spec = handlers.get(handler)
                level = _level_of(handler_spec.get("level")) if isinstance(handler_spec, dict) else None
                reached.append(logging.NOTSET if level is None else level)
            if not spec.get("propagate", True):
                break
        lowest.append(max(effective, min(reached)) if reached else effective)
    return max(min(lowest), logging.DEBUG)


def _configured_ancestors(name: str, entries: dict[str, dict[str, Any]]) -> list[str]:
    """The configured loggers above ``name``, nearest first, ending with the root ("")."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1) if ".".join(parts[:i]) in entries] + [""]


def _level_of(value: object, *, root: bool = False) -> int | None:
    """A configured level as a number; None for none, or for NOTSET below the root (it defers to the parent)."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        level: object = value
    else:
        level = logging.getLevelName(str(value).upper())
    if isinstance(level, int):
        return level if level or root else None
    return logging.DEBUG  # not a level dictConfig knows: it will say so; send everything meanwhile


_SENDER_LIMITS = frozenset(f.name for f in fields(SenderLimits))


def limits_for(runtime: dict[str, Any]) -> Limits:
    """Decoder limits from the ``mplog.limits`` table (its sender bounds are :func:`sender_limits_for`'s)."""
    table = {k: v for k, v in runtime.get("limits", {}).items() if k not in _SENDER_LIMITS}
    try:
        limits = replace(Limits(), **table)
    except TypeError:
        known = ", ".join(sorted([f.name for f in fields(Limits)] + list(_SENDER_LIMITS)))
        raise ConfigError(f"mplog.limits has an unknown key; known keys: {known}") from None
    _check_numbers("mplog.limits", table, Limits())
    return limits


def sender_limits_for(runtime: dict[str, Any]) -> SenderLimits:
    """The per-sender accounting bounds from ``mplog.limits`` (``max_senders``, ``max_seq_jump``)."""
    table = {k: v for k, v in runtime.get("limits", {}).items() if k in _SENDER_LIMITS}
    _check_numbers("mplog.limits", table, SenderLimits())
    return replace(SenderLimits(), **table)


def transport_options_for(runtime: dict[str, Any]) -> TransportOptions:
    """Socket options from the ``mplog.socket`` table and ``mplog.insecure``."""
    limits = limits_for(runtime)
    try:
        options = replace(
            TransportOptions(max_frame_bytes=limits.max_frame_bytes, insecure=bool(runtime.get("insecure", False))),
            **runtime.get("socket", {}),
        )
    except TypeError:
        known = ", ".join(f.name for f in fields(TransportOptions))
        raise ConfigError(f"mplog.socket has an unknown key; known keys: {known}") from None
    _check_numbers("mplog.socket", runtime.get("socket", {}), TransportOptions())
    curve = runtime.get("curve") or {}
    if curve:
        # Loaded and checked here (modes, an empty allow-list): CURVE fails closed, with the key named.
        security.server_keys(curve)
        options = replace(
            options,
            curve_secret_key=curve["server_secret_key"],
            curve_authorized_keys=str(curve.get("authorized_keys") or ""),
            curve_allow_any=bool(curve.get("allow_any", False)),
        )
    return options


def yield_seconds(runtime: dict[str, Any]) -> float:
    """How long the listener may hold frames for busy workers (``mplog.yield_to_workers``, mplog.listener.holding)."""
    if runtime.get("ack"):
        return 0.0
    value = runtime.get("yield_to_workers")
    return DEFAULT_YIELD_SECONDS if value is None else float(value)


def apply_nice(runtime: dict[str, Any]) -> None:
    """Lower the calling (listener) process's CPU priority by ``mplog.nice``, if set.

    On Linux niceness belongs to a thread and a new thread inherits its creator's: call
    this before the process starts any thread (ZeroMQ's I/O thread above all), so that
    every thread of the listener yields.
    """
    nice = runtime.get("nice") or 0
    if nice:
        os.nice(nice)


def _check_numbers(section: str, values: dict[str, Any], defaults: Any) -> None:
    """Each value must have the type of its default: a wrong type would only fail later, in the listener."""
    for key, value in values.items():
        default = getattr(defaults, key)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{section}.{key} must be true or false, got {value!r}")
        elif isinstance(default, int):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{section}.{key} must be a positive int, got {value!r}")
        elif isinstance(default, float) and (
            not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0
        ):
            raise ConfigError(f"{section}.{key} must be a number of seconds >= 0, got {value!r}")
