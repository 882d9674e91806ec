"""Frames of many kinds and a logging config with a handler for every format the generic path supports.

Shared by the tests that hold a frame path to the generic path's bytes (tests/unit/test_frame_format.py,
tests/unit/test_wire_columns.py).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from helpers import payload

from mplog.wire import Sender, build_frame, decode_frame, encode_record, encode_sender

BASE = 1_700_000_000.25
FRAME = 64

# Every format the generic path supports. The compiled ones (built from the wire fields) are
# the handlers of logger "bulk" and take the frame path; the others are root's and leave a
# frame of a logger that propagates to root to the record path.
COMPILED = {
    "plain": "%(message)s",
    "full": "%(asctime)s %(process)d %(levelname)s %(name)s %(message)s",
    "asctime_first": "%(asctime)s %(message)s",
    "asctime_inside": "%(levelname)s [%(asctime)s] %(message)s",
    "fields": "%(name)s|%(levelno)d|%(filename)s:%(lineno)d|%(funcName)s|%(threadName)s|%(msecs)03d|%(message)s",
    "conversions": "%%(name)s %(levelname)-8s|%(message).12s|%(msecs)03d|%(lineno)5d|%(created)f"
    "|%(relativeCreated).1f|%(process)x|%(msg)s|%(taskName)s|%(stack_info).9s",
    "optional": "%(process)s %(thread)s %(processName)s %(taskName)s %(message)r",
    "percent": "100%% %(name)s %(message)s %%",
    "constant_only": "%(name)s %(levelname)s",
    "one_field": "%(levelname)s",
    "repr_ascii": "%(name)r %(levelname)a %(lineno)c %(message)s",
}
RECORD_PATH = {
    "hostname": "%(hostname)s %(message)s",
    "extra": "%(user)s %(message)s",
    "twice": "%(asctime)s %(message)s %(asctime)s",
    "args": "%(args)s %(exc_info)s %(message)s",
}
FORMATS = {**COMPILED, **RECORD_PATH}


class UtcFormatter(logging.Formatter):
    converter = time.gmtime


class OwnTimeFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return f"T{int(record.created) % 1000}"


def frame_config(directory: Path) -> dict[str, Any]:
    def file(name: str, formatter: str | None, **more: Any) -> dict[str, Any]:
        spec = {"class": "logging.FileHandler", "filename": str(directory / f"{name}.log"), "encoding": "utf-8"}
        if formatter:
            spec["formatter"] = formatter
        return {**spec, **more}

    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            **{name: {"format": fmt} for name, fmt in FORMATS.items()},
            "datefmt": {"format": "%(asctime)-24s|%(message)s", "datefmt": "%Y/%m/%d %H.%M.%S"},
            "utc": {"()": UtcFormatter, "format": FORMATS["full"]},
            "owntime": {"()": OwnTimeFormatter, "format": "%(asctime)s %(message)s"},
            "brace": {"format": "{asctime} {levelname} {message}", "style": "{"},
            "defaults": {"()": "logging.Formatter", "fmt": "%(color)s %(message)s", "defaults": {"color": "none"}},
        },
        "handlers": {
            **{f"f_{name}": file(name, name) for name in FORMATS},
            **{f"f_{name}": file(name, name) for name in ("datefmt", "utc", "owntime", "brace", "defaults")},
            "f_noformatter": file("noformatter", None),
            "f_warning": file("warning", "full", level="WARNING"),
            "f_delayed": file("delayed", "plain", delay=True),
        },
        "loggers": {
            "bulk": {
                "handlers": [f"f_{name}" for name in (*COMPILED, "datefmt", "utc", "noformatter", "delayed")],
                "level": "DEBUG",
                "propagate": False,
            },
            "strict": {"handlers": ["f_warning"], "level": "DEBUG", "propagate": False},
        },
        "root": {
            "level": "DEBUG",
            "handlers": [f"f_{name}" for name in (*RECORD_PATH, "owntime", "brace", "defaults")],
        },
    }


def frame_records(variant: str) -> list[list[Any]]:
    """Wire records of one kind of frame; frames of FRAME records are cut from them."""
    records = []
    for i in range(4 * FRAME):
        record = logging.LogRecord("bulk", logging.INFO, "/x/y%z.py", 7, "req %d 100%% %s", (i, "é✓"), None, "fn")
        record.msg, record.args = payload(1, i, 20) + " ünïcødé ✓ 100%", None
        # one second per frame, or (variant "seconds") a second boundary inside frames
        step = 0.0123 if variant == "seconds" else 0.0001
        record.created = BASE + (i // FRAME) * 1.0 + (i % FRAME) * step
        record.msecs = (record.created - int(record.created)) * 1000
        if variant == "mixed_levels" and i % 7 == 0:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        elif variant == "strict_info":
            record.name = "strict"  # its handler's level is WARNING: the record path filters
        elif variant == "strict_warning":
            record.name, record.levelno, record.levelname = "strict", logging.WARNING, "WARNING"
        elif variant == "root":
            record.name = "app"  # root's handlers' formats are not compiled
        elif variant == "process_1_and_true":
            record.process = 1 if i % 2 else True  # equal, but %s writes them differently
        elif variant == "process_true":
            record.process = True  # constant, yet "%d" and "%s" write True differently from 1
        elif variant == "process_none":
            record.process = None if i % 3 else 5  # %x and %d refuse None: handler errors
        elif variant == "percent_name":
            record.name, record.levelname = "bulk.a%sb%%c", "Level %d"  # a logger below bulk
        elif variant == "two_loggers" and i % 5 == 0:
            record.name = "other"
        elif variant == "exc_text" and i % 9 == 0:
            record.exc_text = "Traceback (most recent call last):\n  boom"
        elif variant == "names":
            record.name = f"bulk.n{i % 3}" if i >= FRAME else "bulk"
        records.append(encode_record(record))
    sender = encode_sender(Sender("host-a", 1, 1.0, 7))
    return decode_frame(build_frame(sender, 0, 0, 0, records)).records


VARIANTS = [
    "one_second",
    "seconds",
    "mixed_levels",
    "strict_info",
    "strict_warning",
    "root",
    "process_1_and_true",
    "process_true",
    "process_none",
    "percent_name",
    "two_loggers",
    "exc_text",
    "names",
]


# Frames the frame path must leave to the record path: two seconds under an asctime format, a
# sink whose level is above a record's, a conversion that refuses a value, two loggers,
# exception text, a route through a format that is not compiled.
NOT_TAKEN = {"seconds", "strict_info", "process_none", "two_loggers", "exc_text", "root"}
