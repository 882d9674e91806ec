"""File handlers that truncate by default, built by the listener process from a '()' factory."""

from __future__ import annotations

import logging


class TruncatingFileHandler(logging.FileHandler):
    """A subclass whose default mode is 'w' (no mode in the config)."""

    def __init__(self, filename: str, mode: str = "w", encoding: str | None = None, delay: bool = False) -> None:
        super().__init__(filename, mode, encoding, delay)


def truncating_file_handler(filename: str) -> logging.FileHandler:
    """A factory function that opens its file with mode 'w'."""
    return logging.FileHandler(filename, mode="w", encoding="utf-8")
