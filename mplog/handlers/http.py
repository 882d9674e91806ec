"""``HTTPHandler`` whose credentials can come from a config file.

The stdlib handler formats its credentials with ``"%s:%s" % credentials``, which needs a
tuple; TOML, JSON and YAML only have lists, and ``dictConfig`` does not convert this
argument (it does for ``SMTPHandler.mailhost`` and ``SysLogHandler.address``), so a file
config with credentials fails at the first record. This subclass accepts a list.
"""

from __future__ import annotations

import logging.handlers
import ssl
from typing import Any

__all__ = ["HTTPHandler"]


class HTTPHandler(logging.handlers.HTTPHandler):
    """``logging.handlers.HTTPHandler`` taking ``credentials`` as ``[user, password]`` too."""

    def __init__(  # mirrors the stdlib handler's positional arguments
        self,
        host: str,
        url: str,
        method: str = "GET",
        secure: bool = False,
        credentials: tuple[str, str] | list[str] | None = None,
        context: ssl.SSLContext | None = None,
        timeout: float | None = None,
    ) -> None:
        pair: Any = tuple(credentials) if credentials is not None else None
        super().__init__(host, url, method, secure, pair, context)
        self.timeout = timeout

    def getConnection(self, host: str, secure: bool) -> Any:
        connection = super().getConnection(host, secure)
        if self.timeout is not None:
            connection.timeout = self.timeout
        return connection
