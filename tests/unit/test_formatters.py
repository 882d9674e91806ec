"""JSONFormatter: every field and extra, exceptions split out, one valid JSON object per line."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mplog.formatters import RECORD_FIELDS, JSONFormatter, split_exception
from mplog.wire import Sender, build_frame, decode_frame, encode_record, encode_sender, make_log_record


def _record(msg: str = "hello %s", args: tuple[object, ...] = ("world",), **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("app.db", logging.WARNING, "/src/app/db.py", 42, msg, args, None, func="query")
    record.__dict__.update(extra)
    return record


def _through_the_wire(record: logging.LogRecord) -> logging.LogRecord:
    """What the listener's handlers see: encode in the worker, decode in the listener."""
    frame = build_frame(encode_sender(Sender("h", 1, 0.0, 0)), 0, 0, 0, [encode_record(record)])
    (fields,) = decode_frame(frame).records
    return make_log_record(fields, "worker-host")


def _boom(message: str) -> logging.LogRecord:
    try:
        raise KeyError(message)
    except KeyError:
        record = _record()
        record.exc_info = sys.exc_info()
    return record


def test_every_record_field_and_every_extra_is_written_under_its_own_name():
    line = JSONFormatter().format(_record(user="ana", attempt=3, tags=["a", "b"]))
    obj = json.loads(line)
    assert list(obj)[: 1 + len(RECORD_FIELDS)] == ["timestamp", *RECORD_FIELDS]
    assert obj["message"] == "hello world"
    assert (obj["name"], obj["levelname"], obj["levelno"], obj["lineno"], obj["funcName"]) == (
        "app.db",
        "WARNING",
        30,
        42,
        "query",
    )
    assert (obj["user"], obj["attempt"], obj["tags"]) == ("ana", 3, ["a", "b"])
    assert obj["timestamp"].endswith("+00:00")
    assert "exc_type" not in obj
    assert "stack_info" not in obj


def test_a_record_from_the_wire_keeps_its_extras_and_the_listener_hostname():
    obj = json.loads(JSONFormatter().format(_through_the_wire(_record(order=17))))
    assert obj["message"] == "hello world"
    assert obj["order"] == 17
    assert obj["hostname"] == "worker-host"


def test_a_local_exception_is_split_into_type_message_and_traceback():
    obj = json.loads(JSONFormatter().format(_boom("missing")))
    assert obj["exc_type"] == "KeyError"
    assert obj["exc_message"] == "'missing'"
    assert obj["exc_traceback"].startswith("Traceback (most recent call last):")
    assert obj["exc_traceback"].endswith("KeyError: 'missing'")


def test_an_exception_with_a_multi_line_message_keeps_type_and_message_across_the_wire():
    class PaymentError(Exception):
        pass

    try:
        raise PaymentError("card declined\nretry later")
    except PaymentError:
        record = _record()
        record.exc_info = sys.exc_info()
    obj = json.loads(JSONFormatter().format(_through_the_wire(record)))
    assert obj["exc_type"] == f"{__name__}.{PaymentError.__qualname__}"
    assert obj["exc_message"] == "card declined\nretry later"
    assert obj["exc_traceback"].splitlines()[0] == "Traceback (most recent call last):"
    assert "\n" not in JSONFormatter().format(_through_the_wire(record))


def test_a_frame_from_another_sender_without_exception_extras_falls_back_to_the_last_traceback_line():
    record = _record(exc_text="Traceback (most recent call last):\n  File 'x', line 1\nValueError: bad input")
    obj = json.loads(JSONFormatter().format(record))
    assert (obj["exc_type"], obj["exc_message"]) == ("ValueError", "bad input")
    assert split_exception("Traceback ...\nmodule.Error") == ("module.Error", "")
    assert split_exception("  +---------------- 1 ----------------") == (None, None)


@pytest.mark.parametrize(
    "text",
    [
        "line one\n2024-01-01 CRITICAL forged",
        "carriage\rreturn",
        "\x1b[2Jclear screen",
        "nul\x00byte",
        "next line\x85here",
        "line\u2028separator\u2029paragraph",
        "<0>leading pri",
        "lone \udcff surrogate",
        "del\x7f",
    ],
)
def test_control_characters_never_split_a_line_and_the_text_round_trips(text):
    line = JSONFormatter().format(_record("%s", (text,), **{"extra\nkey": text}))
    assert len(line.splitlines()) == 1
    assert "\x1b" not in line
    line.encode("utf-8")  # writable by a strict UTF-8 stream
    obj = json.loads(line)
    assert obj["message"] == text
    assert obj["extra\nkey"] == text


def test_values_json_cannot_carry_become_strings_instead_of_invalid_json():
    class Opaque:
        def __repr__(self) -> str:
            return "<Opaque>"

    class Hostile:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    record = _record(nan=float("nan"), inf=float("-inf"), obj=Opaque(), bad=Hostile(), raw=b"\xff\x00", s={1})
    obj = json.loads(JSONFormatter().format(record))  # json.loads rejects NaN only if told; check the text too
    assert (obj["nan"], obj["inf"], obj["obj"], obj["raw"], obj["s"]) == ("nan", "-inf", "<Opaque>", "\\xff\x00", [1])
    assert obj["bad"] == "<unrepresentable Hostile: RuntimeError>"
    assert "NaN" not in JSONFormatter().format(record)


def test_a_formatter_configured_through_dictconfig_adds_static_keys_and_chooses_fields():
    stream = io.StringIO()
    logging.config.dictConfig(
        {
            "version": 1,
            "formatters": {
                "json": {
                    "()": "mplog.formatters.JSONFormatter",
                    "fields": ["name", "levelname", "message"],
                    "static": {"service": "billing"},
                    "sort_keys": True,
                }
            },
            "handlers": {"s": {"class": "logging.StreamHandler", "stream": stream, "formatter": "json"}},
            "loggers": {"dc": {"handlers": ["s"], "level": "INFO", "propagate": False}},
            "disable_existing_loggers": False,
        }
    )
    try:
        logging.getLogger("dc").info("paid %d", 3, extra={"order": 9})
    finally:
        logging.getLogger("dc").handlers.clear()
    (line,) = stream.getvalue().splitlines()
    obj = json.loads(line)
    assert list(obj) == sorted(obj)
    del obj["timestamp"]
    assert obj == {"levelname": "INFO", "message": "paid 3", "name": "dc", "order": 9, "service": "billing"}


def test_an_unknown_field_name_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"unknown \['mesage'\]; choose from name, levelname"):
        JSONFormatter(fields=["mesage"])


@settings(max_examples=200, deadline=None, derandomize=True)
@given(message=st.text(), key=st.text(min_size=1), value=st.one_of(st.text(), st.floats(), st.binary()))
def test_any_content_gives_exactly_one_line_of_valid_json(message, key, value):
    record = _record("%s", (message,))
    record.__dict__["x_" + key] = value
    line = JSONFormatter().format(record)
    assert len(line.splitlines()) == 1
    line.encode("utf-8")
    assert json.loads(line)["message"] == message
