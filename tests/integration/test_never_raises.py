"""A logging call never raises into user code (RELIABILITY C8-C11), checked end to end.

A worker process makes hostile logging calls, each followed by a numbered record on
another logger; the worker records any exception that escaped. The listener writes the
hostile records between BEGIN| and |END markers so each can be found and checked.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import check_lines, payload, read_lines

import mplog

pytestmark = pytest.mark.integration

FORMAT = "BEGIN|%(name)s|%(levelname)s|%(message)s|END"


def _config(tmp_path: Path) -> dict[str, Any]:
    def handler(name: str, formatter: str) -> dict[str, Any]:
        return {
            "class": "logging.FileHandler",
            "filename": str(tmp_path / f"{name}.log"),
            "formatter": formatter,
            "encoding": "utf-8",
        }

    return {
        "version": 1,
        "formatters": {
            "marked": {"format": FORMAT},
            "plain": {"format": "%(message)s"},
            "extras": {"format": "%(message)s fn=%(fn)s lock=%(lock)s obj=%(obj)s big=%(big)s"},
            "request": {"format": "%(request_id)s %(message)s"},
        },
        "handlers": {
            "hostile": handler("hostile", "marked"),
            "good": handler("good", "plain"),
            "extras": handler("extras", "extras"),
            "request": handler("request", "request"),
        },
        "loggers": {
            "good": {"handlers": ["good"], "propagate": False},
            "extras": {"handlers": ["extras"], "propagate": False},
            "req": {"handlers": ["request"], "propagate": False},
        },
        "root": {"level": "DEBUG", "handlers": ["hostile"]},
    }


# ---------------------------------------------------------------- hostile objects


class StrRaises:
    def __str__(self) -> str:
        raise ValueError("no str for you")


class StrNotText:
    def __str__(self) -> Any:
        return 42  # noqa: PLE0307 (the point of the case)


class ReprRaises:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


class ReprNotText:
    def __repr__(self) -> Any:
        return b"bytes"  # the point of the case


class OddInitError(Exception):
    def __init__(self, a: int, b: int) -> None:  # cannot be rebuilt from args (unpicklable)
        super().__init__(f"{a}-{b}")


class StrRaisesError(Exception):
    def __str__(self) -> str:
        raise ValueError("broken __str__")


def _raise_and_log(log: logging.Logger, label: str, exc: BaseException) -> None:
    try:
        raise exc
    except BaseException:
        log.exception("case=%s", label)


def _cyclic() -> BaseException:
    one, two = ValueError("one"), KeyError("two")
    one.__cause__, two.__cause__ = two, one
    return one


def _cases() -> list[tuple[str, Callable[[], None]]]:
    log = logging.getLogger("hostile")
    loop: dict[str, Any] = {}
    loop["self"] = loop
    cases: list[tuple[str, Callable[[], None]]] = [
        ("fmt", lambda: log.info("case=fmt %d", "x")),
        ("str_raises", lambda: log.info("case=str_raises %s", StrRaises())),
        ("str_not_text", lambda: log.info("case=str_not_text %s", StrNotText())),
        ("repr_raises", lambda: log.info("case=repr_raises %r", ReprRaises())),
        ("repr_not_text", lambda: log.info("case=repr_not_text %r", ReprNotText())),
        ("unpicklable", lambda: log.info("case=unpicklable %s %s %s", lambda: 0, threading.Lock(), object())),
        (
            "extras",
            lambda: logging.getLogger("extras").info(
                "case=extras", extra={"fn": lambda: 0, "lock": threading.Lock(), "obj": object(), "big": 2**100}
            ),
        ),
        ("self_loop_extra", lambda: log.info("case=self_loop_extra", extra={"loop": loop, "s": {1, 2}})),
        ("exc_odd_init", lambda: _raise_and_log(log, "exc_odd_init", OddInitError(1, 2))),
        ("exc_str_raises", lambda: _raise_and_log(log, "exc_str_raises", StrRaisesError())),
        ("exc_cycle", lambda: _raise_and_log(log, "exc_cycle", _cyclic())),
        ("stack", lambda: log.info("case=stack", stack_info=True)),
        ("surrogate", lambda: logging.getLogger("sur\udcffname").info("case=surrogate m\udcff %s", "a\udcff")),
        ("controls", lambda: log.info("case=controls one\ntwo\r\x1b[2J\x00\x85\u2028end")),
        ("bytes_arg", lambda: log.info("case=bytes_arg %s", b"\xff\xfe")),
        ("request", lambda: logging.getLogger("req").info("case=request", extra={"request_id": "req-7f3a"})),
    ]
    if sys.version_info >= (3, 11):
        group = ExceptionGroup("grp", [ValueError("a"), TypeError("b")])  # noqa: F821 (3.11+)
        cases.append(("exc_group", lambda: _raise_and_log(log, "exc_group", group)))
    return cases


def _hostile_worker(result_path: str) -> None:
    handler = mplog.setup_worker()
    good = logging.getLogger("good")
    failures, slowest = [], 0.0
    cases = _cases()
    for number, (label, call) in enumerate(cases):
        started = time.perf_counter()
        try:
            call()
        except BaseException as exc:  # the property under test: nothing escapes
            failures.append(f"{label}: {type(exc).__name__}: {exc}")
        slowest = max(slowest, time.perf_counter() - started)
        good.info("%s", payload(0, number))
    result = {"failures": failures, "errors": handler.counters["errors"], "cases": len(cases), "slowest": slowest}
    Path(result_path).write_text(json.dumps(result))


# ---------------------------------------------------------------- the test


def _chunks(text: str) -> dict[str, str]:
    """Map each case label to its rendered record (message plus any exception text)."""
    found: dict[str, str] = {}
    for chunk in text.split("BEGIN|")[1:]:
        label = chunk.split("case=", 1)[1].split(None, 1)[0].split("|", 1)[0]
        assert label not in found, f"case {label} written twice"
        found[label] = chunk
    return found


@pytest.mark.timeout(60)
def test_hostile_logging_calls_return_and_their_records_arrive(tmp_path):
    result_path = tmp_path / "result.json"
    ctx = multiprocessing.get_context("spawn")
    with mplog.start_listener(_config(tmp_path), route_parent=False) as listener:
        proc = ctx.Process(target=_hostile_worker, args=(str(result_path),))
        proc.start()
        proc.join(30)
        assert proc.exitcode == 0
    stats = listener.stats()
    result = json.loads(result_path.read_text())
    assert result["failures"] == []
    assert result["errors"] == 0  # every case was handled by a documented rule, not handleError
    assert result["slowest"] < 0.5
    cases = result["cases"]

    # The next record after each hostile one is fine.
    check_lines(read_lines(tmp_path / "good.log"), {0: cases}).assert_exact()
    assert stats["received"] == 2 * cases
    assert stats["malformed_total"] == stats["gaps"] == stats["dropped"] == 0

    raw = (tmp_path / "hostile.log").read_bytes()
    text = raw.decode("utf-8")  # strictly UTF-8: surrogates were escaped at the sender
    chunks = _chunks(text)
    expected_here = {label for label, _ in _cases()} - {"extras", "request"}
    assert set(chunks) == expected_here

    assert chunks["fmt"] == "hostile|INFO|'case=fmt %d' <unformattable: TypeError> args=('x',)|END\n"
    assert "<unformattable: ValueError>" in chunks["str_raises"]
    assert "<unformattable: TypeError>" in chunks["str_not_text"]
    assert "<unformattable: RuntimeError> args=<unrepresentable tuple: RuntimeError>" in chunks["repr_raises"]
    assert "<unformattable: TypeError>" in chunks["repr_not_text"]
    assert "<function" in chunks["unpicklable"]
    assert "_thread.lock object at" in chunks["unpicklable"]
    assert "<object object at" in chunks["unpicklable"]
    assert chunks["self_loop_extra"].startswith("hostile|INFO|case=self_loop_extra|END")

    for label, last_line in [
        ("exc_odd_init", "OddInitError: 1-2"),
        ("exc_str_raises", "StrRaisesError: <exception str() failed>"),
        ("exc_cycle", "ValueError: one"),
    ]:
        assert chunks[label].count("Traceback (most recent call last)") == 1, chunks[label]
        assert chunks[label].rstrip().endswith(last_line), chunks[label]
    assert "KeyError: 'two'" in chunks["exc_cycle"]
    assert "The above exception was the direct cause" in chunks["exc_cycle"]
    if "exc_group" in chunks:
        assert chunks["exc_group"].count("Exception Group Traceback (most recent call last)") == 1
        assert "ExceptionGroup: grp (2 sub-exceptions)" in chunks["exc_group"]
        assert "ValueError: a" in chunks["exc_group"]
        assert "TypeError: b" in chunks["exc_group"]
    assert chunks["stack"].count("Stack (most recent call last)") == 1
    assert "Traceback" not in chunks["stack"]

    assert chunks["surrogate"].startswith("sur\\udcffname|INFO|case=surrogate m\\udcff a\\udcff|END")
    # Control characters travel unchanged (escaping them is an output handler's choice).
    assert chunks["controls"].startswith("hostile|INFO|case=controls one\ntwo\r\x1b[2J\x00\x85\u2028end|END")
    assert "case=bytes_arg b'\\xff\\xfe'|END" in chunks["bytes_arg"]

    extras = (tmp_path / "extras.log").read_text(encoding="utf-8").splitlines()
    assert len(extras) == 1
    assert extras[0].startswith("case=extras fn=<function ")
    assert " lock=<unlocked _thread.lock object at " in extras[0]
    assert " obj=<object object at " in extras[0]
    assert extras[0].endswith(f" big={2**100}")
    assert read_lines(tmp_path / "request.log") == ["req-7f3a case=request"]


def test_a_record_with_extras_larger_than_a_frame_is_delivered_with_them_cut(tmp_path):
    # 25 extras of 200,000 characters pack to about 5 MB: over the listener's max_frame_bytes
    # (4 MiB), which refuses such a frame whole. The worker keeps every record under half a
    # frame instead, each extra cut to its repr (max_repr_chars), so the record and the
    # ones batched with it arrive.
    out = tmp_path / "big.log"
    config = {
        "version": 1,
        "formatters": {"f": {"()": "mplog.formatters.JSONFormatter", "fields": ["message"]}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(out), "formatter": "f"}},
        "root": {"level": "INFO", "handlers": ["file"]},
    }
    with mplog.start_listener(config) as listener:
        log = logging.getLogger("big")
        log.info("before")
        log.info("huge", extra={f"e{i}": "x" * 200_000 for i in range(25)})
        log.info("after")
    stats = listener.stats()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["message"] for line in lines] == ["before", "huge", "after"]
    huge = lines[1]
    assert huge["mplog_cut_extras"] is True
    assert all(huge[f"e{i}"].startswith("x" * 8000) and len(huge[f"e{i}"]) < 8300 for i in range(25))
    assert stats["received"] == 3
    assert stats["rejected"] == stats["malformed_total"] == stats["gaps"] == 0
