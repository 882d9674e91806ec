"""Every config snippet in docs/handlers.md loads, and every one is run by a handler test."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from handler_peers import rsyslog_snippets, snippets

from mplog.config import load_config

HERE = Path(__file__).parent
PLACEHOLDER_VALUES = {
    "DIR": "/tmp/mplog-docs",
    "PORT": "2525",
    "MAXBYTES": "1024",
    "BACKUPS": "3",
    "LEVEL": "6",
    "AT": "02:30:00",
    "SOCKTYPE": "SOCK_STREAM",
    "SOCKET": "/dev/log",
    "CAPACITY": "10",
    "INTERVAL": "5.0",
    "MAX_BUFFER": "100",
    "METHOD": "POST",
    "ENDPOINT": "ipc:///tmp/mplog-docs/collector.sock",
    "TRANSPORT": "tcp",
    "CA": "/tmp/mplog-docs/ca.pem",
    "CERT": "/tmp/mplog-docs/client.pem",
    "KEY": "/tmp/mplog-docs/client.key",
}


def _filled(name: str) -> tuple[str, str]:
    lang, text = snippets()[name]
    for key, value in PLACEHOLDER_VALUES.items():
        text = text.replace(f"@{key}@", value)
    return lang, text


@pytest.mark.parametrize("name", sorted(snippets()))
def test_each_documented_snippet_is_a_valid_config(tmp_path, name):
    lang, text = _filled(name)
    path = tmp_path / f"{name}.{lang}"
    path.write_text(text)
    if name == "nteventlog":
        with pytest.raises(Exception, match="only on Windows"):
            load_config(path)
        return
    config, _ = load_config(path)
    assert config["handlers"]


def test_every_documented_snippet_is_run_by_a_handler_test():
    used = set()
    for module in HERE.glob("test_*.py"):
        used |= set(re.findall(r'(?<!rsyslog_)snippet_file\(\s*"([\w-]+)"', module.read_text()))
    assert set(snippets()) - used == set()
    assert used - set(snippets()) == set()


def test_every_documented_rsyslog_config_is_run_by_a_handler_test():
    used = set()
    for module in HERE.glob("test_*.py"):
        used |= set(re.findall(r'rsyslog_snippet_file\(\s*"([\w-]+)"', module.read_text()))
    assert rsyslog_snippets(), "docs/deployment.md has lost its rsyslog recipes"
    assert set(rsyslog_snippets()) - used == set()
    assert used - set(rsyslog_snippets()) == set()
