"""load_config: every file form gives the same dictConfig; every mistake names its key and its fix."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import pytest

import mplog
from mplog.config import DEFAULT_CONFIG, RuntimeSettings, load_config
from mplog.exceptions import ConfigError
from mplog.listener.settings import limits_for, transport_options_for, worker_level
from mplog.wire import Limits

BASE: dict[str, Any] = {
    "version": 1,
    "formatters": {"plain": {"format": "%(levelname)s %(message)s"}},
    "filters": {"only_app": {"name": "app"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "level": "INFO", "filters": ["only_app"]}
    },
    "loggers": {"app.db": {"level": "DEBUG", "handlers": ["console"], "propagate": False}},
    "root": {"level": "WARNING", "handlers": ["console"]},
    "mplog": {
        "endpoint": "tcp://127.0.0.1:5140",
        "transport": "zmq",
        "limits": {"max_frame_bytes": 1048576, "max_depth": 4},
        "socket": {"sndhwm": 50, "linger": 0.5},
        "worker": {"batch_records": 64, "policy": "drop_newest"},
    },
}

TOML = """
version = 1

[formatters.plain]
format = "%(levelname)s %(message)s"

[filters.only_app]
name = "app"

[handlers.console]
class = "logging.StreamHandler"
formatter = "plain"
level = "INFO"
filters = ["only_app"]

[loggers."app.db"]
level = "DEBUG"
handlers = ["console"]
propagate = false

[root]
level = "WARNING"
handlers = ["console"]

[mplog]
endpoint = "tcp://127.0.0.1:5140"
transport = "zmq"
limits = { max_frame_bytes = 1048576, max_depth = 4 }
socket = { sndhwm = 50, linger = 0.5 }
worker = { batch_records = 64, policy = "drop_newest" }
"""

YAML = """
version: 1
formatters:
  plain: {format: "%(levelname)s %(message)s"}
filters:
  only_app: {name: app}
handlers:
  console: {class: logging.StreamHandler, formatter: plain, level: INFO, filters: [only_app]}
loggers:
  app.db: {level: DEBUG, handlers: [console], propagate: false}
root: {level: WARNING, handlers: [console]}
mplog:
  endpoint: tcp://127.0.0.1:5140
  transport: zmq
  limits: {max_frame_bytes: 1048576, max_depth: 4}
  socket: {sndhwm: 50, linger: 0.5}
  worker: {batch_records: 64, policy: drop_newest}
"""


def expected_pair() -> tuple[dict[str, Any], RuntimeSettings]:
    config = json.loads(json.dumps(BASE))
    runtime = config.pop("mplog")
    config["disable_existing_loggers"] = False
    return config, RuntimeSettings(**runtime)


def with_changes(**changes: Any) -> dict[str, Any]:
    config = json.loads(json.dumps(BASE))
    config.pop("mplog")
    config.update(changes)
    return config


# ---------------------------------------------------------------- the forms


def test_a_dict_config_is_returned_with_defaults_and_the_mplog_section_split_off():
    assert load_config(BASE) == expected_pair()


def test_load_config_never_changes_the_callers_dict():
    original = json.loads(json.dumps(BASE))
    load_config(BASE)
    assert original == BASE


@pytest.mark.parametrize(
    ("suffix", "text"),
    [(".toml", TOML), (".json", json.dumps(BASE)), (".yaml", YAML), (".yml", YAML), (".TOML", TOML)],
)
def test_toml_json_and_yaml_files_give_the_same_config(tmp_path, suffix, text):
    path = tmp_path / f"logging{suffix}"
    path.write_text(text, encoding="utf-8")
    assert load_config(path) == expected_pair()
    assert load_config(str(path)) == expected_pair()


def test_no_config_gives_stderr_at_info():
    config, runtime = load_config(None)
    assert config == DEFAULT_CONFIG and config is not DEFAULT_CONFIG
    assert runtime == RuntimeSettings()
    assert config["root"] == {"level": "INFO", "handlers": ["stderr"]}


def test_the_runtime_section_becomes_limits_and_socket_options():
    _, runtime = load_config(BASE)
    limits = limits_for(runtime.as_dict())
    assert (limits.max_frame_bytes, limits.max_depth, limits.max_records) == (1048576, 4, Limits().max_records)
    options = transport_options_for(runtime.as_dict())
    assert (options.sndhwm, options.linger, options.max_frame_bytes) == (50, 0.5, 1048576)


def test_worker_level_is_the_lowest_level_any_logger_accepts():
    assert worker_level(with_changes(loggers={})) == logging.WARNING
    assert worker_level({"version": 1, "root": {"level": 25}}) == 25
    assert worker_level({"version": 1}) == logging.WARNING
    assert worker_level({"version": 1, "root": {"level": "NOTSET"}}) == logging.DEBUG


def test_worker_level_is_raised_to_the_lowest_level_of_the_handlers_a_logger_reaches():
    # BASE: app.db accepts DEBUG, but its only handler (console, propagate off) takes INFO and up.
    assert worker_level(load_config(BASE)[0]) == logging.INFO
    handlers = {"info": {"class": "logging.NullHandler", "level": "INFO"}, "any": {"class": "logging.NullHandler"}}
    root = {"level": "DEBUG", "handlers": ["info"]}
    assert worker_level({"handlers": handlers, "root": root}) == logging.INFO
    # A logger with a handler of no level of its own takes its DEBUG records...
    assert worker_level({"handlers": handlers, "root": root, "loggers": {"a.b": {"handlers": ["any"]}}}) == 10
    # ...unless the level it inherits is higher: the nearest configured ancestor's, then the root's.
    loggers = {"a": {"level": "WARNING"}, "a.b": {"handlers": ["any"]}}
    assert worker_level({"handlers": handlers, "root": root, "loggers": loggers}) == logging.INFO
    # Propagation reaches the ancestors' handlers until a logger turns it off.
    loggers = {"a": {"level": "DEBUG", "handlers": ["info"]}, "a.b": {"handlers": ["any"], "propagate": False}}
    assert worker_level({"handlers": handlers, "root": {"level": "ERROR"}, "loggers": loggers}) == logging.DEBUG
    loggers = {"a": {"level": "DEBUG", "propagate": False}}
    assert worker_level({"handlers": handlers, "root": root, "loggers": loggers}) == logging.DEBUG  # no handler


# ---------------------------------------------------------------- file problems


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        ("bad.toml", "version = [", ["bad.toml", "is not valid TOML"]),
        ("bad.json", "{version: 1", ["bad.json", "is not valid JSON"]),
        ("bad.yaml", "version: [1", ["bad.yaml", "is not valid YAML"]),
        ("list.json", "[1, 2]", ["list.json", "must hold a table/object at the top level"]),
        ("scalar.yaml", "just text", ["scalar.yaml", "must hold a table/object at the top level"]),
        ("logging.ini", "[loggers]", ["logging.ini", "must end in .toml, .json, .yaml or .yml"]),
    ],
)
def test_a_file_that_cannot_be_read_as_a_config_names_the_file_and_the_problem(tmp_path, name, text, words):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    for word in words:
        assert word in str(info.value)


def test_a_missing_file_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read config file .*nope\.toml.*No such file"):
        load_config(tmp_path / "nope.toml")


def test_a_config_of_the_wrong_type_names_what_is_accepted():
    with pytest.raises(ConfigError, match="config must be a dict, a file path or None, got list"):
        load_config([("version", 1)])  # type: ignore[arg-type]


# ---------------------------------------------------------------- each mistake, named with its fix


@pytest.mark.parametrize(
    ("config", "words"),
    [
        (
            with_changes(handler={}),
            ["unknown top-level key 'handler'", "dictConfig keys are", "runtime settings go under 'mplog'"],
        ),
        (with_changes(endpoint="tcp://x"), ["unknown top-level key 'endpoint'", "under 'mplog'"]),
        (with_changes(version=2), ["version must be 1", "got 2"]),
        (
            with_changes(root={"level": "LOUD"}),
            ["root.level must be a level name such as 'INFO' or a number", "'LOUD'"],
        ),
        (with_changes(root={"level": True}), ["root.level must be a level name", "True"]),
        (
            with_changes(loggers={"app": {"level": "verbose"}}),
            ["loggers.app.level must be a level name", "'verbose'"],
        ),
        (
            with_changes(handlers={"h": {"class": "logging.StreamHandler", "level": "NOISY"}}, root={}),
            ["handlers.h.level must be a level name", "'NOISY'"],
        ),
        (
            with_changes(handlers={"h": {"formatter": "plain"}}, root={}, loggers={}),
            ["handlers.h needs a 'class'", "e.g. 'logging.FileHandler'", "'()' factory"],
        ),
        (
            with_changes(handlers={"h": {"class": "logging.StreamHandler", "formatter": "fancy"}}, root={}, loggers={}),
            ["handlers.h.formatter names 'fancy'", "not defined under 'formatters'"],
        ),
        (
            with_changes(handlers={"h": {"class": "logging.StreamHandler", "filters": ["gone"]}}, root={}, loggers={}),
            ["handlers.h.filters names 'gone'", "not defined under 'filters'"],
        ),
        (
            with_changes(
                handlers={"h": {"class": "logging.StreamHandler", "filters": "only_app"}}, root={}, loggers={}
            ),
            ["handlers.h.filters must be a list of names"],
        ),
        (with_changes(root={"handlers": ["file"]}), ["root.handlers names 'file'", "not defined under 'handlers'"]),
        (
            with_changes(loggers={"app": {"handlers": ["console", "mail"]}}),
            ["loggers.app.handlers names 'mail'", "not defined under 'handlers'"],
        ),
        (
            with_changes(loggers={"app": {"filters": ["nope"]}}),
            ["loggers.app.filters names 'nope'", "not defined under 'filters'"],
        ),
        (with_changes(loggers={"app": {"handlers": "console"}}), ["loggers.app.handlers must be a list of names"]),
        (with_changes(handlers=["console"]), ["handlers must be a table of named entries, got list"]),
        (with_changes(formatters={"plain": "%(message)s"}), ["formatters.plain must be a table, got str"]),
        (with_changes(root=["console"]), ["root must be a table, got list"]),
        (
            with_changes(handlers={"h": {"class": "logging.StreamHandler", "stream": sys.stderr}}, root={}, loggers={}),
            ["only plain values", "applied in the listener process", "'ext://module.name'"],
        ),
        (
            with_changes(
                handlers={"ev": {"class": "logging.handlers.NTEventLogHandler", "appname": "x"}}, root={}, loggers={}
            ),
            ["handlers.ev", "NTEventLogHandler", "works only on Windows", "use logging.handlers.SysLogHandler"],
        ),
        # Each of these passed mplog check and the listener then refused it at start.
        (
            with_changes(disable_existing_loggers="no"),
            ["disable_existing_loggers must be true or false, got 'no'"],
        ),
        (
            with_changes(incremental=True),
            ["incremental = true", "the listener process applies its config once", "remove incremental"],
        ),
        (with_changes(incremental="yes"), ["incremental must be true or false, got 'yes'"]),
        (
            with_changes(
                handlers={"mem": {"class": "logging.handlers.MemoryHandler", "capacity": 10, "target": "nofile"}},
                root={},
                loggers={},
            ),
            ["handlers.mem.target names 'nofile', which is not defined under 'handlers'", "(defined: mem)"],
        ),
        (
            with_changes(formatters={"f": {"format": "{message}", "style": "%"}}),
            [
                "formatters.f.format '{message}' does not fit style '%'",
                "Invalid format '{message}' for '%' style",
                "it is written in the '{' style: set formatters.f.style = '{'",
            ],
        ),
        (
            with_changes(formatters={"f": {"format": "%(message", "style": "%"}}),
            ["formatters.f.format '%(message' does not fit style '%'", "write its fields as %(message)s"],
        ),
        (
            with_changes(formatters={"f": {"format": "%(message)s", "style": "x"}}),
            ["formatters.f.style must be '%', '{' or '$', got 'x'"],
        ),
        (
            with_changes(filters={"even": {"()": "__main__.OnlyEven"}}, handlers={}, root={}, loggers={}),
            [
                "filters.even.() names '__main__.OnlyEven'",
                "applied in the listener process, where __main__ is not your script",
                "put OnlyEven in a module the listener can import",
            ],
        ),
        (
            with_changes(
                handlers={"c": {"class": "logging.StreamHandler", "stream": "ext://__main__.out"}}, root={}, loggers={}
            ),
            ["handlers.c.stream names 'ext://__main__.out'", "where __main__ is not your script"],
        ),
        (
            with_changes(formatters={"plain": {"()": "__main__.Json"}}),
            ["formatters.plain.() names '__main__.Json'", "put Json in a module the listener can import"],
        ),
    ],
    ids=lambda value: None if isinstance(value, dict) else "-".join(value)[:60],
)
def test_each_misconfiguration_names_the_key_and_the_fix(config, words):
    if sys.platform == "win32" and "NTEventLogHandler" in words:
        pytest.skip("NTEventLogHandler is valid on Windows")
    with pytest.raises(ConfigError) as info:
        load_config(config)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(
    ("section", "words"),
    [
        ({"bogus": 1}, ["unknown key mplog.bogus", "known keys:", "endpoint", "limits"]),
        ({"transport": "tcp"}, ["mplog.transport must be 'zmq' or 'multiprocessing'", "'tcp'"]),
        ({"insecure": "yes"}, ["mplog.insecure must be true or false", "'yes'"]),
        ({"endpoint": 5140}, ["mplog.endpoint must be a string", "tcp://127.0.0.1:5140", "5140"]),
        ({"endpoint": "http://127.0.0.1:80"}, ["'http://127.0.0.1:80' has no known scheme", "ipc://PATH"]),
        (
            {"endpoint": "tcp://127.0.0.1"},
            ["mplog.endpoint 'tcp://127.0.0.1': no port; add one, e.g. 'tcp://127.0.0.1:5170'"],
        ),
        (
            {"endpoint": "tcp://[::1]"},
            ["mplog.endpoint 'tcp://[::1]': no port; add one, e.g. 'tcp://[::1]:5170'"],
        ),
        (
            {"endpoint": "tcp://127.0.0.1:99999"},
            ["mplog.endpoint 'tcp://127.0.0.1:99999': the port '99999' is not a number from 0 to 65535"],
        ),
        (
            {"endpoint": "ipc:///tmp/s.sock, tcp://127.0.0.1"},
            ["mplog.endpoint 'tcp://127.0.0.1': no port"],
        ),
        (
            {"endpoint": "ipc:///tmp/" + "d" * 120 + "/x.sock"},
            ["mplog.endpoint 'ipc:///tmp/ddd", "its path is 132 bytes, more than the", "choose a shorter path"],
        ),
        ({"limits": {"max_frame": 10}}, ["mplog.limits has an unknown key", "max_frame_bytes", "max_depth"]),
        ({"limits": {"max_depth": "8"}}, ["mplog.limits.max_depth must be a positive int", "'8'"]),
        ({"limits": {"max_records": 0}}, ["mplog.limits.max_records must be a positive int", "got 0"]),
        ({"limits": [1]}, ["mplog.limits must be a table"]),
        ({"socket": {"hwm": 10}}, ["mplog.socket has an unknown key", "sndhwm", "linger"]),
        ({"socket": {"linger": "1s"}}, ["mplog.socket.linger must be a number of seconds >= 0", "'1s'"]),
        ({"socket": {"sndhwm": 2.5}}, ["mplog.socket.sndhwm must be a positive int", "2.5"]),
        ({"socket": {"heartbeat_ivl": -1}}, ["mplog.socket.heartbeat_ivl must be a number of seconds >= 0"]),
        ({"worker": {"batch": 10}}, ["mplog.worker", "unknown option 'batch'", "batch_records"]),
        ({"worker": {"policy": "drop"}}, ["mplog.worker", "policy must be one of block, drop_newest, drop_oldest"]),
        ({"worker": {"batch_records": 0}}, ["mplog.worker", "batch_records must be a positive int"]),
        ({"worker": {"level": "LOUD"}}, ["mplog.worker.level must be a level name", "'LOUD'"]),
        ("zmq", ["mplog must be a table of runtime settings, got str"]),
    ],
    ids=lambda value: None if isinstance(value, (dict, str)) else "-".join(value)[:60],
)
def test_each_bad_runtime_setting_names_the_key_and_the_fix(section, words):
    config = with_changes(mplog=section)
    with pytest.raises(ConfigError) as info:
        load_config(config)
    for word in words:
        assert word in str(info.value)


def test_a_formatter_that_turns_validation_off_or_has_its_own_class_is_not_checked_against_a_style():
    config = with_changes(
        formatters={
            "plain": {"format": "%(message)s"},
            "free": {"format": "{message}", "validate": False},
            "own": {"()": "mplog.formatters.JSONFormatter", "format": "{message}"},
        }
    )
    assert load_config(config)[0]["formatters"] == config["formatters"]


def test_a_memory_handler_whose_target_is_defined_is_accepted():
    handlers = {
        "console": {"class": "logging.StreamHandler"},
        "mem": {"class": "logging.handlers.MemoryHandler", "capacity": 10, "target": "console"},
    }
    assert load_config(with_changes(handlers=handlers, root={}, loggers={}))[0]["handlers"] == handlers


@pytest.mark.parametrize(
    "second",
    ["logging.FileHandler", "logging.handlers.TimedRotatingFileHandler", "logging.handlers.WatchedFileHandler"],
)
def test_two_handlers_on_one_file_are_refused_when_one_rotates_it(tmp_path, second):
    # An operator outsider's config (left open at an earlier stop): the rollover of one renames
    # the file away from the other, which goes on writing to the renamed backup.
    (tmp_path / "logs").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "logs")
    handlers = {
        "all": {"class": "logging.handlers.RotatingFileHandler", "filename": str(tmp_path / "logs" / "app.log")},
        "errors": {"class": second, "filename": str(tmp_path / "link" / "." / "app.log"), "level": "ERROR"},
    }
    with pytest.raises(ConfigError) as refused:
        load_config(with_changes(handlers=handlers, root={"handlers": ["all", "errors"]}, loggers={}))
    text = str(refused.value)
    assert "handlers.all and handlers.errors both write" in text and repr(str(tmp_path / "logs" / "app.log")) in text
    assert "give each handler its own filename, or use one handler" in text


def test_two_plain_file_handlers_on_one_file_are_still_taken(tmp_path):
    handlers = {
        "all": {"class": "logging.FileHandler", "filename": str(tmp_path / "app.log")},
        "errors": {"class": "logging.FileHandler", "filename": str(tmp_path / "app.log"), "level": "ERROR"},
    }
    assert load_config(with_changes(handlers=handlers, root={"handlers": ["all", "errors"]}, loggers={}))


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="dictConfig takes a QueueHandler's listener and handlers")
@pytest.mark.parametrize("key", ["listener", "handlers"])
def test_a_queue_handler_listener_or_handlers_key_before_python_3_12_names_the_key_and_the_version(key):
    queue_handler: dict[str, Any] = {"class": "logging.handlers.QueueHandler", "queue": "ext://queue.Queue"}
    queue_handler[key] = "logging.handlers.QueueListener" if key == "listener" else ["console"]
    config = with_changes(handlers={"console": {"class": "logging.StreamHandler"}, "q": queue_handler})
    with pytest.raises(ConfigError) as info:
        load_config(config)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert str(info.value) == (
        f"handlers.q.{key}: a QueueHandler's {key!r} key needs Python 3.12 or later (this is Python {version}); "
        "remove it, or use mplog.handlers.QueuedHandler, whose 'handlers' works on every Python"
    )


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:0", "tcp://*:5140", "tcp://[::1]:5140", "ipc:///tmp/a.sock"])
def test_an_endpoint_that_can_be_bound_is_accepted(endpoint):
    assert load_config(with_changes(mplog={"endpoint": endpoint}))[1].endpoint == endpoint


def test_start_listener_names_an_endpoint_argument_without_a_port_before_any_process_starts():
    with pytest.raises(ConfigError) as info:
        mplog.Listener(endpoint="tcp://127.0.0.1")
    assert str(info.value) == (
        "endpoint 'tcp://127.0.0.1': no port; add one, e.g. 'tcp://127.0.0.1:5170' (or ':*' for any free port)"
    )
