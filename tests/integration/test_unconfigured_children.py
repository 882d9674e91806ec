"""Children that never call setup_worker(): routed to the listener under every start method.

A ``fork`` child inherits its parent's handler; a ``spawn`` or ``forkserver`` child used
to start with none, and its INFO records were lost without a trace (mplog.worker.children).
Every record is numbered and the output is checked exactly.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import check_lines, file_config, log_numbered, payload, read_lines

import mplog

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

PER_CHILD = 1000
TESTS_DIR = Path(__file__).resolve().parents[1]


def _children(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """The senders other than this process (whose own handler, route_parent=True, says goodbye too)."""
    return [s for s in stats["senders"].values() if s["pid"] != os.getpid()]


def _assert_clean(stats: dict[str, Any], received: int) -> None:
    assert stats["received"] == received
    assert stats["malformed_total"] == stats["gaps"] == stats["dropped"] == stats["duplicates"] == 0
    assert mplog.ledger(stats, received) == 0


def test_a_plain_process_that_never_calls_setup_worker_delivers_every_record(tmp_path, mp_context):
    out = tmp_path / "out.log"
    with mplog.start_listener(file_config(out)) as listener:
        children = [mp_context.Process(target=log_numbered, args=(producer, PER_CHILD)) for producer in range(2)]
        for child in children:
            child.start()
        for child in children:
            child.join(60)
        assert [child.exitcode for child in children] == [0, 0]
    check_lines(read_lines(out), {0: PER_CHILD, 1: PER_CHILD}).assert_exact()
    stats = listener.stats()
    _assert_clean(stats, 2 * PER_CHILD)
    assert sorted(s["records"] for s in _children(stats)) == [PER_CHILD, PER_CHILD]
    assert all(s["closed"] for s in _children(stats))


def _log_batch(producer: int) -> int:
    log_numbered(producer, 250)
    return producer


def test_a_pool_without_an_initializer_delivers_every_record_and_its_workers_end_on_terminate(tmp_path, mp_context):
    out = tmp_path / "out.log"
    # Pool.__exit__ terminates the workers (SIGTERM) before the listener stops.
    with mplog.start_listener(file_config(out)) as listener, mp_context.Pool(2) as pool:
        assert pool.map(_log_batch, range(4)) == [0, 1, 2, 3]
    check_lines(read_lines(out), dict.fromkeys(range(4), 250)).assert_exact()
    _assert_clean(listener.stats(), 1000)


@pytest.mark.parametrize("start_method", ["fork", "spawn", "forkserver"])
def test_an_executor_without_an_initializer_under_a_listener_that_keeps_the_parent_local(tmp_path, start_method):
    # route_parent=False keeps the parent's own logging local; its children are routed all the same
    # (a fork child has no mplog handler to inherit then: multiprocessing's after-fork hook routes it;
    # before, its 1,000 records were lost without a count).
    out = tmp_path / "out.log"
    context = multiprocessing.get_context(start_method)
    listener = mplog.start_listener(file_config(out), route_parent=False)
    with listener, concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
        assert sorted(pool.map(_log_batch, range(4))) == [0, 1, 2, 3]
    check_lines(read_lines(out), dict.fromkeys(range(4), 250)).assert_exact()
    _assert_clean(listener.stats(), 1000)


def test_fork_children_of_a_parent_that_keeps_its_logging_local_are_routed_and_it_stays_local(tmp_path):
    # A Pool and plain Processes under fork, route_parent=False, no setup_worker() anywhere:
    # every child record reaches the listener (not the parent's local handler, which the
    # child inherited), and the parent's own records stay local.
    out, local = tmp_path / "out.log", tmp_path / "local.log"
    fork = multiprocessing.get_context("fork")
    root = logging.getLogger()
    mine = logging.FileHandler(local, encoding="utf-8")
    root.addHandler(mine)
    root.setLevel(logging.INFO)
    try:
        with mplog.start_listener(file_config(out), route_parent=False) as listener:
            with fork.Pool(2) as pool:
                assert pool.map(_log_batch, range(4)) == [0, 1, 2, 3]
            children = [fork.Process(target=log_numbered, args=(producer, 250)) for producer in (4, 5)]
            for child in children:
                child.start()
            for child in children:
                child.join(60)
            assert [child.exitcode for child in children] == [0, 0]
            logging.getLogger("parent").info("%s", payload(9, 0))
    finally:
        root.removeHandler(mine)
        mine.close()
    check_lines(read_lines(out), dict.fromkeys(range(6), 250)).assert_exact()
    assert read_lines(local) == [payload(9, 0)]
    _assert_clean(listener.stats(), 1500)


def _setup_then_log(producer: int, options: dict[str, Any]) -> None:
    handler = mplog.setup_worker(**options)
    assert handler.options.transport.sndhwm == options.get("sndhwm", 8)
    log_numbered(producer, PER_CHILD)


@pytest.mark.parametrize("options", [{}, {"sndhwm": 64}], ids=["same-options", "other-transport-options"])
def test_a_child_that_calls_setup_worker_itself_is_one_sender_with_the_options_it_asked_for(tmp_path, options):
    # The handler the child got at start is reused, or (other transport options) replaced
    # without a trace: no empty sender appears next to the one that delivered.
    out = tmp_path / "out.log"
    spawn = multiprocessing.get_context("spawn")
    with mplog.start_listener(file_config(out)) as listener:
        child = spawn.Process(target=_setup_then_log, args=(0, options))
        child.start()
        child.join(60)
        assert child.exitcode == 0
    check_lines(read_lines(out), {0: PER_CHILD}).assert_exact()
    stats = listener.stats()
    _assert_clean(stats, PER_CHILD)
    assert [(s["records"], s["closed"]) for s in _children(stats)] == [(PER_CHILD, True)]


def _note_root(queue: Any) -> None:
    queue.put([type(h).__name__ for h in logging.getLogger().handlers])


def test_children_are_left_alone_without_an_exported_endpoint_and_after_the_listener_stops(tmp_path):
    spawn = multiprocessing.get_context("spawn")
    queue = spawn.SimpleQueue()
    with mplog.start_listener(file_config(tmp_path / "out.log"), export_env=False):
        child = spawn.Process(target=_note_root, args=(queue,))
        child.start()
        child.join(60)
        assert queue.get() == []
    with mplog.start_listener(file_config(tmp_path / "out.log")):
        pass
    child = spawn.Process(target=_note_root, args=(queue,))
    child.start()
    child.join(60)
    assert queue.get() == []


_SCRIPT = """
import logging, multiprocessing, sys
import mplog
from helpers import file_config, log_numbered

if __name__ == "__main__":
    out, method = sys.argv[1], sys.argv[2]
    ctx = multiprocessing.get_context(method)
    with mplog.start_listener(file_config(out)) as listener:
        children = [ctx.Process(target=log_numbered, args=(p, 1000)) for p in range(2)]
        for child in children: child.start()
        for child in children: child.join(60)
    stats = listener.stats()
    print(stats["received"], stats["gaps"], stats["dropped"], [c.exitcode for c in children])
"""


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_a_program_whose_children_never_call_setup_worker_loses_nothing(tmp_path, start_method):
    # As a user runs it: a script's __main__, re-imported by every spawn child.
    out = tmp_path / "out.log"
    script = tmp_path / "program.py"
    script.write_text(_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPLOG_")}
    env["PYTHONPATH"] = str(TESTS_DIR)
    result = subprocess.run(
        [sys.executable, str(script), str(out), start_method],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n", 1)[0] == "2000 0 0 [0, 0]"
    assert result.stderr == ""
    check_lines(read_lines(out), {0: 1000, 1: 1000}).assert_exact()
    assert payload(1, 999) in read_lines(out)


def test_a_handler_the_parent_set_up_by_hand_delivers_what_it_holds_before_the_stop(tmp_path):
    # route_parent=False, then setup_worker() in the parent itself: stop() used to drain the
    # listener without flushing that handler, and the records it still batched were lost at
    # exit ("could not be delivered").
    out = tmp_path / "out.log"
    with mplog.start_listener(file_config(out), route_parent=False) as listener:
        handler = mplog.setup_worker(listener.endpoint)
        log_numbered(0, 100)
    try:
        check_lines(read_lines(out), {0: 100}).assert_exact()
        assert listener.stats()["received"] == 100
    finally:
        logging.getLogger().removeHandler(handler)
        handler.discard_if_unused() or handler.close()
