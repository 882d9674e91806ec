"""A worker's batches of mixed records (packed when flushed, or when logged) through a real listener.

Moved from tests/unit/test_worker_batching.py (unit tests start no processes), which holds
the packing path to the bytes of packing each record on its own.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest
from helpers import read_lines

import mplog
from mplog.worker import MplogHandler


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_mixed_stream_through_a_real_listener_arrives_complete_and_in_order(tmp_path: Path):
    out = tmp_path / "out.jsonl"
    config = {
        "version": 1,
        "formatters": {"json": {"()": "mplog.formatters.JSONFormatter"}},
        "handlers": {"f": {"class": "logging.FileHandler", "filename": str(out), "formatter": "json"}},
        "root": {"level": "DEBUG", "handlers": ["f"]},
    }
    expected: list[dict[str, Any]] = []
    with mplog.start_listener(config, route_parent=False) as listener:
        handler = MplogHandler(listener.endpoint)
        logger = logging.getLogger("batching.mixed")
        logger.handlers[:] = [handler]
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        adapter = logging.LoggerAdapter(logger, {"tenant": "t1"})
        try:
            for i in range(3000):
                kind = i % 6
                if kind == 0:
                    logger.info("plain %d %.3f %s", i, 1.5, "x")
                    expected.append({"message": f"plain {i} 1.500 x"})
                elif kind == 1:
                    logger.warning("extra %d", i, extra={"user": f"u{i}"})
                    expected.append({"message": f"extra {i}", "user": f"u{i}"})
                elif kind == 2:
                    try:
                        raise KeyError(i)
                    except KeyError:
                        logger.exception("failed %d", i)
                    expected.append({"message": f"failed {i}", "exc_type": "KeyError"})
                elif kind == 3:
                    adapter.info("adapted %d", i)
                    expected.append({"message": f"adapted {i}", "tenant": "t1"})
                elif kind == 4:
                    logger.debug("surrogate \udcff %d", i)
                    expected.append({"message": f"surrogate \\udcff {i}"})
                else:
                    logger.info("%s", "long " * 2000 + str(i))  # ~10 KB: batches cut by bytes
                    expected.append({"message": "long " * 2000 + str(i)})
        finally:
            handler.close()
            logger.handlers.clear()
        sent = handler.counters
    lines = [json.loads(line) for line in read_lines(out)]
    assert len(lines) == len(expected) == sent["sent"] == 3000
    for got, want in zip(lines, expected, strict=True):
        assert {key: got.get(key) for key in want} == want
    assert sent["dropped"] == sent["errors"] == 0
    # 500 records of ~10 KB among 2,500 small ones: the byte bound (64 KiB) cuts the batches,
    # the size estimate of a kept field list included.
    total = sum(len(json.dumps(line["message"])) for line in lines)
    assert sent["frames"] >= math.ceil(total / (64 * 1024 + 12 * 1024))
