"""A state directory on a full or unwritable disk: a restart never truncates, and the listener says what is off.

An outside user put ``mplog.state_dir`` on a full 1 MiB tmpfs, the log (``mode = "w"``) on
the normal disk: the first checkpoint failed without a word, the state directory held
only an empty ``stats.json.tmp``, and ``mplog listen`` started again on it truncated the
5,000 lines the first listener wrote and started its stats from zero (2 of 2 runs).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import check_lines, file_config, fill, mount_tmpfs, read_lines, running_listen, umount, wait_for

import mplog
from mplog.listener.supervisor import load_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.serial]

TESTS = str(Path(__file__).resolve().parent.parent)

# A worker that knows only MPLOG_ENDPOINT: logs `count` numbered records of producer argv[1].
WORKER = """
import sys, mplog, helpers
mplog.setup_worker()
helpers.log_numbered(int(sys.argv[1]), int(sys.argv[2]))
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPLOG_")}
    env["PYTHONPATH"] = os.pathsep.join([TESTS, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _listen(config: Path, endpoint: str, stderr: Path) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """``mplog listen`` (this file's config) with its stderr in a file; killed and reaped at the end."""
    return running_listen(config, endpoint, stderr, _env())


def _log(endpoint: str, producer: int, count: int) -> None:
    """A worker process logs ``count`` numbered records of ``producer`` and exits."""
    env = {**_env(), "MPLOG_ENDPOINT": endpoint}
    done = subprocess.run([sys.executable, "-c", WORKER, str(producer), str(count)], env=env, timeout=60, check=False)
    assert done.returncode == 0


def _stop(proc: subprocess.Popen[bytes], stderr: Path) -> str:
    """SIGTERM ``mplog listen``; its stop line."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    return stderr.read_text().splitlines()[-1]


def _said(stderr: Path, text: str) -> list[str]:
    return [line for line in stderr.read_text().splitlines() if text in line]


def _checkpointed(state: Path) -> int | None:
    """The records the listener's last stats checkpoint counts as received (None: no checkpoint)."""
    return (load_checkpoint(str(state / "stats.json")) or {}).get("received")


def _config(path: Path, out: Path, state: Path) -> Path:
    config: dict[str, Any] = file_config(out, mode="w")
    config["mplog"] = {"state_dir": str(state)}
    path.write_text(json.dumps(config))
    return path


@pytest.mark.timeout(120)
def test_mplog_listen_restarted_on_a_state_dir_with_no_space_appends_to_its_mode_w_file_and_says_why(tmp_path):
    mnt, out = tmp_path / "small", tmp_path / "out.log"
    mount_tmpfs(mnt, "1m")
    try:
        state = mnt / "state"
        state.mkdir()
        fill(mnt)  # no data block left: an empty file (an inode) is all that can be made there
        config = _config(tmp_path / "collector.json", out, state)
        endpoint = f"ipc://{tmp_path}/c.sock"
        first_err, second_err = tmp_path / "first.err", tmp_path / "second.err"
        with _listen(config, endpoint, first_err) as first:
            _log(endpoint, 0, 5_000)
            wait_for(lambda: len(read_lines(out)) == 5_000, timeout=30)
            first.kill()  # as the outsider did: no final checkpoint
            first.wait(10)
        assert len(read_lines(out)) == 5_000
        with _listen(config, endpoint, second_err) as second:
            _log(endpoint, 1, 1_000)  # the worker has exited: its records are with the listener, drained at stop
            stop_line = _stop(second, second_err)
        lines = read_lines(out)
        # Before: the restart truncated the file (1,000 lines of 6,000 left) and said nothing.
        assert len(lines) == 6_000, f"{len(lines)} lines after the restart"
        check_lines(lines, {0: 5_000, 1: 1_000}).assert_exact()
        for err in (first_err, second_err):
            assert len(_said(err, "cannot write the stats checkpoint")) == 1, err.read_text()  # once, not a flood
            assert "No space left on device" in _said(err, "cannot write the stats checkpoint")[0]
        assert len(_said(second_err, "holds no stats checkpoint")) == 1
        # No checkpoint could be written, so the second listener's stats start from zero (said above).
        assert stop_line.startswith("mplog: stopped; received 1000 records from 1 senders"), stop_line
    finally:
        umount(mnt)


@pytest.mark.timeout(120)
def test_once_space_frees_the_checkpoint_and_progress_file_are_written_again_and_a_restart_continues_them(tmp_path):
    mnt, out = tmp_path / "small", tmp_path / "out.log"
    mount_tmpfs(mnt, "1m")
    try:
        state = mnt / "state"
        state.mkdir()
        fill(mnt)
        config = _config(tmp_path / "collector.json", out, state)
        endpoint = f"ipc://{tmp_path}/c.sock"
        first_err, second_err = tmp_path / "first.err", tmp_path / "second.err"
        with _listen(config, endpoint, first_err) as first:
            _log(endpoint, 0, 2_000)
            wait_for(lambda: len(read_lines(out)) == 2_000, timeout=30)
            assert not (state / "stats.json").exists() and not (state / "progress.slots").exists()
            (mnt / "filler").unlink()  # space again
            wait_for((state / "progress.slots").exists, timeout=10, what="progress.slots started once space freed")
            wait_for(lambda: _checkpointed(state) == 2_000, timeout=10)
            _log(endpoint, 1, 2_000)
            wait_for(lambda: len(read_lines(out)) == 4_000, timeout=30)
            wait_for(lambda: _checkpointed(state) == 4_000, timeout=10)
            first.kill()
            first.wait(10)
        with _listen(config, endpoint, second_err) as second:
            _log(endpoint, 2, 1_000)
            wait_for(lambda: len(read_lines(out)) == 5_000, timeout=30)
            stop_line = _stop(second, second_err)
        check_lines(read_lines(out), {0: 2_000, 1: 2_000, 2: 1_000}).assert_exact()
        # Said once each way, for the checkpoint and for the progress file (before: nothing, and
        # the progress file was never started again for that listener's life).
        assert len(_said(first_err, "cannot write the stats checkpoint")) == 1, first_err.read_text()
        assert len(_said(first_err, "is written again")) == 1, first_err.read_text()
        assert len(_said(first_err, "progress.slots is kept again")) == 1, first_err.read_text()
        assert stop_line.startswith("mplog: stopped; received 5000 records from 3 senders, malformed 0"), stop_line
        assert ", gaps 0," in stop_line, stop_line
        assert second_err.read_text().count("mplog: ") == 2, second_err.read_text()  # listening, stopped: no complaint
    finally:
        umount(mnt)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("api", ["mplog listen", "start_listener"])
def test_a_state_dir_on_a_read_only_file_system_fails_the_start_naming_the_key_and_the_cause(tmp_path, api):
    mnt = tmp_path / "ro"
    mount_tmpfs(mnt, "1m")
    try:
        (mnt / "state").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        config = _config(tmp_path / "collector.json", tmp_path / "out.log", mnt / "state")
        expected = f"mplog.state_dir: '{mnt / 'state'}' is on a read-only file system; remount it read-write"
        if api == "start_listener":
            with pytest.raises(mplog.ConfigError) as raised:
                mplog.start_listener(json.loads(config.read_text()), route_parent=False, export_env=False)
            assert expected in str(raised.value)
        else:
            argv = [sys.executable, "-m", "mplog", "listen", "--config", str(config), "--bind", f"ipc://{tmp_path}/c"]
            done = subprocess.run(argv, capture_output=True, text=True, env=_env(), timeout=30, check=False)
            assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
            assert expected in done.stderr, done.stderr
        assert not (tmp_path / "out.log").exists()
    finally:
        umount(mnt)
