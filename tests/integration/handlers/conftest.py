"""Fixtures for the handler tests: rsyslogd, an SMTP server and an HTTP server on free ports."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from handler_peers import RSYSLOGD, HttpSink, Rsyslog, SmtpServer


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[Rsyslog]:
    """A running rsyslogd writing facility.severity, tag and message of every record to ``.out``."""
    if RSYSLOGD is None:
        pytest.skip("rsyslogd is not installed (apt-get install rsyslog); .ci/run installs it")
    daemon = Rsyslog(tmp_path / "rsyslog")
    try:
        yield daemon.start()
    finally:
        daemon.stop()


@pytest.fixture
def smtp_server(tmp_path: Path) -> Iterator[SmtpServer]:
    """An SMTP server object, not started: ``.start(delay=..., reject=...)``; stopped at the end."""
    server = SmtpServer(tmp_path / "mail")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def http_sink() -> Iterator[HttpSink]:
    sink = HttpSink().start()
    try:
        yield sink
    finally:
        sink.stop()
