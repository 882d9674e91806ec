"""Turn a dict or a .toml/.json/.yaml file into a dictConfig dict plus mplog's runtime settings.

The file is the standard ``logging.config.dictConfig`` schema with one optional extra
section, ``mplog``, for the runtime itself. Every error names the key and the fix.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mplog.dictconfig import check_level, validate_dictconfig
from mplog.exceptions import ConfigError
from mplog.listener.metrics import parse_address
from mplog.listener.settings import sender_limits_for, transport_options_for
from mplog.transports import check_endpoint
from mplog.worker.options import WorkerOptions

__all__ = [
    "DEFAULT_CONFIG",
    "RuntimeSettings",
    "load_config",
]

DEFAULT_FORMAT = "%(asctime)s %(processName)s[%(process)d] %(levelname)s %(name)s: %(message)s"
DEFAULT_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"mplog_default": {"format": DEFAULT_FORMAT}},
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "mplog_default"}
    },
    "root": {"level": "INFO", "handlers": ["stderr"]},
}

_RUNTIME_KEYS = {
    "endpoint",
    "transport",
    "insecure",
    "limits",
    "socket",
    "curve",
    "worker",
    "allow_pickle_forwarding",
    "ack",
    "state_dir",
    "control",
    "nice",
    "yield_to_workers",
    "metrics",
}


@dataclass(frozen=True)
class RuntimeSettings:
    """The ``mplog`` section: where the listener binds and the limits it enforces."""

    endpoint: str | None = None
    transport: str = "zmq"
    insecure: bool = False
    limits: dict[str, Any] = field(default_factory=dict)
    socket: dict[str, Any] = field(default_factory=dict)
    curve: dict[str, Any] = field(default_factory=dict)
    worker: dict[str, Any] = field(default_factory=dict)
    allow_pickle_forwarding: bool = False  # permit logging.handlers.SocketHandler/DatagramHandler (they send pickles)
    ack: bool = False  # acknowledged delivery (mplog.ack): workers resend until the listener acknowledges
    state_dir: str | None = None  # where the listener keeps its stats checkpoint and acknowledged marks
    control: str | None = None  # the status channel `mplog status` asks (mplog.control); default: next to endpoint
    nice: int = 0  # added to the listener process's niceness: 1-19 let busy workers' CPU come first
    # The longest the listener holds frames while this host's workers keep every CPU busy
    # (mplog.listener.holding); None: 0, never (opt-in since issue 15; never under mplog.ack).
    yield_to_workers: float | None = None
    metrics: str | None = None  # "HOST:PORT" of a Prometheus endpoint on the listener (mplog.metrics); None: none

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _read_file(path: Path) -> dict[str, Any]:
    suffix = path.suffix.lower()
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from exc
    try:
        if suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib  # noqa: PLC0415  # only needed for .toml files
            else:  # pragma: no cover - exercised on Python 3.10 only
                import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415  # 3.10 only
            data: Any = tomllib.loads(text.decode("utf-8"))
        elif suffix == ".json":
            data = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml  # noqa: PLC0415  # optional: only .yaml configs need PyYAML
            except ImportError:
                raise ConfigError(
                    f"{str(path)!r} is YAML but PyYAML is not installed; pip install 'mplog[yaml]' "
                    "or use a .toml or .json file"
                ) from None
            data = yaml.safe_load(text)
        else:
            raise ConfigError(f"config file {str(path)!r} must end in .toml, .json, .yaml or .yml")
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid {suffix[1:].upper()}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a table/object at the top level")
    return data


def _runtime(section: Any) -> RuntimeSettings:
    """The ``mplog`` table as RuntimeSettings, every key checked (in this order: the first bad one is named)."""
    if section is None:
        return RuntimeSettings()
    _check_runtime_keys(section)
    settings = RuntimeSettings(**section)
    _check_switches(settings)
    _check_process_settings(settings)
    _check_places(settings)
    _check_tables(settings)
    return settings


def _check_runtime_keys(section: Any) -> None:
    """The ``mplog`` table is a table of known keys, and not an empty ``curve`` table."""
    if not isinstance(section, dict):
        raise ConfigError(f"mplog must be a table of runtime settings, got {type(section).__name__}")
    unknown = set(section) - _RUNTIME_KEYS
    if unknown:
        raise ConfigError(f"unknown key mplog.{sorted(unknown)[0]}; known keys: {', '.join(sorted(_RUNTIME_KEYS))}")
    if section.get("curve", None) == {}:
        # An empty table is a CURVE setting with every key missing: fail closed, never plaintext.
        raise ConfigError(
            "mplog.curve is empty, so the listener would accept plaintext: set mplog.curve.server_secret_key "
            "(a NAME.key_secret file from `mplog keygen DIR`) and authorized_keys (a directory of client NAME.key "
            "files) or allow_any = true; or remove the mplog.curve table to run without CURVE"
        )


def _check_switches(settings: RuntimeSettings) -> None:
    """``transport`` and the true-or-false keys (``insecure``, ``allow_pickle_forwarding``, ``ack``)."""
    if settings.transport not in ("zmq", "multiprocessing"):
        raise ConfigError(f"mplog.transport must be 'zmq' or 'multiprocessing', got {settings.transport!r}")
    if not isinstance(settings.insecure, bool):
        raise ConfigError(f"mplog.insecure must be true or false, got {settings.insecure!r}")
    if not isinstance(settings.allow_pickle_forwarding, bool):
        value = settings.allow_pickle_forwarding
        raise ConfigError(f"mplog.allow_pickle_forwarding must be true or false, got {value!r}")
    if not isinstance(settings.ack, bool):
        raise ConfigError(f"mplog.ack must be true or false, got {settings.ack!r}")
    if settings.ack and settings.transport != "zmq":
        raise ConfigError("mplog.ack needs the ZeroMQ transport; remove mplog.transport = 'multiprocessing'")


def _check_process_settings(settings: RuntimeSettings) -> None:
    """How the listener process runs: ``control``, ``nice``, ``yield_to_workers``."""
    if settings.control is not None and (
        not isinstance(settings.control, str) or not settings.control.startswith(("ipc://", "tcp://"))
    ):
        raise ConfigError(f"mplog.control must be an ipc:// or tcp:// endpoint, got {settings.control!r}")
    if type(settings.nice) is not int or not 0 <= settings.nice <= 19:
        raise ConfigError(f"mplog.nice must be an int from 0 (the default) to 19, got {settings.nice!r}")
    _check_yield(settings)


def _check_places(settings: RuntimeSettings) -> None:
    """Where the listener listens and keeps its state: ``metrics``, ``state_dir``, ``endpoint``."""
    if settings.metrics is not None:
        parse_address(settings.metrics, insecure=settings.insecure)
    if settings.state_dir is not None and not isinstance(settings.state_dir, str):
        raise ConfigError(f"mplog.state_dir must be a directory path, got {settings.state_dir!r}")
    if settings.endpoint is not None:
        if not isinstance(settings.endpoint, str):
            raise ConfigError(
                f"mplog.endpoint must be a string such as 'tcp://127.0.0.1:5140', got {settings.endpoint!r}"
            )
        check_endpoint(settings.endpoint, "mplog.endpoint")  # a known scheme, a port, an ipc path that fits


def _check_tables(settings: RuntimeSettings) -> None:
    """The sub-tables ``limits``, ``socket``, ``curve``, ``worker``, and every option in them."""
    for name in ("limits", "socket", "curve", "worker"):
        if not isinstance(getattr(settings, name), dict):
            raise ConfigError(f"mplog.{name} must be a table, got {getattr(settings, name)!r}")
    transport_options_for(settings.as_dict())  # also checks mplog.limits
    sender_limits_for(settings.as_dict())
    _check_worker(settings.worker)


def _check_yield(settings: RuntimeSettings) -> None:
    value = settings.yield_to_workers
    if value is None:
        return
    if type(value) not in (int, float) or not 0 <= value <= 60:
        raise ConfigError(
            f"mplog.yield_to_workers must be a number of seconds from 0 (never hold) to 60, got {value!r}"
        )
    if value and settings.ack:
        raise ConfigError(
            "mplog.yield_to_workers does not apply with mplog.ack (acknowledgements are never held back); "
            "remove it or set it to 0"
        )


def _check_worker(section: dict[str, Any]) -> None:
    """``mplog.worker`` holds setup_worker() options; an unknown key or bad value is named here."""
    if section.get("level") is not None:
        check_level("mplog.worker.level", section["level"])
    try:
        WorkerOptions.from_kwargs(**section)
    except ConfigError as exc:
        raise ConfigError(f"mplog.worker: {exc}") from None


def load_config(config: dict[str, Any] | str | os.PathLike[str] | None) -> tuple[dict[str, Any], RuntimeSettings]:
    """Return ``(dictconfig, runtime)`` after checking every key that can be checked early.

    Raises:
        ConfigError: naming the bad key and its fix.
    """
    if config is None:
        return copy.deepcopy(DEFAULT_CONFIG), RuntimeSettings()
    if isinstance(config, (str, os.PathLike)):
        data = _read_file(Path(config))
    elif isinstance(config, dict):
        try:
            data = copy.deepcopy(config)
        except Exception as exc:  # a stream, lock or socket object: it could never reach the listener anyway
            raise ConfigError(
                f"the config must hold only plain values (strings, numbers, lists, tables) because it is applied "
                f"in the listener process; use 'ext://module.name' or a '()' factory path for objects "
                f"({type(exc).__name__}: {exc})"
            ) from None
    else:
        raise ConfigError(f"config must be a dict, a file path or None, got {type(config).__name__}")
    runtime = _runtime(data.pop("mplog", None))
    data.setdefault("version", 1)
    data.setdefault("disable_existing_loggers", False)
    validate_dictconfig(data, allow_pickle_forwarding=runtime.allow_pickle_forwarding)
    return data, runtime
