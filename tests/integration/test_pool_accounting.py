"""Nothing lost on an orderly end: pools under every start method and transport."""

from __future__ import annotations

import logging

import pytest
from helpers import check_lines, file_config, payload, read_lines

import mplog

pytestmark = pytest.mark.integration

WORKERS = 4
PER_WORKER = 5_000


def _log_block(producer: int) -> int:
    log = logging.getLogger("pool")
    for seq in range(PER_WORKER):
        log.info("%s", payload(producer, seq))
    return producer


def test_stop_delivers_every_record_logged_before_pool_exit(tmp_path, mp_context, transport):
    out = tmp_path / "out.log"
    with mplog.start_listener(file_config(out), transport=transport) as listener:
        with mp_context.Pool(WORKERS, initializer=mplog.setup_worker) as pool:
            assert sorted(pool.map(_log_block, range(WORKERS), chunksize=1)) == list(range(WORKERS))
    stats = listener.stats()
    check_lines(read_lines(out), dict.fromkeys(range(WORKERS), PER_WORKER)).assert_exact()
    assert stats["received"] == WORKERS * PER_WORKER
    assert stats["malformed_total"] == stats["gaps"] == stats["dropped"] == stats["duplicates"] == 0
