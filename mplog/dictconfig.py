"""Check the ``logging.config.dictConfig`` part of a config before the listener applies it.

Everything that can be known without importing or building anything: the schema's
shape, levels, references between entries, formats against their style, keys that
dictConfig takes only on newer Pythons, and paths that the listener process cannot
resolve (``__main__``). Every error names the key and the fix.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
from typing import Any, Literal

from mplog.exceptions import ConfigError

__all__ = ["check_level", "validate_dictconfig"]

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


def check_level(where: str, value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool):
        return
    if isinstance(value, str) and isinstance(logging.getLevelName(value.upper()), int):
        return
    raise ConfigError(f"{where} must be a level name such as 'INFO' or a number, got {value!r}")


def _level_in_place(where: str, entry: dict[str, Any], key: str = "level") -> None:
    """Check ``entry[key]``; a name in another case (``"info"``) becomes the upper-case name logging knows."""
    check_level(f"{where}.{key}", entry[key])
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


def validate_dictconfig(config: dict[str, Any], *, allow_pickle_forwarding: bool = False) -> None:
    """Check the dictConfig part of a config; level names in another case become upper case.

    Raises:
        ConfigError: naming the first bad key and its fix.
    """
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
    _check_shared_files(handlers)
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
        check_level(f"handlers.{name}.flushLevel", handler["flushLevel"])
        handler["flushLevel"] = logging.getLevelName(handler["flushLevel"].upper())


def _check_shared_files(handlers: dict[str, Any]) -> None:
    """Refuse two handlers on one file when one of them rotates it.

    Each rotating handler renames the file away under the other, which goes on writing to the
    renamed file (or rotates it again): records end in a backup, out of place, and are deleted
    with it sooner than ``backupCount`` says. Two plain handlers on one file (each line
    appended whole) are let be.
    """
    writers: dict[str, list[str]] = {}
    for name, handler in handlers.items():
        filename = handler.get("filename")
        if isinstance(filename, str) and filename:
            writers.setdefault(os.path.realpath(os.path.expanduser(filename)), []).append(name)
    for path, names in writers.items():
        rotating = [n for n in names if _rotates(handlers[n])]
        if len(names) > 1 and rotating:
            others = [n for n in names if n != rotating[0]]
            raise ConfigError(
                f"handlers.{rotating[0]} and handlers.{others[0]} both write {path!r}, and handlers.{rotating[0]} "
                "rotates it: each rollover renames the file away from the other handler, which goes on writing to "
                "the renamed file (a backup), so its records land out of place and are deleted with the backups "
                "sooner than backupCount says; give each handler its own filename, or use one handler"
            )


def _rotates(handler: dict[str, Any]) -> bool:
    return _is_class(handler.get("class", handler.get("()")), logging.handlers.BaseRotatingHandler)


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
        raise ConfigError(_main_module_message(where, value))


def _main_module_message(where: str, path: str) -> str:
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
