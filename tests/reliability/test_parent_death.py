"""Parent death: the listener drains what its orphaned workers still send, then exits (RELIABILITY B6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
from helpers import check_lines, file_config, read_lines

pytestmark = [pytest.mark.integration, pytest.mark.serial]

TESTS = str(Path(__file__).resolve().parent.parent)

# The supervisor: starts a listener and two producers, waits until both producers are
# known to the listener, reports the pids and then sleeps until it is killed.
SUPERVISOR = textwrap.dedent(
    """
    import json, subprocess, sys, time
    import mplog
    config = json.loads(sys.argv[1])
    producer = sys.argv[2]
    listener = mplog.start_listener(config, route_parent=False)
    procs = [subprocess.Popen([sys.executable, "-c", producer, str(i)]) for i in range(2)]
    deadline = time.monotonic() + 30
    while len(listener.stats()["senders"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    print(json.dumps({"listener": listener.pid, "producers": [p.pid for p in procs],
                      "endpoint": listener.endpoint}), flush=True)
    time.sleep(120)
    """
)

# A producer: 10,000 numbered records, paced so that it is still logging when the
# supervisor dies, then an ordinary exit.
PRODUCER = textwrap.dedent(
    """
    import logging, sys, time
    import mplog
    from helpers import payload
    producer = int(sys.argv[1])
    mplog.setup_worker()
    log = logging.getLogger("orphan")
    for seq in range(10_000):
        log.info("%s", payload(producer, seq))
        if seq % 500 == 499:
            time.sleep(0.05)
    """
)


# The harness adopts orphans (PR_SET_CHILD_SUBREAPER), so it can wait for the listener
# once the supervisor is gone and read its exit code; it reports what it saw as JSON.
HARNESS = textwrap.dedent(
    """
    import ctypes, json, os, signal, subprocess, sys, time
    PR_SET_CHILD_SUBREAPER = 36
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    supervisor = subprocess.Popen([sys.executable, "-c"] + sys.argv[1:], stdout=subprocess.PIPE, text=True)
    info = json.loads(supervisor.stdout.readline())
    os.kill(supervisor.pid, signal.SIGKILL)
    killed = time.monotonic()
    supervisor.wait()
    running = {info["listener"], *info["producers"]}
    producers_alive = all(os.path.exists(f"/proc/{pid}") for pid in info["producers"])
    codes, when = {}, {}
    deadline = time.monotonic() + 30
    while running and time.monotonic() < deadline:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            time.sleep(0.005)
            continue
        if pid in running:
            running.discard(pid)
            codes[pid] = os.waitstatus_to_exitcode(status)
            when[pid] = time.monotonic() - killed
    for pid in running:
        os.kill(pid, signal.SIGKILL)
    print(json.dumps({"info": info, "codes": codes, "when": when, "left": sorted(running),
                      "producers_alive": producers_alive}), flush=True)
    """
)


@pytest.mark.timeout(60)
def test_a_listener_whose_parent_was_killed_writes_everything_its_orphaned_workers_send_and_exits(tmp_path):
    out = tmp_path / "out.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]))
    harness = subprocess.run(
        [sys.executable, "-c", HARNESS, SUPERVISOR, json.dumps(file_config(out)), PRODUCER],
        capture_output=True,
        env=env,
        text=True,
        timeout=50,
        check=False,
    )
    assert harness.returncode == 0, harness.stderr
    report = json.loads(harness.stdout.strip().splitlines()[-1])
    info, codes, when = report["info"], report["codes"], report["when"]
    listener = str(info["listener"])
    assert report["producers_alive"], "the producers must outlive the supervisor"
    assert report["left"] == [], "no orphan may be left running"
    assert codes[listener] == 0
    assert when[listener] < 5.0
    assert all(codes[str(pid)] == 0 for pid in info["producers"])
    # It waited for the orphans: they were still logging when the supervisor died, and every
    # record they logged is in the file. (Not "it exited after them": a producer's process can
    # outlive its goodbye frame by its interpreter's teardown; under load the listener, done
    # with everything it was sent, was once seen exiting 0.14 s before such a producer.)
    check_lines(read_lines(out), {0: 10_000, 1: 10_000}).assert_exact()
    socket_path = info["endpoint"].removeprefix("ipc://")
    assert not os.path.exists(socket_path), "the listener removes its ipc socket on the way out"
    assert not psutil.pid_exists(info["listener"])
