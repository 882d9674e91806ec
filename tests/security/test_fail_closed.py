"""CURVE fails closed: an empty or partial ``mplog.curve`` table is a ConfigError naming the missing key.

Never plaintext because a table was left empty: ``start_listener`` raises ConfigError,
``mplog listen`` and ``mplog check`` exit 2, each naming the key to set.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from lifecycle_helpers import cli_env, write_config

import mplog
from mplog.config import load_config
from mplog.exceptions import ConfigError
from mplog.transports import curve as security

EXIT_CONFIG = 2


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, str]:
    security.generate_key_pair(tmp_path / "server", "server")
    security.generate_key_pair(tmp_path / "authorized", "client")
    return {
        "server_secret_key": str(tmp_path / "server" / "server.key_secret"),
        "authorized_keys": str(tmp_path / "authorized"),
    }


# (table, the key the error must name)
TABLES: dict[str, tuple[dict[str, Any], str]] = {
    "empty": ({}, "server_secret_key"),
    "only-authorized_keys": ({"authorized_keys": "@authorized_keys"}, "server_secret_key"),
    "only-allow_any": ({"allow_any": True}, "server_secret_key"),
    "allow_any-false": ({"allow_any": False}, "server_secret_key"),
    "only-server_secret_key": ({"server_secret_key": "@server_secret_key"}, "authorized_keys"),
}


def _config(case: str, keys: dict[str, str]) -> tuple[dict[str, Any], str]:
    table, missing = TABLES[case]
    curve = {
        key: keys[value[1:]] if isinstance(value, str) and value.startswith("@") else value
        for key, value in table.items()
    }
    return {"version": 1, "mplog": {"endpoint": "tcp://127.0.0.1:*", "curve": curve}}, missing


@pytest.mark.parametrize("case", list(TABLES))
def test_start_listener_refuses_an_empty_or_partial_curve_table_naming_the_missing_key(case, keys):
    config, missing = _config(case, keys)
    with pytest.raises(ConfigError, match=missing):
        load_config(config)
    listener = None
    try:
        with pytest.raises(ConfigError, match=missing):
            listener = mplog.start_listener(config, route_parent=False, export_env=False)
    finally:
        if listener is not None:  # it started: plaintext on loopback (the bug)
            listener.stop()


@pytest.mark.integration
@pytest.mark.parametrize("command", ["check", "listen"])
@pytest.mark.parametrize("case", list(TABLES))
def test_mplog_check_and_listen_exit_2_on_an_empty_or_partial_curve_table(tmp_path, keys, case, command):
    config, missing = _config(case, keys)
    path = write_config(tmp_path / "collector.json", config)
    argv = [sys.executable, "-m", "mplog", command, *(["--config"] if command == "listen" else []), str(path)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=cli_env(), check=False)
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert "listening on" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mplog: config error: "), lines
    assert f"mplog.curve.{missing}" in lines[0] or (missing in lines[0] and "mplog.curve" in lines[0]), lines
