"""An ``msecs`` outside ``0 <= msecs < 1000`` is repaired and counted, as a NaN one always was.

An outsider's records with msecs -1e300, 1e308, 2**64 - 1 and -2**63 were written as they
came: ``%(asctime)s`` printed timestamps with hundreds of digits. docs/wire-format.md
bounds the field; the record check and the per-column check of version 2 frames now hold it.
"""

from __future__ import annotations

import logging
import logging.config
import math
import re
from pathlib import Path
from typing import Any

import msgpack
import pytest

from mplog.listener.dispatch import BatchDispatcher
from mplog.listener.loop import Server
from mplog.wire import RECORD_FIELDS, Sender
from mplog.wire.column_check import plain_columns, value_passes
from mplog.wire.columns import columns_of
from mplog.wire.encode import plain_fields
from mplog.wire.schema import F_MSECS

SENDER = Sender("host-a", 4242, 1.7e9, 7)
OUT_OF_RANGE = [-1e300, 1e308, 2**64 - 1, -(2**63), -0.5, 1000, 1000.0, math.inf, -math.inf, math.nan]
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,(\d+) (m\d)$")
COUNT = 4


class _NoReceiver:
    endpoint = "test://"

    def __init__(self) -> None:
        self.events: dict[str, int] = {}


def _records(msecs: Any, *, everywhere: bool) -> list[list[Any]]:
    rows = []
    for i in range(COUNT):
        record = logging.LogRecord("app", logging.INFO, __file__, 1, f"m{i}", None, None)
        row = plain_fields(record)
        assert row is not None
        row = [*row]
        if everywhere or i == 2:
            row[RECORD_FIELDS.index("msecs")] = msecs
        rows.append(row)
    return rows


def _frame(version: int, records: list[list[Any]]) -> bytes:
    if version == 1:
        return msgpack.packb([1, list(SENDER), 0, 0, 0, records], use_bin_type=True)  # type: ignore[no-any-return]
    columns: list[Any] = columns_of(records)
    if all(row[F_MSECS] == records[0][F_MSECS] for row in records) and not math.isnan(records[0][F_MSECS]):
        columns[F_MSECS] = records[0][F_MSECS]  # a column sent once, standing for every record
    return msgpack.packb([2, list(SENDER), 0, 0, 0, len(records), columns], use_bin_type=True)  # type: ignore[no-any-return]


def _serve(directory: Path, data: bytes) -> tuple[list[str], dict[str, Any]]:
    out = directory / "out.log"
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,  # "app" may exist already (another test's)
            "formatters": {"line": {"format": "%(asctime)s %(message)s"}},
            "handlers": {"file": {"class": "logging.FileHandler", "filename": str(out), "formatter": "line"}},
            "root": {"level": "DEBUG", "handlers": ["file"]},
        }
    )
    server = Server(_NoReceiver(), limits=None)  # type: ignore[arg-type]  # frames handed in
    server.dispatcher = BatchDispatcher(fast=True)
    try:
        server.handle_frame(data)
    finally:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})  # closes the file
    return out.read_text().splitlines(), server.snapshot()


@pytest.mark.parametrize("everywhere", [False, True], ids=["in_one_record", "in_every_record"])
@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("msecs", OUT_OF_RANGE, ids=repr)
def test_out_of_range_msecs_is_repaired(tmp_path: Path, msecs: Any, version: int, everywhere: bool) -> None:
    lines, snap = _serve(tmp_path, _frame(version, _records(msecs, everywhere=everywhere)))
    assert [LINE.match(line).group(2) for line in lines] == [f"m{i}" for i in range(COUNT)]  # type: ignore[union-attr]
    assert all(len(LINE.match(line).group(1)) == 3 for line in lines), lines  # type: ignore[union-attr]
    repaired = COUNT if everywhere else 1
    assert snap["received"] == COUNT
    assert snap["repaired"] == {"bad_field": repaired}
    assert snap["repaired_total"] == repaired


@pytest.mark.parametrize("msecs", [0, 0.0, 999, 999.999, 500.25])
def test_msecs_within_the_bounds_passes_the_column_check_as_it_is(msecs: Any) -> None:
    records = _records(msecs, everywhere=True)
    assert plain_columns(records) is not None
    assert value_passes(F_MSECS, msecs)


@pytest.mark.parametrize("msecs", OUT_OF_RANGE, ids=repr)
def test_out_of_range_msecs_fails_the_column_check(msecs: Any) -> None:
    assert plain_columns(_records(msecs, everywhere=False)) is None
    assert not value_passes(F_MSECS, msecs)
