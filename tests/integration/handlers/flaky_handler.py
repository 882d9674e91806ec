"""A handler that lets an exception escape from every tenth emit (imported by the listener process)."""

from __future__ import annotations

import logging


class EveryTenthFails(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if self.count % 10 == 0:
            raise RuntimeError(f"record {self.count} refused on purpose")
