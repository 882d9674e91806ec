"""Turn a dict or a .toml/.json/.yaml file into a dictConfig dict plus mplog's runtime settings.

The file is the standard ``logging.config.dictConfig`` schema with one optional extra
section, ``mplog``, for the runtime itself. Every error names the key and the fix.
"""

from __future__ import annotations

import copy
import json
import logging
import logging.handlers
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

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

_DICTCONFIG_KEYS = {
    "version",
    "formatters",
    "filters",
    "handlers",
    "loggers",
    "root",
    "incremental",
    "disable_existing_loggers",
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


def _check_level(where: str, value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool):
        return
    if isinstance(value, str) and isinstance(logging.getLevelName(value.upper()), int):
        return
    raise ConfigError(f"{where} must be a level name such as 'INFO' or a number, got {value!r}")


def _level_in_place(where: str, entry: dict[str, Any], key: str = "level") -> None:
    """Check ``entry[key]``; a name in another case (``"info"``) becomes the upper-case name logging knows."""
    _check_level(f"{where}.{key}", entry[key])
    if isinstance(entry[key], str):
        entry[key] = entry[key].upper()


def _check_section(config: dict[str, Any], name: str) -> dict[str, Any]:
    section = config.get(name, {})
    if not isinstance(section, dict):
        raise ConfigError(f"{name} must be a table of named entries, got {type(section).__name__}")
    for key, value in section.items():
        if not isinstance(value, dict):
            raise ConfigError(f"{name}.{key} must be a table, got {type(value).__name__}")
    return section


def _check_logger(where: str, logger: dict[str, Any], handlers: dict[str, Any], filters: dict[str, Any]) -> None:
    if "level" in logger:
        _level_in_place(where, logger)
    for key in ("handlers", "filters"):
        names = logger.get(key, [])
        if not isinstance(names, list):
            raise ConfigError(f"{where}.{key} must be a list of names, got {names!r}")
        known = handlers if key == "handlers" else filters
        for item in names:
            if item not in known:
                raise ConfigError(f"{where}.{key} names {item!r}, which is not defined under '{key}'")


def _validate(config: dict[str, Any], *, allow_pickle_forwarding: bool = False) -> None:
    unknown = set(config) - _DICTCONFIG_KEYS
    if unknown:
        raise ConfigError(
            f"unknown top-level key {sorted(unknown)[0]!r}; dictConfig keys are {', '.join(sorted(_DICTCONFIG_KEYS))}"
            " (runtime settings go under 'mplog')"
        )
    if config.get("version") != 1:
        raise ConfigError(f"version must be 1 (the dictConfig schema version), got {config.get('version')!r}")
    _check_switches_of_dictconfig(config)
    formatters = _check_section(config, "formatters")
    filters = _check_section(config, "filters")
    handlers = _check_section(config, "handlers")
    for name, formatter in formatters.items():
        _check_formatter(name, formatter)
    for name, handler in handlers.items():
        _check_handler(name, handler, formatters, filters, allow_pickle_forwarding=allow_pickle_forwarding)
        _check_handler_references(name, handler, handlers)
    for section in ("formatters", "filters", "handlers"):
        _check_factory_paths(section, config.get(section))
    for name, logger in _check_section(config, "loggers").items():
        _check_logger(f"loggers.{name}", logger, handlers, filters)
    root = config.get("root", {})
    if not isinstance(root, dict):
        raise ConfigError(f"root must be a table, got {type(root).__name__}")
    _check_logger("root", root, handlers, filters)
    try:
        json.dumps(config)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"the config must hold only plain values (strings, numbers, lists, tables) because it is applied "
            f"in the listener process; use 'ext://module.name' or a '()' factory path for objects ({exc})"
        ) from None


def _check_switches_of_dictconfig(config: dict[str, Any]) -> None:
    """``disable_existing_loggers`` is true or false; ``incremental`` is false (the listener configures once)."""
    if not isinstance(config["disable_existing_loggers"], bool):
        value = config["disable_existing_loggers"]
        raise ConfigError(f"disable_existing_loggers must be true or false, got {value!r}")
    incremental = config.get("incremental", False)
    if not isinstance(incremental, bool):
        raise ConfigError(f"incremental must be true or false, got {incremental!r}")
    if incremental:
        # dictConfig then only changes the levels of handlers an earlier call built; the
        # listener process applies its config once, to a logging that has none.
        raise ConfigError(
            "incremental = true changes handlers an earlier configuration built, but the listener process applies "
            "its config once, from nothing; remove incremental (to change a running listener's config, restart it)"
        )


_Style = Literal["%", "{", "$"]
_STYLE_FIELDS: dict[_Style, str] = {"%": "%(message)s", "{": "{message}", "$": "${message}"}


def _check_formatter(name: str, formatter: dict[str, Any]) -> None:
    """A ``logging.Formatter``'s format must be written in its style, checked as dictConfig will build it."""
    if "()" in formatter or formatter.get("class", "logging.Formatter") != "logging.Formatter":
        return  # another class reads its arguments its own way, when the listener builds it
    style = formatter.get("style", "%")
    if style not in _STYLE_FIELDS:
        raise ConfigError(f"formatters.{name}.style must be '%', '{{' or '$', got {style!r}")
    fmt, datefmt = formatter.get("format"), formatter.get("datefmt")
    if fmt is not None and not isinstance(fmt, str):
        raise ConfigError(f"formatters.{name}.format must be a string, got {fmt!r}")
    if datefmt is not None and not isinstance(datefmt, str):
        raise ConfigError(f"formatters.{name}.datefmt must be a string, got {datefmt!r}")
    try:
        logging.Formatter(fmt, datefmt, style, validate=formatter.get("validate", True) is not False)
    except ValueError as exc:
        written_in = [other for other in _STYLE_FIELDS if other != style and _fits_style(fmt, other)]
        fix = (
            f"it is written in the {written_in[0]!r} style: set formatters.{name}.style = {written_in[0]!r}"
            if written_in
            else f"write its fields as {_STYLE_FIELDS[style]} (style {style!r})"
        )
        raise ConfigError(f"formatters.{name}.format {fmt!r} does not fit style {style!r} ({exc}); {fix}") from None


def _fits_style(fmt: str | None, style: _Style) -> bool:
    try:
        logging.Formatter(fmt, None, style, validate=True)
    except ValueError:
        return False
    return True


def _check_handler(
    name: str,
    handler: dict[str, Any],
    formatters: dict[str, Any],
    filters: dict[str, Any],
    *,
    allow_pickle_forwarding: bool,
) -> None:
    """Check ``handlers.<name>``: its class, level, formatter and filters; a ``flushLevel`` name becomes its number."""
    if "class" not in handler and "()" not in handler:
        raise ConfigError(f"handlers.{name} needs a 'class' (e.g. 'logging.FileHandler') or a '()' factory")
    if "level" in handler:
        _level_in_place(f"handlers.{name}", handler)
    formatter = handler.get("formatter")
    if formatter is not None and formatter not in formatters:
        raise ConfigError(f"handlers.{name}.formatter names {formatter!r}, which is not defined under 'formatters'")
    handler_filters = handler.get("filters", [])
    if not isinstance(handler_filters, list):
        raise ConfigError(f"handlers.{name}.filters must be a list of names, got {handler_filters!r}")
    for item in handler_filters:
        if isinstance(item, str) and item not in filters:
            raise ConfigError(f"handlers.{name}.filters names {item!r}, which is not defined under 'filters'")
    _check_handler_class(name, handler, allow_pickle_forwarding=allow_pickle_forwarding)
    if isinstance(handler.get("flushLevel"), str):
        # MemoryHandler compares flushLevel with numbers; dictConfig converts a name only from 3.13 on.
        _check_level(f"handlers.{name}.flushLevel", handler["flushLevel"])
        handler["flushLevel"] = logging.getLevelName(handler["flushLevel"].upper())


def _is_class(path: Any, base: type) -> bool:
    """True when ``path`` names ``base`` or a subclass of it, in a module already imported (nothing is imported)."""
    if not isinstance(path, str):
        return False
    module, _, attr = path.removeprefix("ext://").rpartition(".")
    found = getattr(sys.modules.get(module), attr, None)
    return isinstance(found, type) and issubclass(found, base)


def _sends_pickles(path: Any) -> bool:
    """True for logging.handlers.SocketHandler, DatagramHandler and subclasses already imported."""
    return _is_class(path, logging.handlers.SocketHandler)


def _check_handler_references(name: str, handler: dict[str, Any], handlers: dict[str, Any]) -> None:
    """What dictConfig resolves by name or only from 3.12 on: a MemoryHandler's target, a QueueHandler's keys."""
    cls = handler.get("class")
    target = handler.get("target")
    if _is_class(cls, logging.handlers.MemoryHandler) and isinstance(target, str) and target not in handlers:
        raise ConfigError(
            f"handlers.{name}.target names {target!r}, which is not defined under 'handlers'; "
            f"define it or fix the name (defined: {', '.join(sorted(handlers))})"
        )
    if sys.version_info < (3, 12) and _is_class(cls, logging.handlers.QueueHandler):
        # Before 3.12 dictConfig passes these on to QueueHandler(), which takes none of them.
        for key in ("listener", "handlers"):
            if key in handler:
                raise ConfigError(
                    f"handlers.{name}.{key}: a QueueHandler's {key!r} key needs Python 3.12 or later (this is Python "
                    f"{sys.version_info.major}.{sys.version_info.minor}); remove it, or use "
                    "mplog.handlers.QueuedHandler, whose 'handlers' works on every Python"
                )
        if isinstance(handler.get("queue"), dict):
            raise ConfigError(
                f"handlers.{name}.queue: a table for a QueueHandler's queue needs Python 3.12 or later; "
                "name a queue object with 'ext://module.name' instead"
            )


def _check_factory_paths(where: str, value: Any) -> None:
    """No class, factory or ``ext://`` object named in ``__main__``: in the listener it is not the user's script."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_factory_paths(f"{where}.{key}" if where else str(key), item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_factory_paths(f"{where}[{index}]", item)
    elif isinstance(value, str) and value.removeprefix("ext://").startswith("__main__."):
        raise ConfigError(main_module_message(where, value))


def main_module_message(where: str, path: str) -> str:
    """Why ``__main__.Name`` cannot be found by the listener, and where to put ``Name`` instead."""
    attr = path.removeprefix("ext://").removeprefix("__main__.")
    return (
        f"{where} names {path!r}, but the config is applied in the listener process, where __main__ is not your "
        f"script; put {attr} in a module the listener can import (one on its sys.path, e.g. myapp/logfilters.py) "
        f"and name it by that module ('myapp.logfilters.{attr}')"
    )


def _check_handler_class(name: str, handler: dict[str, Any], *, allow_pickle_forwarding: bool = False) -> None:
    cls = handler.get("class", "")
    if not allow_pickle_forwarding and (_sends_pickles(cls) or _sends_pickles(handler.get("()"))):
        raise ConfigError(
            f"handlers.{name}: {cls or handler.get('()')} sends pickled records, which the receiving end must "
            "unpickle (unsafe with any peer it does not fully trust); use mplog.handlers.ForwardHandler to forward "
            "msgpack frames to another mplog listener, or set mplog.allow_pickle_forwarding = true to send "
            "pickles anyway"
        )
    if isinstance(cls, str) and cls.endswith("NTEventLogHandler") and sys.platform != "win32":
        raise ConfigError(
            f"handlers.{name}: NTEventLogHandler writes to the Windows event log and works only on Windows; "
            "use logging.handlers.SysLogHandler on this system"
        )


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
        _check_level("mplog.worker.level", section["level"])
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
    _validate(data, allow_pickle_forwarding=runtime.allow_pickle_forwarding)
    return data, runtime
