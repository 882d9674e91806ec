"""A frame formatted from its columns (mplog.listener.frame_lines) writes the generic path's bytes, for every format."""

from __future__ import annotations

import logging
import logging.config
from pathlib import Path
from typing import Any

import pytest
from frame_cases import FRAME, NOT_TAKEN, VARIANTS, frame_config, frame_records

import mplog.listener.dispatch
from mplog.listener.dispatch import BatchDispatcher
from mplog.listener.frame_lines import frame_lines
from mplog.listener.line_format import LineFormat
from mplog.wire import check_records


def _run(directory: Path, records: list[list[Any]], *, fast: bool, errors: list[str]) -> dict[str, bytes]:
    directory.mkdir()
    logging.config.dictConfig(frame_config(directory))
    dispatcher = BatchDispatcher(fast=fast)
    dispatch_errors: list[int] = []
    try:
        for start in range(0, len(records), FRAME):
            frame = records[start : start + FRAME]
            columns = check_records(frame) if fast else None
            dispatcher.dispatch(frame, "host-a", None, lambda: dispatch_errors.append(1), columns=columns)
    finally:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})  # closes every file
    assert dispatch_errors == []
    errors.sort()
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.log"))}


@pytest.fixture
def frames_taken(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """What each call of the frame path answered (the real function runs)."""
    answers: list[bool] = []
    real = mplog.listener.dispatch.add_frame

    def add_frame(*args: Any, **kwargs: Any) -> bool:
        answers.append(real(*args, **kwargs))
        return answers[-1]

    monkeypatch.setattr(mplog.listener.dispatch, "add_frame", add_frame)
    return answers


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_frame_formatted_from_its_columns_writes_the_generic_paths_bytes_for_every_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, frames_taken: list[bool], variant: str
) -> None:
    errors: list[str] = []
    monkeypatch.setattr(logging.Handler, "handleError", lambda self, record: errors.append(self.get_name()))
    records = frame_records(variant)
    generic = _run(tmp_path / "generic", records, fast=False, errors=errors)
    generic_errors, errors[:] = list(errors), []
    columnar = _run(tmp_path / "columns", records, fast=True, errors=errors)
    assert errors == generic_errors
    assert columnar.keys() == generic.keys()
    for name in generic:
        assert columnar[name] == generic[name], name
    if variant != "strict_info":  # (its handler's level is WARNING)
        assert sum(text.count(b"P1:") for text in generic.values()) >= len(records)
    # Every frame passed the column check; the frame path took those it can take whole.
    assert len(frames_taken) == len(records) // FRAME
    expected = {"names": 1}.get(variant, 0 if variant in NOT_TAKEN else len(frames_taken))
    assert sum(frames_taken) == expected, frames_taken


def test_the_frame_path_writes_one_text_per_frame_when_every_field_it_names_is_constant() -> None:
    records = frame_records("one_second")[:FRAME]
    columns = check_records(records)
    assert columns is not None
    lf = LineFormat(logging.Formatter("%(asctime)s %(name)s %(levelname)s", datefmt="%H:%M:%S"))
    lines = frame_lines(lf, columns, FRAME, {})
    assert lines is not None
    assert len(set(lines)) == 1
    assert list(lines) == lf.lines(records)
    assert frame_lines(LineFormat(logging.Formatter("%(message)s")), columns, FRAME, {}) is columns[3]


def test_a_frame_that_spans_two_seconds_is_left_to_the_record_path() -> None:
    records = frame_records("seconds")[:FRAME]
    columns = check_records(records)
    assert columns is not None
    assert frame_lines(LineFormat(logging.Formatter("%(asctime)s %(message)s")), columns, FRAME, {}) is None
    # the message alone does not depend on the time
    assert frame_lines(LineFormat(logging.Formatter("%(message)s")), columns, FRAME, {}) is columns[3]
