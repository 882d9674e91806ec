"""Check, without building them, that the handlers of a config can be built where it is checked.

``mplog check`` must catch what would stop ``mplog listen`` at start-up -- a handler
given an argument its class does not take (``maxBytes`` on a ``FileHandler``), a log file
in a directory that does not exist -- and must not create log files or open sockets
while doing so. So handlers are not built: each handler's arguments are bound to its
constructor's signature, as ``logging.config.dictConfig`` would pass them, and the
file of a file handler is checked with ``stat``, ``access`` and an unnamed file that
vanishes as it is closed (mplog.listener.write_errors), so that a read-only or full file
system is named as such. The exception: a
class that says building it opens nothing (``check_builds = True``: mplog's handlers that
connect or start a thread only at their first record) is built and closed, so that its
own checks of its options run.
"""

from __future__ import annotations

import errno
import inspect
import logging
import logging.config
import logging.handlers
import os
from collections.abc import Callable
from typing import Any

from mplog.exceptions import ConfigError
from mplog.handlers.queued import QueuedHandler
from mplog.listener.write_errors import cause_of, creation_error, open_error, space_error

__all__ = ["check_handlers"]

# Keys dictConfig consumes itself before it calls the handler's class or factory.
_CONSUMED = ("class", "()", "formatter", "level", "filters", ".")


def check_handlers(config: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` for the first handler that the listener could not build.

    Checks each handler's arguments against its class's (or factory's) signature and,
    for a ``logging.FileHandler`` (subclasses included), that its file can be opened by
    this user: the directory exists and is writable, the path is not a directory.

    Raises:
        ConfigError: naming ``handlers.NAME`` and the cause.
    """
    resolver = logging.config.BaseConfigurator({})
    for name, spec in (config.get("handlers") or {}).items():
        factory = _factory(resolver, spec)
        if factory is None:
            continue  # an ext:// object or something dictConfig reports itself
        arguments = {k: v for k, v in spec.items() if k not in _CONSUMED and k.isidentifier()}
        bound = _bind(name, factory, arguments)
        if bound is not None and isinstance(factory, type) and issubclass(factory, logging.FileHandler):
            _check_file(name, bound.get("filename"))
        if bound is not None and getattr(factory, "check_builds", False):
            _build_and_close(name, factory, arguments)
        if factory is QueuedHandler:  # it resolves its targets when the listener starts: check them here
            defined = config.get("handlers") or {}
            for target in arguments.get("handlers") or ():
                if isinstance(target, str) and target not in defined:
                    raise ConfigError(
                        f"handlers.{name}.handlers names {target!r}, which is not defined under 'handlers'; "
                        f"define it or fix the name (defined: {', '.join(sorted(defined))})"
                    )


def _factory(resolver: logging.config.BaseConfigurator, spec: dict[str, Any]) -> Callable[..., Any] | None:
    target: Any = spec.get("()", spec.get("class"))
    if callable(target):
        return target  # type: ignore[no-any-return]  # a factory object in a dict config
    if not isinstance(target, str) or target.startswith(("ext://", "cfg://")):
        return None
    try:
        found = resolver.resolve(target)
    except (ImportError, ValueError):
        return None  # mplog check names unimportable classes before this runs
    return found if callable(found) else None


def _bind(name: str, factory: Callable[..., Any], arguments: dict[str, Any]) -> dict[str, Any] | None:
    """The arguments as the constructor would receive them; None when its signature cannot be read."""
    if isinstance(factory, type) and issubclass(factory, logging.handlers.QueueHandler):
        return None  # dictConfig turns its queue, listener and handlers keys into objects first
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    try:
        return dict(signature.bind(**arguments).arguments)
    except TypeError as exc:
        if "stream" in arguments:  # dictConfig retries a StreamHandler's 'stream' as 'strm' (Python < 3.2 name)
            retry = dict(arguments)
            retry["strm"] = retry.pop("stream")
            try:
                return dict(signature.bind(**retry).arguments)
            except TypeError:
                pass
        what = getattr(factory, "__qualname__", repr(factory))
        raise ConfigError(
            f"handlers.{name}: {what} cannot be built with these arguments: {exc}; "
            f"remove or rename the argument (its arguments are: {_parameters(signature)})"
        ) from None


def _build_and_close(name: str, factory: Callable[..., Any], arguments: dict[str, Any]) -> None:
    """Build a handler whose class says building it opens nothing (``check_builds``), then close it.

    Its options are checked where it checks them, by its own code: a misspelt option, a
    value out of range (mplog's RFC5424Handler, RELPHandler, BatchingSMTPHandler, QueuedHandler).
    """
    try:
        handler = factory(**arguments)
    except (ConfigError, ValueError, TypeError) as exc:
        raise ConfigError(f"handlers.{name}: {exc}") from None
    handler.close()


def _parameters(signature: inspect.Signature) -> str:
    return ", ".join(p.name for p in signature.parameters.values() if p.kind is not p.VAR_POSITIONAL) or "none"


def _check_file(name: str, filename: Any) -> None:
    """A file handler's file must be openable for writing by this user; nothing is created.

    The cause is named from the errno (mplog.listener.write_errors): a read-only file
    system, a full one, a missing permission.
    """
    if not isinstance(filename, (str, os.PathLike)):
        return
    path = os.path.abspath(os.fspath(filename))
    where = f"handlers.{name}.filename {os.fspath(filename)!r}"
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise ConfigError(
            f"{where}: the directory {directory!r} does not exist; create it (the listener does not) or fix the path"
        )
    if os.path.isdir(path):
        raise ConfigError(f"{where} is a directory; name a file in it")
    if os.path.exists(path):
        error = open_error(path)
        if error is not None and error.errno in (errno.EACCES, errno.EPERM):
            raise ConfigError(f"{where} is not writable by this user; fix its permissions or choose another file")
    else:
        error = creation_error(directory)
    if error is None:
        error = space_error(directory)
    if error is not None:
        raise ConfigError(f"{where}: {cause_of(error, directory)}")
