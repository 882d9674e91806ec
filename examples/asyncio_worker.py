"""An asyncio service that logs through mplog without ever blocking its event loop.

    python examples/asyncio_worker.py OUTPUT_DIR

Coroutines call the standard ``logging`` API. The mplog handler only encodes and
appends to a bounded buffer; a background thread sends. With ``policy="drop_newest"``
a logging call never waits, even when the listener is gone (drops are counted).
A ticker coroutine measures how late the loop wakes up while 200 coroutines log.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import mplog

REQUESTS = 200
RECORDS_PER_REQUEST = 25
log = logging.getLogger("shop.api")


async def handle_request(request_id: int) -> None:
    for step in range(RECORDS_PER_REQUEST):
        log.info("request %04d step %02d", request_id, step, extra={"request_id": request_id})
        await asyncio.sleep(0)  # stands for real awaits (a database, an HTTP call)


async def ticker(lags: list[float], done: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while not done.is_set():
        started = loop.time()
        await asyncio.sleep(0.005)
        lags.append(loop.time() - started - 0.005)


async def serve() -> float:
    lags: list[float] = []
    done = asyncio.Event()
    probe = asyncio.create_task(ticker(lags, done))
    await asyncio.gather(*(handle_request(i) for i in range(REQUESTS)))
    done.set()
    await probe
    return max(lags, default=0.0)


def main(directory: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "asyncio.log"
    path.unlink(missing_ok=True)
    config = {
        "formatters": {"line": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(path), "formatter": "line"}},
        "root": {"level": "INFO", "handlers": ["file"]},
    }
    with mplog.start_listener(config) as listener:  # also routes this process's logging to it
        mplog.setup_worker(listener.endpoint, policy="drop_newest")  # an event loop must never wait
        worst_lag = asyncio.run(serve())
    stats = listener.stats()
    expected = REQUESTS * RECORDS_PER_REQUEST
    lines = len(path.read_text(encoding="utf-8").splitlines())
    print(
        f"asyncio example: {expected} records from {REQUESTS} coroutines, {stats['received']} received, "
        f"{stats['dropped']} dropped, {lines} lines in {path}, worst event-loop lag {worst_lag * 1000:.1f} ms"
    )
    return 0 if lines == expected == stats["received"] else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "asyncio-example")))
