"""Hosts as Linux network namespaces joined by veth links, built per test and always torn down.

Each test gets its own namespaces (unique names) and private 10.x addresses that exist
only inside them: nothing is added to the namespace the tests run in, so no test address
is reachable from outside. Needs root and ``ip`` from iproute2; otherwise the tests skip
and say why.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespace tests need root (ip netns add)"
    if shutil.which("ip") is None:
        return "network namespace tests need `ip` from iproute2 (apt-get install iproute2)"
    probe = f"mplogprobe{secrets.token_hex(3)}"
    try:
        _ip("netns", "add", probe)
    except RuntimeError as exc:
        return f"network namespaces are not available here: {exc}"
    _ip("netns", "del", probe)
    return None


class HostProcess:
    """A process running inside a host's namespace, speaking JSON lines on stdout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.ready: dict[str, Any] = {}  # a listener's "ready" message: endpoint, pid of the listener process

    def read(self, event: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
        import select

        while True:
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            assert ready, f"no output within {timeout} s"
            line = self.proc.stdout.readline()  # type: ignore[union-attr]
            assert line, f"process ended: {self.proc.stderr.read()}"  # type: ignore[union-attr]
            message: dict[str, Any] = json.loads(line)
            if event is None or message.get("event") == event:
                return message

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 60.0) -> str:
        _, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err
        return err


class Host:
    def __init__(self, network: Network, name: str) -> None:
        self.network = network
        self.name = name
        self.ns = f"{network.prefix}-{name}"
        self.addresses: dict[str, str] = {}  # peer host name -> this host's address on that link

    def popen(self, *args: str, stdin: bool = False) -> subprocess.Popen[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MPLOG_")}
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, *args],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.network.processes.append(proc)
        return proc

    def python(self, script: str, *args: str) -> HostProcess:
        """Run one of this directory's helper scripts in the host."""
        return HostProcess(self.popen(sys.executable, str(HERE / script), *args, stdin=True))

    def listener(self, config: dict[str, Any], endpoint: str) -> HostProcess:
        path = self.network.tmp / f"{self.name}-config.json"
        path.write_text(json.dumps(config))
        proc = self.python("host_listener.py", str(path), endpoint)
        proc.ready = proc.read("ready")
        return proc

    def worker(self, spec: dict[str, Any]) -> HostProcess:
        return self.python("host_worker.py", json.dumps(spec))


class Network:
    """Namespaces (hosts) and veth links between them, on 10.<n>.<link>.0/24."""

    def __init__(self, tmp: Path) -> None:
        self.prefix = f"mpl{secrets.token_hex(3)}"
        self.tmp = tmp
        self.net = 100 + secrets.randbelow(150)
        self.hosts: dict[str, Host] = {}
        self.links: list[tuple[Host, str, Host, str]] = []
        self.processes: list[subprocess.Popen[str]] = []

    def host(self, name: str) -> Host:
        host = Host(self, name)
        _ip("netns", "add", host.ns)
        self.hosts[name] = host
        _ip("-n", host.ns, "link", "set", "lo", "up")
        return host

    def link(self, a: Host, b: Host) -> None:
        index = len(self.links) + 1
        va, vb = f"{self.prefix}{index}a", f"{self.prefix}{index}b"
        # Both ends go straight into the namespaces: no test address ever exists outside them.
        _ip("link", "add", va, "netns", a.ns, "type", "veth", "peer", "name", vb, "netns", b.ns)
        for host, dev, octet, peer in ((a, va, 1, b), (b, vb, 2, a)):
            address = f"10.{self.net}.{index}.{octet}"
            _ip("-n", host.ns, "addr", "add", f"{address}/24", "dev", dev)
            _ip("-n", host.ns, "link", "set", dev, "up")
            host.addresses[peer.name] = address
        self.links.append((a, va, b, vb))

    def set_link(self, a: Host, b: Host, up: bool) -> None:
        """Take the link between ``a`` and ``b`` down (a silent partition) or up, on b's side."""
        for x, _, y, vy in self.links:
            if (x, y) == (a, b):
                _ip("-n", y.ns, "link", "set", vy, "up" if up else "down")
                return
        raise KeyError(f"no link {a.name}-{b.name}")

    def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired, ValueError):
                proc.communicate(timeout=10)
        for host in self.hosts.values():
            subprocess.run(["ip", "netns", "del", host.ns], capture_output=True, timeout=10, check=False)


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Network]:
    """Build hosts with ``network.host(name)`` and links with ``network.link(a, b)``."""
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    net = Network(tmp_path)
    try:
        yield net
    finally:
        net.close()
