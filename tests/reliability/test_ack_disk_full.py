"""Acknowledged delivery with the state directory on a full disk: the listener starts, stays up, loses nothing."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from helpers import check_lines, file_config, fill, mount_tmpfs, read_lines, running_listen, umount, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.serial]

TESTS = str(Path(__file__).resolve().parent.parent)

WORKER = """
import sys, mplog, helpers
mplog.setup_worker()
helpers.log_numbered(int(sys.argv[1]), int(sys.argv[2]))
"""


# The same, holding its sender open: one record, then the rest once the file argv[3] exists.
HOLDING_WORKER = """
import logging, os, sys, time, mplog, helpers
mplog.setup_worker()
producer, count = int(sys.argv[1]), int(sys.argv[2])
logging.getLogger("test").info("%s", helpers.payload(producer, 0))
while not os.path.exists(sys.argv[3]):
    time.sleep(0.05)
for seq in range(1, count):
    logging.getLogger("test").info("%s", helpers.payload(producer, seq))
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPLOG_")}
    env["PYTHONPATH"] = os.pathsep.join([TESTS, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def _config(tmp_path: Path, out: Path, state: Path) -> Path:
    config = file_config(out)
    config["mplog"] = {"ack": True, "state_dir": str(state)}
    path = tmp_path / "collector.json"
    path.write_text(json.dumps(config))
    return path


def _listen(config: Path, endpoint: str, stderr: Path) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """``mplog listen`` (this file's config) with its stderr in a file; killed and reaped at the end."""
    return running_listen(config, endpoint, stderr, _env())


@contextlib.contextmanager
def _workers(
    endpoint: str, counts: dict[int, int], tmp_path: Path, hold: Path | None = None
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """One ack-mode worker process per producer, logging its numbered records; killed and reaped at the end."""
    procs = []
    try:
        for producer, count in counts.items():
            err = (tmp_path / f"worker{producer}.err").open("wb")
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", WORKER, str(producer), str(count)]
                    if hold is None
                    else [sys.executable, "-c", HOLDING_WORKER, str(producer), str(count), str(hold)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    env=_env(MPLOG_ENDPOINT=endpoint, MPLOG_ACK="1"),
                )
            )
            err.close()
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


class _SmallStateDir(NamedTuple):
    mnt: Path  # a 1 MiB tmpfs holding the state directory, filled by the test when it wants
    out: Path
    config: Path  # an ack-mode collector config with its state_dir on that tmpfs
    endpoint: str


@pytest.fixture
def small_state_dir(tmp_path: Path) -> Iterator[_SmallStateDir]:
    """An ack collector's config whose state directory is on a small tmpfs of its own (unmounted at the end)."""
    mnt, out = tmp_path / "small", tmp_path / "out.log"
    mount_tmpfs(mnt, "1m")
    try:
        state = mnt / "state"
        state.mkdir()
        yield _SmallStateDir(mnt, out, _config(tmp_path, out, state), f"ipc://{tmp_path}/c.sock")
    finally:
        umount(mnt)


def _said(stderr: Path, text: str) -> list[str]:
    return [line for line in stderr.read_text().splitlines() if text in line]


@pytest.mark.timeout(180)
def test_an_ack_listener_killed_and_restarted_on_a_full_state_dir_starts_and_writes_each_record_exactly_once(
    tmp_path, small_state_dir
):
    mnt, out, config, endpoint = small_state_dir
    first_err, second_err = tmp_path / "first.err", tmp_path / "second.err"
    with _listen(config, endpoint, first_err) as first:
        with _workers(endpoint, {0: 3_000}, tmp_path) as procs:
            assert procs[0].wait(60) == 0
        wait_for(lambda: len(read_lines(out)) == 3_000, timeout=30)
        fill(mnt)  # full during the run: acked.json and its intent exist, no data block is left
        with _workers(endpoint, {1: 20_000}, tmp_path) as procs:
            wait_for(lambda: len(read_lines(out)) > 5_000, timeout=60, interval=0.005)
            first.kill()  # mid-stream: worker 1's unacknowledged frames are resent to the next listener
            first.wait(10)
            # Before: the restart died at once (OSError ENOSPC rewriting acked.json.intent).
            with _listen(config, endpoint, second_err) as second:
                assert procs[0].wait(90) == 0
                (mnt / "filler").unlink()  # space again
                with _workers(endpoint, {2: 1_000}, tmp_path) as more:
                    assert more[0].wait(60) == 0
                second.send_signal(signal.SIGTERM)
                assert second.wait(20) == 0, second_err.read_text()
    check_lines(read_lines(out), {0: 3_000, 1: 20_000, 2: 1_000}).assert_exact()
    assert "Traceback" not in second_err.read_text(), second_err.read_text()


@pytest.mark.timeout(240)
def test_twenty_senders_while_the_ack_state_dir_is_full_keep_the_listener_up_and_lose_nothing(
    tmp_path, small_state_dir
):
    mnt, out, config, endpoint = small_state_dir
    err = tmp_path / "listener.err"
    senders = 20
    with _listen(config, endpoint, err) as listener:
        fill(mnt)  # acked.json backs its first page (15 slots); the 16th slot needs a block
        go = tmp_path / "go"
        with _workers(endpoint, dict.fromkeys(range(senders), 3_000), tmp_path, hold=go) as procs:
            # Every sender open at once: its first record written (its slot asked for) before any says goodbye.
            wait_for(lambda: len(read_lines(out)) == senders, timeout=120)
            go.touch()
            # Before: SIGBUS (rc -7) storing the 16th sender's slot.
            assert [p.wait(120) for p in procs] == [0] * senders, err.read_text()
        assert listener.poll() is None, f"exit {listener.returncode}: {err.read_text()}"
        listener.send_signal(signal.SIGTERM)
        assert listener.wait(20) == 0, err.read_text()
    check_lines(read_lines(out), dict.fromkeys(range(senders), 3_000)).assert_exact()
    full = _said(err, "the state directory is full")
    assert len(full) == 1, err.read_text()  # once, not per sender
    assert "acked.json has no room for a new sender's slot" in full[0], full[0]
    assert "No space left on device" in full[0], full[0]


def _state_on_disk(endpoint: str) -> dict[str, int]:
    """The listener's ``stats()["state_on_disk"]``, read as an operator does (``mplog status --json``)."""
    argv = [sys.executable, "-m", "mplog", "status", "--json", "--timeout", "10", endpoint]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=_env(), check=False)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout)["state_on_disk"])


@pytest.mark.timeout(240)
def test_marks_a_full_state_dir_kept_in_memory_go_back_to_the_file_and_a_restart_after_a_kill_resumes_from_them(
    tmp_path, small_state_dir
):
    mnt, out, config, endpoint = small_state_dir
    first_err, second_err = tmp_path / "first.err", tmp_path / "second.err"
    senders, go = 20, tmp_path / "go"
    with _listen(config, endpoint, first_err) as first:
        fill(mnt)  # acked.json backs its first page (15 slots): 5 of the 20 senders get none
        with _workers(endpoint, dict.fromkeys(range(senders), 2_000), tmp_path, hold=go) as procs:
            wait_for(lambda: len(read_lines(out)) == senders, timeout=120)
            wait_for(lambda: _state_on_disk(endpoint)["marks_in_memory"] == 5, timeout=30)
            degraded = _state_on_disk(endpoint)
            assert degraded["slots_refused"] >= 5, degraded
            (mnt / "filler").unlink()  # room again: the retry (once a second) stores the 5 marks in the file
            wait_for(lambda: _said(first_err, "on the disk again"), timeout=30)
            assert _state_on_disk(endpoint)["marks_in_memory"] == 0
            first.kill()  # the 20 marks are now only in acked.json
            first.wait(10)
            with _listen(config, endpoint, second_err) as second:
                go.touch()
                assert [p.wait(120) for p in procs] == [0] * senders, second_err.read_text()
                second.send_signal(signal.SIGTERM)
                assert second.wait(20) == 0, second_err.read_text()
    check_lines(read_lines(out), dict.fromkeys(range(senders), 2_000)).assert_exact()
    assert "Traceback" not in first_err.read_text() + second_err.read_text()
