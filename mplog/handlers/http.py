"""``HTTPHandler`` whose credentials can come from a config file, and whose server's refusals count.

The stdlib handler formats its credentials with ``"%s:%s" % credentials``, which needs a
tuple; TOML, JSON and YAML only have lists, and ``dictConfig`` does not convert this
argument (it does for ``SMTPHandler.mailhost`` and ``SysLogHandler.address``), so a file
config with credentials fails at the first record. This subclass accepts a list.

The stdlib handler also never looks at the answer: a record the server refused (a 401 for
wrong credentials, a 500 or 503 while it is down) counted as delivered. Here an answer
other than 2xx is an error of the record's emit (``handleError``), which the listener
counts in ``handler_errors`` (an outsider lost 514 of 900 records to 500/503 answers,
none counted).
"""

from __future__ import annotations

import logging.handlers
import ssl
from typing import Any

__all__ = ["HTTPHandler", "HTTPRefused"]


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
        answer = connection.getresponse

        def checked_response() -> Any:  # emit() reads the answer with this and ignores it
            response = answer()
            if not 200 <= response.status < 300:
                raise HTTPRefused(f"{self.method} {host}{self.url} answered {response.status} {response.reason}")
            return response

        connection.getresponse = checked_response  # type: ignore[method-assign]  # this connection only
        return connection


class HTTPRefused(OSError):
    """The server answered a record's request with a status other than 2xx: the record was not taken."""
