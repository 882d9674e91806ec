"""Which logger handles a received record, without creating a logger for every name a sender makes up.

``logging.getLogger(name)`` registers a ``Logger`` for good (and placeholders for its
parents), so a sender that invents a new logger name per record grew the listener by
about 1 KB per name, never freed (200,000 names: +216 MB). A logger the listener's
config does not name is an *unconfigured* logger: level NOTSET, no handlers, no
filters, not disabled, propagating. Handling a record through such a logger does
exactly what handling it through its nearest existing ancestor's handlers does, so
:class:`LoggerLookup` hands an unknown name to a stand-in that is never registered:
a ``Logger`` whose ``parent`` is the ancestor ``logging.getLogger`` would have given
it (the same walk over dotted prefixes as ``logging.Manager._fixupParents``,
placeholders skipped), and whose level test is the one a fresh logger makes.
``record.name`` is the name the sender sent either way, so a formatter or a handler's
filter sees no difference (``tests/unit/test_logger_lookup.py`` compares the bytes
written both ways).

Stand-ins are kept in a bounded map, emptied whenever the set of registered loggers
changes or the map is full. A custom logger class (``logging.setLoggerClass``) keeps
``logging.getLogger``: its behaviour cannot be assumed.
"""

from __future__ import annotations

import logging

__all__ = ["MAX_CACHED", "LoggerLookup"]

MAX_CACHED = 2048  # names remembered; past it the map starts again (a lookup costs a few dict reads)

_Check = tuple[tuple[str, object], ...]  # (dotted prefix, the non-Logger entry it had) that must not change


class _Unregistered(logging.Logger):
    """A logger ``logging.getLogger`` would have created unconfigured, never registered.

    ``handle`` and ``callHandlers`` are Logger's own (the dispatcher's fast path takes
    it like any other). Its level test is a fresh logger's, made against its parent
    on every call: ``logging.Manager._clear_cache`` (run by ``setLevel`` and
    ``logging.disable``) only clears registered loggers' caches.
    """

    def isEnabledFor(self, level: int) -> bool:
        parent = self.parent
        assert parent is not None
        if not parent.disabled:  # then a fresh child and its parent agree, and the parent's answer is cached
            return parent.isEnabledFor(level)
        # disable_existing_loggers disabled the parent, which a new child does not inherit.
        return bool(self.manager.disable < level and level >= parent.getEffectiveLevel())


def _plain_logger_class() -> bool:
    manager = logging.Logger.manager
    return (manager.loggerClass or logging.getLoggerClass()) is logging.Logger


class LoggerLookup:
    """Maps a record's logger name to the logger that handles it, creating none.

    Not thread-safe: the receive loop's own.
    """

    def __init__(self) -> None:
        self._cache: dict[str, tuple[logging.Logger, _Check]] = {}
        self._registered = -1

    def refresh(self) -> None:
        """Forget stand-ins once a logger was registered since the last call (call once per frame)."""
        registered = len(logging.Logger.manager.loggerDict)
        if registered != self._registered or len(self._cache) >= MAX_CACHED:
            self._cache.clear()
            self._registered = registered

    def __len__(self) -> int:
        return len(self._cache)

    def get(self, name: str) -> logging.Logger:
        """The registered logger named ``name``, else a stand-in under its nearest registered ancestor."""
        entry = self._cache.get(name)
        if entry is not None:
            logger, check = entry
            if not check or _unchanged(check):
                return logger
        logger, check = self._resolve(name)
        if len(self._cache) < MAX_CACHED:
            self._cache[name] = (logger, check)
        return logger

    def _resolve(self, name: str) -> tuple[logging.Logger, _Check]:
        root = logging.getLogger()
        if not name or name == root.name:
            return root, ()
        loggers = logging.Logger.manager.loggerDict
        found = loggers.get(name)
        if isinstance(found, logging.Logger):
            return found, ()
        if not _plain_logger_class():
            return logging.getLogger(name), ()
        check: list[tuple[str, object]] = []
        if found is not None:  # a placeholder: a child of this name is registered
            check.append((name, found))
        parent: logging.Logger = root
        i = name.rfind(".")
        while i > 0:  # logging.Manager._fixupParents' walk
            prefix = name[:i]
            entry = loggers.get(prefix)
            if isinstance(entry, logging.Logger):
                parent = entry
                break
            if entry is not None:
                check.append((prefix, entry))
            i = name.rfind(".", 0, i - 1)
        stand_in = _Unregistered(name)
        stand_in.parent = parent
        return stand_in, tuple(check)


def _unchanged(check: _Check) -> bool:
    """True while every placeholder passed on the way to the parent is still one (not turned into a Logger)."""
    loggers = logging.Logger.manager.loggerDict
    return all(loggers.get(prefix) is entry for prefix, entry in check)
