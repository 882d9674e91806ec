"""structlog in the workers, rendered through stdlib logging into mplog, JSON lines at the listener.

    python examples/structlog_workers.py OUTPUT_DIR

Each worker configures structlog to hand its event dict to the standard library
(``structlog.stdlib.render_to_log_kwargs``): the event becomes the message and every
key-value pair an ``extra``. mplog carries extras on the wire, so the listener's
:class:`mplog.formatters.JSONFormatter` writes them back as JSON keys.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
from pathlib import Path

import structlog

import mplog

ORDERS = 2_000


def configure_structlog() -> None:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.render_to_log_kwargs,  # event -> msg, other keys -> extra
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def init_worker() -> None:
    mplog.setup_worker()  # the endpoint comes from the listener, through the environment
    configure_structlog()


def pay(order_id: int) -> int:
    log = structlog.get_logger("shop.payments").bind(order_id=order_id)
    log.info("order_paid", amount_cents=100 + order_id % 900, currency="EUR")
    return order_id


def main(directory: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "payments.jsonl"
    path.unlink(missing_ok=True)
    config = {
        "formatters": {"json": {"()": "mplog.formatters.JSONFormatter", "static": {"service": "shop"}}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(path), "formatter": "json"}},
        "root": {"level": "INFO", "handlers": ["file"]},
    }
    spawn = multiprocessing.get_context("spawn")
    with mplog.start_listener(config, route_parent=False) as listener, spawn.Pool(4, initializer=init_worker) as pool:
        pool.map(pay, range(ORDERS), chunksize=50)
    stats = listener.stats()
    events = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    paid = sorted(e["order_id"] for e in events if e["message"] == "order_paid")
    fields_ok = all(e["currency"] == "EUR" and e["service"] == "shop" and "amount_cents" in e for e in events)
    print(
        f"structlog example: {ORDERS} events from 4 spawn workers, {stats['received']} received, "
        f"{len(paid)} JSON lines with order_id in {path}"
    )
    return 0 if paid == list(range(ORDERS)) and fields_ok and stats["received"] == ORDERS else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "structlog-example")))
