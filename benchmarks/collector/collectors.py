"""The collectors compared, each started fresh by the benchmark in a private directory.

- ``rsyslog``: rsyslogd (``-n``, its own config, pid file and work directory), ``imtcp`` on
  a free loopback port with rate limiting off, into ``omfile`` with a template that writes
  the message only; defaults otherwise (queues, threads, buffers).
- ``mplog-tcp``: ``python -m mplog listen`` bound to ``tcp://127.0.0.1`` (plaintext), its
  dictConfig a ``logging.FileHandler`` with the format ``%(message)s``; defaults otherwise.
- ``mplog-curve``: the same with CURVE: the server's key pair and one authorised key per
  sender process, written by :func:`mplog.transports.curve.generate_key_pair`.
- ``mplog-tcp-v1``, ``mplog-curve-v1``: the same collectors, the senders sending wire version 1
  frames (what a sender written to the version 1 spec sends) instead of a worker's version 2.
- ``baseline-tcp``, ``baseline-curve`` (with ``--baseline PATH``): ``mplog listen`` of the
  checkout at ``PATH`` (put first on ``PYTHONPATH``), fed version 1 frames, which every
  version of mplog reads: before/after figures in one sitting.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from mplog.transports import curve as security

RSYSLOGD = shutil.which("rsyslogd") or ("/usr/sbin/rsyslogd" if os.access("/usr/sbin/rsyslogd", os.X_OK) else None)
SYSTEMS = ("rsyslog", "mplog-tcp", "mplog-curve")
EXTRA_SYSTEMS = ("mplog-tcp-v1", "mplog-curve-v1", "baseline-tcp", "baseline-curve")  # only when named
REFERENCE = "rsyslog"
BASELINE: list[str] = []  # the checkout that baseline-* systems run (set from --baseline)


def wire_version(system: str) -> int:
    """The wire version a system's senders send: 2 (what a worker sends) unless the system says 1."""
    return 1 if system.endswith("-v1") or system.startswith("baseline-") else 2


START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
LEDGER = ("received", "gaps", "dropped", "duplicates", "malformed_total", "refused")

RSYSLOG_CONF = """\
global(workDirectory="{dir}" maxMessageSize="64k")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="bench" RateLimit.Interval="0")
template(name="message_only" type="string" string="%msg%\\n")
ruleset(name="bench") {{
  action(type="omfile" file="{out}" template="message_only")
}}
"""


def _vm_hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Collector:
    """A running collector: where senders connect, where it writes, how to read and stop it."""

    system: str
    proc: subprocess.Popen[bytes]
    out: Path
    address: str  # HOST:PORT (rsyslog) or a tcp:// endpoint (mplog)
    stderr: Path
    control: str = ""  # mplog's status channel
    sender_keys: dict[str, str] = field(default_factory=dict)  # CURVE: server_key and the secret key files

    def _processes(self) -> list[psutil.Process]:
        try:
            me = psutil.Process(self.proc.pid)
            return [me, *me.children(recursive=True)]
        except psutil.Error:  # it exited (and was reaped): the run fails on its line count
            return []

    def cpu_seconds(self) -> float:
        """CPU used so far by the collector, every thread of it and any process it started."""
        total = 0.0
        for proc in self._processes():
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
        return total

    def peak_rss_kib(self) -> int:
        """Peak resident memory so far (VmHWM) of the collector and any process it started."""
        return sum(_vm_hwm_kib(p.pid) for p in self._processes())

    def threads(self) -> int:
        with contextlib.suppress(psutil.Error):
            return int(psutil.Process(self.proc.pid).num_threads())
        return 0

    def ledger(self) -> dict[str, Any] | None:
        """mplog's own accounting, asked over its status channel (None for rsyslog)."""
        if not self.control:
            return None
        from mplog.listener.status_channel import request_stats

        snap = request_stats(self.address, timeout=10.0, control=self.control)
        return {key: snap.get(key) for key in LEDGER}

    def stop(self) -> int | None:
        """SIGTERM, bounded wait, SIGKILL if need be; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def errors(self) -> str:
        try:
            return self.stderr.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


def _wait(ready: Any, collector: Collector, what: str) -> Any:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        found = ready()
        if found:
            return found
        if collector.proc.poll() is not None:
            raise RuntimeError(f"{collector.system} exited with {collector.proc.returncode}: {collector.errors()}")
        time.sleep(0.05)
    collector.stop()
    raise RuntimeError(f"{collector.system}: {what} within {START_TIMEOUT:g} s: {collector.errors()}")


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def start_rsyslog(directory: Path) -> Collector:
    if RSYSLOGD is None:
        raise FileNotFoundError("rsyslogd is not installed (apt-get install rsyslog)")
    port, out = _free_port(), directory / "out.log"
    conf = directory / "rsyslog.conf"
    conf.write_text(RSYSLOG_CONF.format(dir=directory, port=port, out=out))
    stderr = directory / "collector.stderr"
    with open(stderr, "wb") as errors:
        proc = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(conf), "-i", str(directory / "rsyslogd.pid")],
            stdin=subprocess.DEVNULL,
            stdout=errors,
            stderr=errors,
        )
    collector = Collector("rsyslog", proc, out, f"127.0.0.1:{port}", stderr)
    _wait(lambda: _port_open(port), collector, "imtcp did not listen")
    return collector


def make_keys(directory: Path, senders: int) -> Path:
    """The CURVE keys of a run: ``server/`` and ``authorized/sender<k>`` for each sender process."""
    keys = directory / "keys"
    security.generate_key_pair(keys / "server", "server")
    for k in range(senders):
        security.generate_key_pair(keys / "authorized", f"sender{k}")
    return keys


def mplog_config(out: Path) -> dict[str, Any]:
    """The listener's dictConfig: one FileHandler writing the message only."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"message": {"format": "%(message)s"}},
        "handlers": {
            "file": {"class": "logging.FileHandler", "filename": str(out), "formatter": "message", "encoding": "utf-8"}
        },
        "root": {"level": "INFO", "handlers": ["file"]},
    }


def start_mplog(directory: Path, keys: Path | None, pythonpath: str | None = None) -> Collector:
    out, conf = directory / "out.log", directory / "mplog.json"
    conf.write_text(json.dumps(mplog_config(out), indent=1))
    control = f"tcp://127.0.0.1:{_free_port()}"  # an ipc:// path under a deep --dir could pass the 107-byte limit
    cmd = [sys.executable, "-m", "mplog", "listen", "-c", str(conf), "-b", "tcp://127.0.0.1:0", "--control", control]
    if keys is not None:
        cmd += ["--curve-secret-key", str(keys / "server" / "server.key_secret")]
        cmd += ["--authorized-keys", str(keys / "authorized")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPLOG_")}
    if pythonpath:  # another checkout's mplog (cwd is the run's directory: nothing shadows it)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH")) if p)
    stderr = directory / "collector.stderr"
    with open(stderr, "wb") as errors:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=errors, stderr=errors, env=env, cwd=directory)
    system = ("baseline-" if pythonpath else "mplog-") + ("curve" if keys is not None else "tcp")
    collector = Collector(system, proc, out, "", stderr, control=control)

    def bound() -> str:
        match = re.search(r"^mplog: listening on (tcp://\S+)$", collector.errors(), re.M)
        return match[1] if match else ""

    collector.address = _wait(bound, collector, "mplog listen did not bind")
    if keys is not None:
        collector.sender_keys = {"server_key": str(keys / "server" / "server.key")}
    return collector


def start_collector(system: str, directory: Path, keys: Path | None) -> Collector:
    if system == "rsyslog":
        return start_rsyslog(directory)
    curve = system.startswith(("mplog-curve", "baseline-curve"))
    baseline = BASELINE[0] if system.startswith("baseline-") and BASELINE else None
    return start_mplog(directory, keys if curve else None, pythonpath=baseline)
