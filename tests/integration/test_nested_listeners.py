"""Two listeners in one program (a library starts one, the application another), both routing the parent."""

from __future__ import annotations

import logging

import pytest
from helpers import check_lines, file_config, log_numbered, payload, read_lines

import mplog
from mplog.worker import MplogHandler

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _log(first: int, count: int) -> None:
    log = logging.getLogger("test")
    for seq in range(first, first + count):
        log.info("%s", payload(0, seq))


def test_the_outer_listener_gets_the_parents_records_again_once_the_inner_one_stopped(tmp_path, capfd):
    outer_out, inner_out = tmp_path / "outer.log", tmp_path / "inner.log"
    with mplog.start_listener(file_config(outer_out), endpoint=f"ipc://{tmp_path}/a.sock") as outer:
        _log(0, 100)
        with mplog.start_listener(file_config(inner_out), endpoint=f"ipc://{tmp_path}/b.sock") as inner:
            _log(100, 100)
        # Before: the outer listener's handler was put back closed, and these were dropped
        # ("a record was logged after this process's mplog handler closed").
        _log(200, 100)
    outer_lines, inner_lines = read_lines(outer_out), read_lines(inner_out)
    assert sorted(outer_lines) == sorted(payload(0, seq) for seq in [*range(100), *range(200, 300)])
    assert sorted(inner_lines) == sorted(payload(0, seq) for seq in range(100, 200))
    assert outer.stats()["received"] == 200 and inner.stats()["received"] == 100
    assert mplog.ledger(outer.stats(), 200) == mplog.ledger(inner.stats(), 100) == 0
    assert "after this process's mplog handler closed" not in capfd.readouterr().err


def test_listeners_stopped_out_of_order_leave_no_closed_handler_on_the_root_logger(tmp_path):
    first = mplog.start_listener(file_config(tmp_path / "a.log"), endpoint=f"ipc://{tmp_path}/a.sock")
    second = mplog.start_listener(file_config(tmp_path / "b.log"), endpoint=f"ipc://{tmp_path}/b.sock")
    log_numbered(0, 10)
    first.stop()
    second.stop()
    assert not [h for h in logging.getLogger().handlers if isinstance(h, MplogHandler) and h._closed]
    check_lines(read_lines(tmp_path / "b.log"), {0: 10}).assert_exact()
