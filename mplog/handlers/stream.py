"""A stream handler whose stream is opened in the listener process, by a function the config names.

``dictConfig`` can hand a ``StreamHandler`` only an object that exists when the config
is applied (``ext://sys.stdout``). :class:`FactoryStreamHandler` takes a function
instead (``"ext://package.module.open_stream"``) and sets its stream with ``setStream``
on the first record -- in the listener, after start-up -- and again after
:meth:`FactoryStreamHandler.reopen`. Streams it opened it also closes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import IO, Any, ClassVar

from mplog.exceptions import ConfigError

__all__ = ["FactoryStreamHandler"]


class FactoryStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]  # the stream type is the factory's
    """Writes to the stream ``factory(**kwargs)`` returns, opened at the first record.

    Args:
        factory: a function returning a text stream, or ``"ext://module.function"``.
        kwargs: keyword arguments for ``factory``.
        close_stream: close the stream when the handler closes (default True).
    """

    # Set by a listener that continues an earlier one (mplog.listener.continuation): the first stream
    # opened with a 'mode' argument opens for appending ('w' -> 'a'), never truncating.
    append_on_first_open: ClassVar[bool] = False

    def __init__(
        self, factory: Callable[..., IO[str]] | str, kwargs: dict[str, Any] | None = None, close_stream: bool = True
    ) -> None:
        super().__init__()
        if isinstance(factory, str):
            from logging.config import BaseConfigurator  # noqa: PLC0415  # only for a dotted name

            try:
                factory = BaseConfigurator({}).resolve(factory.removeprefix("ext://"))
            except Exception as exc:
                raise ConfigError(f"FactoryStreamHandler factory {factory!r} cannot be imported: {exc}") from None
        if not callable(factory):
            raise ConfigError(f"FactoryStreamHandler factory must be callable, got {factory!r}")
        self.factory = factory
        self.kwargs = dict(kwargs or {})
        self.close_stream = close_stream
        self.stream = None
        self.opened = 0  # streams opened so far

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream is None:
            try:
                self.reopen()
            except Exception:
                self.handleError(record)
                return
        super().emit(record)

    def reopen(self) -> None:
        """Open a fresh stream with the factory and switch to it (closing the old one if ours)."""
        kwargs = self.kwargs
        mode = kwargs.get("mode")
        if not self.opened and self.append_on_first_open and isinstance(mode, str):
            kwargs = {**kwargs, "mode": mode.replace("w", "a")}
        stream = self.factory(**kwargs)
        self.opened += 1
        old = self.setStream(stream)
        if old is not None and self.close_stream:
            old.close()

    def close(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            stream, self.stream = self.stream, None
            try:
                if stream is not None:
                    stream.flush()
                    if self.close_stream:
                        stream.close()
            finally:
                super().close()
