"""mplog: a listener process owning the FileHandler; producers call ``setup_worker()``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mplog
from benchmarks.scenario import LOGGER, Started, file_config


def start(variant: str, out: Path, method: str) -> Started:
    transport, _, mode = variant.partition("-")
    config = file_config(out)
    if mode == "nice":  # the listener at the lowest priority (+19): busy producers' CPU comes first
        config["mplog"] = {"nice": 19}
    if mode == "noyield":  # the listener handles every frame at once, busy producers or not (before 2026-11-25)
        config["mplog"] = {"yield_to_workers": 0}
    # "ack": acknowledged delivery (the workers learn it from MPLOG_ACK, exported by start_listener)
    listener = mplog.start_listener(config, transport=transport, route_parent=False, ack=mode == "ack")
    final: dict[str, Any] = {}

    def stop() -> None:
        final.update(listener.stop(timeout=60))

    return Started(params={}, stop=stop, consumer_pid=listener.pid, extra=final)


def worker_setup(params: dict[str, Any]) -> Callable[..., Any]:
    mplog.setup_worker()  # the endpoint comes from MPLOG_ENDPOINT, exported by start_listener
    return logging.getLogger(LOGGER).info
