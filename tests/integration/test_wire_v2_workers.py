"""Workers send version 2 frames (records as columns, mplog.wire.columns) by default, and every record arrives.

``wire_version = 1`` (the option, or ``MPLOG_WIRE_VERSION=1`` where the workers run) makes
them send version 1 frames, which listeners older than 0.2 read: the same records arrive.

The frames of real worker processes (fork, spawn, forkserver) are caught on a real socket,
looked at, then handed to a real Server writing a file: the set of lines written is exactly
the set logged, and the listener's ledger agrees.
"""

from __future__ import annotations

import logging
import logging.config
import os
import time
from pathlib import Path

import pytest
from helpers import check_lines, file_config, payload, read_lines

import mplog
from mplog.listener.loop import Server
from mplog.transports import open_receiver
from mplog.wire import FLAG_FINAL, read_envelope
from mplog.wire.columns import MIN_COLUMNS

pytestmark = pytest.mark.integration

WORKERS = 3
PER_WORKER = 3_000


V2, V1 = b"\x97\x02", b"\x96\x01"  # fixarray of 7, version 2; fixarray of 6, version 1
HOW = {  # how the worker is set up -> the first two bytes of its frames with records
    "default": ({}, {}, V2),
    "option": ({"wire_version": 1}, {}, V1),
    "environment": ({}, {"MPLOG_WIRE_VERSION": "1"}, V1),
}


def _log_block(endpoint: str, producer: int, how: str) -> None:
    options, env = HOW[how][:2]
    os.environ.update(env)
    mplog.setup_worker(endpoint, **options)
    log = logging.getLogger("v2")
    for seq in range(PER_WORKER):
        log.info("%s", payload(producer, seq))


@pytest.mark.parametrize("how", list(HOW))
def test_workers_send_version_2_frames_and_the_listener_writes_exactly_what_they_logged(
    tmp_path: Path, mp_context, how: str
) -> None:
    receiver = open_receiver(f"ipc://{tmp_path}/v2.sock")
    frames: list[bytes] = []
    try:
        procs = [mp_context.Process(target=_log_block, args=(receiver.endpoint, i, how)) for i in range(WORKERS)]
        for proc in procs:
            proc.start()
        finals = 0
        deadline = time.monotonic() + 60
        while finals < WORKERS and time.monotonic() < deadline:  # every sender's goodbye comes last
            received = receiver.recv(0.1)
            if received is not None:
                frames.append(received[0])
                finals += bool(read_envelope(received[0]).flags & FLAG_FINAL)
        for proc in procs:
            proc.join(30)
            assert proc.exitcode == 0
    finally:
        receiver.close()
    assert finals == WORKERS
    with_records = [data for data in frames if read_envelope(data).records]
    assert sum(read_envelope(data).records for data in with_records) == WORKERS * PER_WORKER
    expected = HOW[how][2]
    if expected == V2:
        # A batch of fewer than MIN_COLUMNS records goes as version 1 (the flusher thread can send
        # one when a worker is slow to fill its batch, as on a loaded machine); every other one as 2.
        small = [data for data in with_records if read_envelope(data).records < MIN_COLUMNS]
        assert {data[:2] for data in small} <= {V1}
        with_records = [data for data in with_records if read_envelope(data).records >= MIN_COLUMNS]
        assert sum(read_envelope(data).records for data in with_records) > WORKERS * PER_WORKER // 2
    assert {data[:2] for data in with_records} == {expected}

    out = tmp_path / "out.log"
    logging.config.dictConfig(file_config(out))

    class _Handed:  # the frames were received above: handed to the server one by one
        endpoint = "test://"
        events: dict[str, int] = {}

    server = Server(_Handed())  # type: ignore[arg-type]
    try:
        for data in frames:
            server.handle_frame(data)
    finally:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
    check_lines(read_lines(out), dict.fromkeys(range(WORKERS), PER_WORKER)).assert_exact()
    stats = server.snapshot()
    assert stats["received"] == WORKERS * PER_WORKER
    assert stats["malformed_total"] == stats["gaps"] == stats["dropped"] == stats["duplicates"] == 0
    assert stats["repaired_total"] == 0
