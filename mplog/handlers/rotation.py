"""Rotating file handlers whose namer, rotator and gzip compression are set from the config.

``dictConfig`` cannot set a handler's ``namer`` or ``rotator`` to a function (its ``'.'``
key assigns plain values), so these subclasses of the stdlib handlers take them as
constructor arguments (``"ext://package.module.function"`` in a config). With
``compress = "gzip"``, each rotated file is renamed at once and compressed by a
background thread, so the listener keeps receiving while a large file compresses;
a rollover that comes while the previous file is still being compressed waits for it,
so two compressions never race over the shifting backup names.
"""

from __future__ import annotations

import datetime
import gzip
import logging.handlers
import os
import queue
import shutil
import threading
from collections.abc import Callable
from typing import Any

from mplog.exceptions import ConfigError

__all__ = ["Compressor", "RotatingFileHandler", "TimedRotatingFileHandler", "gzip_file", "gzip_namer"]

COMPRESSIONS = ("gzip",)


def gzip_namer(name: str) -> str:
    """The name of a rotated file once compressed."""
    return name + ".gz"


def gzip_file(source: str, dest: str, level: int = 6) -> None:
    """Compress ``source`` into ``dest`` (written under a temporary name, then renamed), then remove ``source``."""
    # A hidden partial name: the timed handler's backup count must not see it as one more backup.
    directory, name = os.path.split(dest)
    partial = os.path.join(directory, f".{name}.part")
    with open(source, "rb") as src, gzip.open(partial, "wb", compresslevel=level) as out:
        shutil.copyfileobj(src, out, 1024 * 1024)
    os.replace(partial, dest)
    os.remove(source)


class Compressor:
    """One background thread that compresses rotated files, one at a time.

    ``on_error`` is called (in the thread, inside the ``except`` block) when a file
    cannot be compressed; that file is left uncompressed under its pending name.
    """

    def __init__(self, level: int = 6, on_error: Callable[[str], None] | None = None) -> None:
        self.level = level
        self.on_error = on_error
        self.compressed = 0
        self._jobs: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._idle = threading.Event()
        self._idle.set()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, source: str, dest: str) -> None:
        with self._lock:
            self._idle.clear()
            self._jobs.put((source, dest))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mplog-gzip", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                gzip_file(job[0], job[1], self.level)
                self.compressed += 1
            except Exception:
                if self.on_error is not None:
                    self.on_error(job[0])
            finally:
                with self._lock:
                    if self._jobs.empty():
                        self._idle.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every submitted file is compressed; True if none is left."""
        return self._idle.wait(timeout)

    @property
    def busy(self) -> bool:
        return not self._idle.is_set()

    def stop(self, timeout: float | None = None) -> bool:
        """Finish the queued files (bounded by ``timeout``), then end the thread."""
        done = self.wait(timeout)
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._jobs.put(None)
        if thread is not None and done:
            thread.join(timeout)
        return done


def _callable(value: Any, where: str) -> Callable[..., Any] | None:
    if value is None or callable(value):
        return value  # type: ignore[no-any-return]  # a callable from dictConfig's ext:// resolution
    if isinstance(value, str):
        from logging.config import BaseConfigurator  # noqa: PLC0415  # only for dotted names

        try:
            resolved = BaseConfigurator({}).resolve(value.removeprefix("ext://"))
        except Exception as exc:
            raise ConfigError(f"{where} names {value!r}, which cannot be imported: {exc}") from None
        if callable(resolved):
            return resolved  # type: ignore[no-any-return]  # resolve() is untyped
    raise ConfigError(f"{where} must be a function or 'ext://module.function', got {value!r}")


class _Rotation:
    """What both rotating handlers share: namer, rotator and background compression."""

    baseFilename: str
    namer: Callable[[str], str] | None
    rotator: Callable[[str, str], None] | None

    def _check_rotation(self, namer: Any, rotator: Any, compress: str | None) -> tuple[Any, Any]:
        """Resolve and check the arguments before the file is opened (a bad one must not leak it)."""
        kind = type(self).__name__
        namer = _callable(namer, f"{kind} namer")
        rotator = _callable(rotator, f"{kind} rotator")
        if compress is not None:
            if compress not in COMPRESSIONS:
                raise ConfigError(
                    f"{kind} compress must be one of {', '.join(COMPRESSIONS)} or absent, got {compress!r}"
                )
            if rotator is not None:
                raise ConfigError(f"{kind}: give either compress or rotator, not both (compress sets the rotator)")
        return namer, rotator

    def _setup_rotation(
        self, namer: Any, rotator: Any, compress: str | None, compresslevel: int, compress_wait: float
    ) -> None:
        self.namer = namer
        self.rotator = rotator
        self.compress_wait = compress_wait
        self.compressor: Compressor | None = None
        if compress is None:
            return
        user_namer = self.namer
        self.namer = (lambda name: gzip_namer(user_namer(name))) if user_namer else gzip_namer
        self.compressor = Compressor(compresslevel, on_error=self._compress_failed)
        self.rotator = self._rotate_compressed

    def _rotate_compressed(self, source: str, dest: str) -> None:
        if not os.path.exists(source):
            return
        pending = dest.removesuffix(".gz") + ".pending"
        os.rename(source, pending)
        assert self.compressor is not None
        self.compressor.submit(pending, dest)

    def _compress_failed(self, source: str) -> None:
        handle_error = getattr(self, "handleError", None)
        if handle_error is not None:
            handle_error(logging.LogRecord("mplog.rotation", logging.ERROR, __file__, 0, "gzip %s", (source,), None))

    def _wait_for_compression(self) -> None:
        # Backup names shift at every rollover: the previous file must be in place first.
        if self.compressor is not None:
            self.compressor.wait(self.compress_wait)

    def _stop_compression(self) -> None:
        if self.compressor is not None:
            self.compressor.stop(self.compress_wait)


class RotatingFileHandler(_Rotation, logging.handlers.RotatingFileHandler):
    """``logging.handlers.RotatingFileHandler`` with ``namer``, ``rotator`` and ``compress`` arguments.

    Args:
        namer, rotator: functions, or ``"ext://module.function"``; as the stdlib attributes.
        compress: ``"gzip"`` to compress each rotated file in a background thread.
        compresslevel: gzip level (1 fastest .. 9 smallest).
        compress_wait: the longest a rollover or close() waits for a compression in progress.
    """

    def __init__(  # noqa: PLR0913  # the stdlib handler's positional arguments, plus keywords dictConfig can set
        self,
        filename: str,
        mode: str = "a",
        maxBytes: int = 0,
        backupCount: int = 0,
        encoding: str | None = None,
        delay: bool = False,
        errors: str | None = None,
        *,
        namer: Any = None,
        rotator: Any = None,
        compress: str | None = None,
        compresslevel: int = 6,
        compress_wait: float = 30.0,
    ) -> None:
        namer, rotator = self._check_rotation(namer, rotator, compress)
        super().__init__(filename, mode, maxBytes, backupCount, encoding, delay, errors)
        self._setup_rotation(namer, rotator, compress, compresslevel, compress_wait)

    def doRollover(self) -> None:
        self._wait_for_compression()
        super().doRollover()

    def close(self) -> None:
        super().close()
        self._stop_compression()


def _at_time(value: Any) -> datetime.time | None:
    if value is None or isinstance(value, datetime.time):
        return value
    if isinstance(value, str):
        try:
            return datetime.time.fromisoformat(value)
        except ValueError:
            pass
    raise ConfigError(f"TimedRotatingFileHandler atTime must be a time such as '02:30:00', got {value!r}")


class TimedRotatingFileHandler(_Rotation, logging.handlers.TimedRotatingFileHandler):
    """``logging.handlers.TimedRotatingFileHandler`` with ``namer``, ``rotator``, ``compress``.

    ``atTime`` may also be given as a string (``"HH:MM[:SS]"``), which a config file can hold.
    """

    def __init__(  # noqa: PLR0913, PLR0917  # the stdlib handler's positional arguments, plus keywords dictConfig can set
        self,
        filename: str,
        when: str = "h",
        interval: int = 1,
        backupCount: int = 0,
        encoding: str | None = None,
        delay: bool = False,
        utc: bool = False,
        atTime: Any = None,
        errors: str | None = None,
        *,
        namer: Any = None,
        rotator: Any = None,
        compress: str | None = None,
        compresslevel: int = 6,
        compress_wait: float = 30.0,
    ) -> None:
        at_time = _at_time(atTime)
        namer, rotator = self._check_rotation(namer, rotator, compress)
        super().__init__(filename, when, interval, backupCount, encoding, delay, utc, at_time, errors)
        self._setup_rotation(namer, rotator, compress, compresslevel, compress_wait)

    def doRollover(self) -> None:
        self._wait_for_compression()
        super().doRollover()

    def close(self) -> None:
        super().close()
        self._stop_compression()
