"""mplog: a listener process owning the FileHandler; producers call ``setup_worker()``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mplog
from benchmarks.scenario import LOGGER, Started, file_config


def start(variant: str, out: Path, method: str) -> Started:
    transport, _, nice = variant.partition("-")
    config = file_config(out)
    if nice:  # the listener process at niceness +10: busy producers' CPU comes first
        config["mplog"] = {"nice": 10}
    listener = mplog.start_listener(config, transport=transport, route_parent=False)
    final: dict[str, Any] = {}

    def stop() -> None:
        final.update(listener.stop(timeout=60))

    return Started(params={}, stop=stop, consumer_pid=listener.pid, extra=final)


def worker_setup(params: dict[str, Any]) -> Callable[..., Any]:
    mplog.setup_worker()  # the endpoint comes from MPLOG_ENDPOINT, exported by start_listener
    return logging.getLogger(LOGGER).info
