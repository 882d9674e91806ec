"""Acknowledged delivery when the listener's marks are older than what it acknowledged.

A state directory restored from a copy, or one whose last writes were lost with its host,
gives a restarted listener marks behind what its senders were told was stored. The senders
hold nothing older (it was acknowledged), so the listener must not wait for it for ever.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import check_lines, file_config, read_lines, running_listen, wait_for

pytestmark = [pytest.mark.integration]

TESTS = str(Path(__file__).resolve().parent.parent)

# Logs records [a, b) at each step, then waits for the step's go file; says when all are acknowledged.
WORKER = """
import logging, os, sys, time, mplog, helpers
handler = mplog.setup_worker()
log = logging.getLogger("test")
here = sys.argv[1]
for step, (a, b) in enumerate([(0, 500), (500, 1000), (1000, 2000)]):
    if step:
        while not os.path.exists(os.path.join(here, f"go{step}")):
            time.sleep(0.02)
    for seq in range(a, b):
        log.info("%s", helpers.payload(0, seq))
    handler.flush_within(10)
    while handler.counters["unacked"]:
        time.sleep(0.02)
    open(os.path.join(here, f"acked{step}"), "w").close()
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPLOG_")}
    env["PYTHONPATH"] = os.pathsep.join([TESTS, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def _stats(endpoint: str) -> dict[str, object]:
    argv = [sys.executable, "-m", "mplog", "status", "--json", "--timeout", "10", endpoint]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=_env(), check=False)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


@pytest.mark.timeout(120)
def test_a_listener_restarted_on_a_state_dir_older_than_what_it_acknowledged_takes_the_senders_resends(tmp_path):
    out, state, backup = tmp_path / "out.log", tmp_path / "state", tmp_path / "state-copy"
    state.mkdir()
    config = file_config(out)
    config["mplog"] = {"ack": True, "state_dir": str(state)}
    config_path = tmp_path / "collector.json"
    config_path.write_text(json.dumps(config))
    endpoint = f"ipc://{tmp_path}/c.sock"
    first_err, second_err, worker_err = tmp_path / "first.err", tmp_path / "second.err", tmp_path / "worker.err"
    with running_listen(config_path, endpoint, first_err, _env()) as first:
        with worker_err.open("wb") as err:
            worker = subprocess.Popen(
                [sys.executable, "-c", WORKER, str(tmp_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=_env(MPLOG_ENDPOINT=endpoint, MPLOG_ACK="1"),
            )
        try:
            wait_for(lambda: (tmp_path / "acked0").exists() or worker.poll() is not None, timeout=60)
            first.send_signal(signal.SIGSTOP)  # a consistent copy: nothing moves while it is taken
            shutil.copytree(state, backup)  # the marks say: records 0..499 stored
            first.send_signal(signal.SIGCONT)
            (tmp_path / "go1").touch()
            wait_for(lambda: (tmp_path / "acked1").exists() or worker.poll() is not None, timeout=60)
            first.kill()  # 0..999 written and acknowledged
            first.wait(10)
            shutil.rmtree(state)
            shutil.copytree(backup, state)  # the operator restores the copy: marks behind by 500 records
            with running_listen(config_path, endpoint, second_err, _env()) as second:
                (tmp_path / "go2").touch()
                # Before: every frame of 1000..1999 refused for ever (the worker resends from its
                # oldest, 1000; the listener asked for 500), then lost at the worker's exit.
                assert worker.wait(60) == 0, worker_err.read_text()
                stats = _stats(endpoint)
                second.send_signal(signal.SIGTERM)
                assert second.wait(20) == 0, second_err.read_text()
        finally:
            if worker.poll() is None:
                worker.kill()
            worker.wait(10)
    check_lines(read_lines(out), {0: 2_000}).assert_exact()
    assert stats["gaps"] == 500, stats  # what the restored marks cannot account for, counted
    said = [line for line in second_err.read_text().splitlines() if "older than what it acknowledged" in line]
    assert len(said) == 1, second_err.read_text()
    assert "Records 500..999 are counted as a gap" in said[0], said[0]
    assert "never acknowledged" not in worker_err.read_text(), worker_err.read_text()
