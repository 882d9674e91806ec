"""Real peers for the handler tests: worker processes, rsyslogd, an SMTP server, an HTTP server.

Importable from worker processes (spawn/forkserver): only module-level functions here.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import logging
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from helpers import payload, wait_for

import mplog

HERE = Path(__file__).parent
DOCS = HERE.parents[2] / "docs" / "handlers.md"
DEPLOYMENT = HERE.parents[2] / "docs" / "deployment.md"  # its "Forwarding into rsyslog" recipes
RSYSLOGD = shutil.which("rsyslogd") or ("/usr/sbin/rsyslogd" if os.path.exists("/usr/sbin/rsyslogd") else None)


# ---------------------------------------------------------------- workers


def log_worker(
    endpoint: str, producer: int, count: int, size: int, logger: str, levels: list[int], pace: float = 0.0
) -> None:
    """A worker process: setup_worker(), then ``count`` numbered records cycling through ``levels``.

    With ``pace``, it sleeps that long after each record (records spread over time).
    """
    mplog.setup_worker(endpoint)
    log = logging.getLogger(logger)
    for seq in range(count):
        log.log(levels[seq % len(levels)], "%s", payload(producer, seq, size))
        if pace:
            time.sleep(pace)


def text_worker(endpoint: str, logger: str, texts: list[str]) -> None:
    """A worker process that logs each of ``texts`` at INFO."""
    mplog.setup_worker(endpoint)
    for text in texts:
        logging.getLogger(logger).info("%s", text)


def start_workers(
    endpoint: str,
    workers: int,
    count: int,
    *,
    method: str = "forkserver",
    first: int = 0,
    logger: str = "app",
    pace: float = 0.0,
) -> list[Any]:
    """Start workers that log numbered INFO records; the caller joins them (see join_workers)."""
    context = multiprocessing.get_context(method)
    procs = [
        context.Process(target=log_worker, args=(endpoint, first + p, count, 0, logger, [logging.INFO], pace))
        for p in range(workers)
    ]
    for proc in procs:
        proc.start()
    return procs


def join_workers(procs: list[Any], timeout: float = 60) -> None:
    for proc in procs:
        proc.join(timeout)
    codes = [proc.exitcode for proc in procs]
    for proc in procs:
        if proc.exitcode is None:
            proc.kill()
            proc.join(5)
    assert codes == [0] * len(procs), f"worker exit codes {codes}"


def run_workers(
    endpoint: str,
    workers: int,
    count: int,
    *,
    size: int = 0,
    logger: str = "app",
    levels: list[int] | None = None,
    method: str = "forkserver",
    first: int = 0,
    pace: float = 0.0,
) -> None:
    """Start ``workers`` processes numbered from ``first``; each logs ``count`` records; wait for all."""
    context = multiprocessing.get_context(method)
    procs = [
        context.Process(
            target=log_worker, args=(endpoint, first + p, count, size, logger, levels or [logging.INFO], pace)
        )
        for p in range(workers)
    ]
    for proc in procs:
        proc.start()
    join_workers(procs)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports() -> int:
    """A port free for both TCP and UDP on 127.0.0.1."""
    for _ in range(50):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


def wait_port(port: int, timeout: float = 10.0) -> None:
    def connectable() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
        except OSError:
            return False
        return True

    wait_for(connectable, timeout)


# ---------------------------------------------------------------- docs snippets

_SNIPPET = re.compile(r"```(?P<lang>toml|json|yaml)\n# snippet: (?P<name>[\w-]+)\n(?P<body>.*?)```", re.S)
_RSYSLOG_SNIPPET = re.compile(r"```rsyslog\n# rsyslog: (?P<name>[\w-]+)\n(?P<body>.*?)```", re.S)


def snippets() -> dict[str, tuple[str, str]]:
    """Every config snippet of docs/handlers.md and docs/deployment.md: name -> (language, text)."""
    found = {}
    for page in (DOCS, DEPLOYMENT):
        for match in _SNIPPET.finditer(page.read_text(encoding="utf-8")):
            found[match["name"]] = (match["lang"], match["body"])
    return found


def rsyslog_snippets() -> dict[str, str]:
    """Every rsyslog config of the docs (```rsyslog blocks starting ``# rsyslog: NAME``): name -> text."""
    found = {}
    for page in (DOCS, DEPLOYMENT):
        for match in _RSYSLOG_SNIPPET.finditer(page.read_text(encoding="utf-8")):
            found[match["name"]] = match["body"]
    return found


def rsyslog_snippet_file(name: str, directory: Path, **values: Any) -> Path:
    """Write the documented rsyslog config ``name`` with each ``@KEY@`` replaced; return the file."""
    text = rsyslog_snippets()[name]
    for key, value in values.items():
        text = text.replace(f"@{key.upper()}@", str(value))
    left = re.findall(r"@[A-Z_]+@", text)
    assert not left, f"rsyslog snippet {name} still has placeholders {left}"
    path = directory / f"{name}.conf"
    path.write_text(text, encoding="utf-8")
    return path


def snippet_file(name: str, directory: Path, **values: Any) -> Path:
    """Write snippet ``name`` with each ``@KEY@`` replaced by ``values[key]``; return the file."""
    lang, text = snippets()[name]
    for key, value in values.items():
        text = text.replace(f"@{key.upper()}@", str(value))
    left = re.findall(r"@[A-Z_]+@", text)
    assert not left, f"snippet {name} still has placeholders {left}"
    path = directory / f"{name}.{lang}"
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- rsyslogd

RSYSLOG_CONF = """\
global(workDirectory="{dir}" maxMessageSize="64k")
module(load="imuxsock" SysSock.Use="off")
module(load="imudp")
module(load="imtcp" AddtlFrameDelimiter="0")
input(type="imuxsock" Socket="{sock}" CreatePath="on" RateLimit.Interval="0")
input(type="imudp" address="127.0.0.1" port="{port}" rcvbufSize="8m")
input(type="imtcp" address="127.0.0.1" port="{port}")
template(name="mplogtest" type="string"
         string="%syslogfacility-text%.%syslogseverity-text% tag=%syslogtag% msg=%msg%\\n")
*.* action(type="omfile" file="{out}" template="mplogtest")
"""


def terminate(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM a peer server and wait for it (bounded); SIGKILL it if it does not stop."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class Rsyslog:
    """rsyslogd on its own config: UDP and TCP on one free loopback port, a private unix socket."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_ports()
        self.sock = str(directory / "log.sock")
        self.out = directory / "out.log"
        self.conf = directory / "rsyslog.conf"
        self.pidfile = directory / "rsyslogd.pid"
        self.conf.write_text(RSYSLOG_CONF.format(dir=directory, sock=self.sock, port=self.port, out=self.out))
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> Rsyslog:
        assert RSYSLOGD is not None
        with open(self.dir / "rsyslogd.stderr", "ab") as errors:
            self.proc = subprocess.Popen(
                [RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.pidfile)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
            )
        self.starts += 1
        wait_port(self.port, 15)
        wait_for(lambda: os.path.exists(self.sock), 10)
        probe = f"probe-{self.starts}"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:

            def probed() -> bool:
                udp.sendto(f"<14>probe: {probe}".encode(), ("127.0.0.1", self.port))
                time.sleep(0.05)
                return any(probe in line for line in self.lines())

            wait_for(probed, 15)
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        terminate(self.proc)
        self.proc = None

    def lines(self) -> list[str]:
        try:
            return self.out.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def records(self) -> list[str]:
        """Output lines that carry a numbered payload (rsyslog's own messages left out)."""
        return [line for line in self.lines() if " msg=" in line and re.search(r"P\d+:\d{8}:", line)]


# ---------------------------------------------------------------- SMTP


class SmtpServer:
    """tests/integration/handlers/smtp_sink.py in a subprocess on a fixed free port."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen[str] | None = None

    def start(self, *, delay: float = 0.0, reject: bool = False) -> SmtpServer:
        args = [sys.executable, str(HERE / "smtp_sink.py"), "--port", str(self.port), "--dir", str(self.dir)]
        if delay:
            args += ["--delay", str(delay)]
        if reject:
            args.append("--reject")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", f"smtp sink did not start: {line!r}"
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        terminate(self.proc)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self.proc = None

    def mails(self) -> list[EmailMessage]:
        found = []
        for path in sorted(self.dir.glob("*.eml")):
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            found.append(message)
        return found


def mail_lines(message: EmailMessage) -> list[str]:
    body = message.get_body()
    assert body is not None
    return str(body.get_content()).splitlines()


# ---------------------------------------------------------------- HTTP


class HttpSink:
    """http.server in a thread on a free port, requiring Basic auth; records every request."""

    def __init__(self, user: str = "log", password: str = "s3cret") -> None:
        sink = self
        self.requests: list[dict[str, Any]] = []
        self.rejected = 0
        self.refuse: Callable[[dict[str, list[str]]], bool] = lambda fields: False  # answered 503, not recorded
        self.refused = 0
        self.expected_auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def _record(self, fields: dict[str, list[str]]) -> None:
                if self.headers.get("Authorization") != sink.expected_auth:
                    with sink._lock:
                        sink.rejected += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                if sink.refuse(fields):
                    with sink._lock:
                        sink.refused += 1
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                with sink._lock:
                    sink.requests.append(
                        {"method": self.command, "path": urllib.parse.urlsplit(self.path).path, "fields": fields}
                    )
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                self._record(urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length).decode()
                self._record(urllib.parse.parse_qs(body))

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def start(self) -> HttpSink:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)[:2000]
