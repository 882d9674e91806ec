"""Config mistakes found in real processes: a YAML file without PyYAML, and start_listener refusing in the parent.

Moved from tests/unit/test_config.py (unit tests start no processes).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psutil
import pytest

import mplog
from mplog.exceptions import ConfigError

# The dictConfig part of tests/unit/test_config.py's BASE: a config that is right but for
# the one change each test makes.
BASE: dict[str, Any] = {
    "version": 1,
    "formatters": {"plain": {"format": "%(levelname)s %(message)s"}},
    "filters": {"only_app": {"name": "app"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "level": "INFO", "filters": ["only_app"]}
    },
    "loggers": {"app.db": {"level": "DEBUG", "handlers": ["console"], "propagate": False}},
    "root": {"level": "WARNING", "handlers": ["console"]},
}
YAML = "version: 1\n"  # never parsed: the import of PyYAML fails first


def with_changes(**changes: Any) -> dict[str, Any]:
    config = json.loads(json.dumps(BASE))
    config.update(changes)
    return config


@pytest.mark.timeout(60)
def test_yaml_without_pyyaml_says_how_to_install_it(tmp_path):
    path = tmp_path / "logging.yaml"
    path.write_text(YAML, encoding="utf-8")
    script = textwrap.dedent(
        """
        import sys
        sys.modules["yaml"] = None  # makes "import yaml" raise ImportError, as if PyYAML were absent
        from mplog.config import load_config
        from mplog.exceptions import ConfigError
        try:
            load_config(sys.argv[1])
        except ConfigError as exc:
            print(exc)
        else:
            print("loaded")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=50, check=False
    )
    assert proc.returncode == 0, proc.stderr
    message = proc.stdout.strip()
    assert "is YAML but PyYAML is not installed" in message
    assert "pip install 'mplog[yaml]'" in message
    assert "use a .toml or .json file" in message


# ---------------------------------------------------------------- start_listener refuses, in the parent


def _children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if "mplog.listener.process" in " ".join(p.cmdline())]


@pytest.mark.integration
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("config", "words"),
    [
        (with_changes(handlres={}), ["unknown top-level key 'handlres'"]),
        (with_changes(mplog={"socket": {"hwm": 1}}), ["mplog.socket has an unknown key"]),
        (with_changes(root={"handlers": ["nope"]}), ["root.handlers names 'nope'"]),
    ],
    ids=["top-level-key", "socket-key", "handler-reference"],
)
def test_start_listener_refuses_a_statically_bad_config_before_starting_anything(config, words):
    before = _children()
    with pytest.raises(ConfigError) as info:
        mplog.start_listener(config)
    for word in words:
        assert word in str(info.value)
    assert _children() == before


@pytest.mark.integration
@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["missing-class", "missing-directory", "bad-constructor-argument"])
def test_start_listener_raises_config_error_in_the_parent_for_what_only_dictconfig_finds(tmp_path, case):
    if case == "missing-class":
        handler = {"class": "logging.handlers.NoSuchHandler"}
        words = ["the listener could not apply the config", "handler 'h'", "NoSuchHandler"]
    elif case == "missing-directory":
        handler = {"class": "logging.FileHandler", "filename": str(tmp_path / "no" / "such" / "dir" / "x.log")}
        words = ["the listener could not apply the config", "handler 'h'", "No such file or directory"]
    else:
        handler = {"class": "logging.StreamHandler", "colour": "red"}
        words = ["the listener could not apply the config", "handler 'h'", "colour"]
    config = {"version": 1, "handlers": {"h": handler}, "root": {"handlers": ["h"]}}
    env_before = {key: mplog.worker.env.inherited_setting(key) for key in ("MPLOG_ENDPOINT", "MPLOG_LEVEL")}
    root_before = list(logging.getLogger().handlers)
    with pytest.raises(ConfigError) as info:
        mplog.start_listener(config)
    for word in words:
        assert word in str(info.value)
    assert _children() == []  # the listener process was reaped
    assert {key: mplog.worker.env.inherited_setting(key) for key in env_before} == env_before  # nothing exported
    assert logging.getLogger().handlers == root_before  # the parent's logging untouched
    assert not any(Path(tmp_path).rglob("*.log"))
