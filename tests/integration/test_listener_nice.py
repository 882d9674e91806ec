"""``mplog.nice``: the listener process runs at a lower CPU priority and still delivers everything."""

from __future__ import annotations

import multiprocessing
import os

import psutil
import pytest
from helpers import check_lines, file_config, log_numbered, read_lines

import mplog
from mplog.config import load_config
from mplog.exceptions import ConfigError


def _produce(producer: int, count: int) -> None:
    mplog.setup_worker()
    log_numbered(producer, count)


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_niced_listener_runs_at_the_configured_priority_and_delivers_every_record(tmp_path):
    out = tmp_path / "out.log"
    config = {**file_config(out), "mplog": {"nice": 7}}
    with mplog.start_listener(config, route_parent=False) as listener:
        assert psutil.Process(listener.pid).nice() == min(os.nice(0) + 7, 19)
        procs = [multiprocessing.get_context("fork").Process(target=_produce, args=(i, 2000)) for i in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        assert [p.exitcode for p in procs] == [0, 0]
    check_lines(read_lines(out), {0: 2000, 1: 2000}).assert_exact()


@pytest.mark.parametrize("value", [-1, 20, 2.5, "10", True])
def test_a_nice_outside_0_to_19_names_the_key_and_the_range(value):
    with pytest.raises(ConfigError, match=r"mplog\.nice must be an int from 0 \(the default\) to 19"):
        load_config({**file_config("/dev/null"), "mplog": {"nice": value}})
