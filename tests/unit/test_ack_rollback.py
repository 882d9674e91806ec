"""The write-ahead intent of acknowledged delivery, on MarksFile alone: what a restart cuts back, and what it leaves."""

from __future__ import annotations

import logging
import logging.handlers
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from mplog.delivery.intent import FileState, file_handlers, measure
from mplog.handlers.queued import QueuedHandler
from mplog.listener.ack_loop import AckServer, MarksFile, marks_path

pytestmark = pytest.mark.timeout(20)

KEY = "host-a/4242/0000beef"


def _state(path: Path) -> FileState:
    st = os.stat(path)
    return FileState(str(path), st.st_dev, st.st_ino, st.st_size)


def _killed_while_writing(tmp_path: Path, *, mark_stored: bool = False) -> tuple[str, Path]:
    """A listener that recorded the intent for records 10..19, wrote part of them, and died."""
    marks_file = str(tmp_path / "acked")
    log = tmp_path / "out.log"
    log.write_text("record 9\n")
    marks = MarksFile(marks_file)
    marks.set(KEY, 10)
    marks.begin_intent(KEY, 10, 20, [_state(log)])
    with log.open("a") as f:
        f.write("record 10\nrecord 11\nrec")
    if mark_stored:
        marks.set(KEY, 20)
    marks.close()  # no clear_intent(): what a SIGKILL leaves in the page cache
    return marks_file, log


def test_a_frame_left_half_written_is_cut_off_when_the_marks_are_opened_again(tmp_path):
    marks_file, log = _killed_while_writing(tmp_path)
    again = MarksFile(marks_file)
    recovery = again.recovery
    assert recovery is not None
    assert (recovery.key, recovery.first, recovery.end, recovery.complete) == (KEY, 10, 20, False)
    assert recovery.skipped == []
    assert recovery.truncated == [f"{log}: 32 -> 9 bytes"]
    assert log.read_text() == "record 9\n"
    assert again.marks == {KEY: 10}
    again.close()
    third = MarksFile(marks_file)  # resolved once: the intent was reset
    assert third.recovery is None
    third.close()


def test_a_frame_whose_mark_was_stored_is_complete_and_nothing_is_cut(tmp_path):
    marks_file, log = _killed_while_writing(tmp_path, mark_stored=True)
    again = MarksFile(marks_file)
    assert again.recovery is not None and again.recovery.complete
    assert again.recovery.truncated == again.recovery.skipped == []
    assert log.read_text() == "record 9\nrecord 10\nrecord 11\nrec"
    again.close()


def test_a_goodbye_frame_whose_mark_was_stored_is_complete_though_its_sender_is_forgotten(tmp_path):
    marks_file = str(tmp_path / "acked")
    log = tmp_path / "out.log"
    log.write_text("")
    marks = MarksFile(marks_file)
    marks.begin_intent(KEY, 0, 5, [_state(log)])
    log.write_text("five records\n")
    marks.set(KEY, 5)
    marks.forget(KEY)
    marks.close()
    again = MarksFile(marks_file)
    assert again.recovery is not None and again.recovery.complete
    assert KEY not in again.marks
    assert log.read_text() == "five records\n"
    again.close()


def test_a_file_replaced_since_the_intent_is_left_alone_and_counted(tmp_path, capsys):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    log = tmp_path / "out.log"
    log.write_text("record 9\n")
    marks = MarksFile(marks_path(str(state_dir)))
    marks.set(KEY, 10)
    marks.begin_intent(KEY, 10, 20, [_state(log)])
    rotated = tmp_path / "new.log"
    rotated.write_text("a new file, longer than the recorded size\n")
    os.replace(rotated, log)  # another inode at the same path, as after a rotation
    marks.close()
    server = AckServer(_NoReceiver())  # type: ignore[arg-type]  # after_restore touches only stats and marks
    server.after_restore(str(state_dir))
    assert (server.rolled_back, server.rollback_skipped) == (0, 1)
    assert log.read_text() == "a new file, longer than the recorded size\n"
    assert "could not undo" in capsys.readouterr().err
    assert server.stats.senders[KEY].next_seq == 10  # the frame comes again from its first record
    snap = server.snapshot()
    assert (snap["rolled_back"], snap["rollback_skipped"]) == (0, 1)
    assert server.marks is not None
    server.marks.close()


def test_a_restart_rolls_back_and_continues_the_counters_of_earlier_incarnations(tmp_path, capsys):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "stats.json").write_text('{"rolled_back": 2, "rollback_skipped": 1}')
    log = tmp_path / "out.log"
    log.write_text("")
    marks = MarksFile(marks_path(str(state_dir)))
    marks.begin_intent(KEY, 0, 7, [_state(log), FileState(str(tmp_path / "delayed.log"), 0, 0, 0, exists=False)])
    log.write_text("part of a frame\n")
    (tmp_path / "delayed.log").write_text("a delayed handler's first lines\n")
    marks.close()
    server = AckServer(_NoReceiver())  # type: ignore[arg-type]  # after_restore touches only stats and marks
    server.after_restore(str(state_dir))
    assert (server.rolled_back, server.rollback_skipped) == (3, 1)
    assert log.read_text() == (tmp_path / "delayed.log").read_text() == ""
    assert "cut back" in capsys.readouterr().err
    assert server.marks is not None
    server.marks.close()


def test_the_intent_file_is_private(tmp_path):
    old = os.umask(0)
    try:
        marks = MarksFile(str(tmp_path / "acked"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "acked.intent").st_mode) == 0o600
    marks.close()


def test_a_large_intent_grows_its_file(tmp_path):
    marks_file = str(tmp_path / "acked")
    marks = MarksFile(marks_file)
    files = []
    for i in range(100):
        path = tmp_path / f"{'x' * 60}{i}.log"
        path.write_text("line\n")
        files.append(_state(path))
    marks.begin_intent(KEY, 0, 1, files)  # about 9 KiB of paths: more than the first page
    for state in files:
        Path(state.path).write_text("line\nand more\n")
    marks.close()
    again = MarksFile(marks_file)
    assert again.recovery is not None and len(again.recovery.truncated) == 100
    assert {Path(s.path).read_text() for s in files} == {"line\n"}
    again.close()


# ---------------------------------------------------------------- which handlers are measured


class _NoReceiver:
    endpoint = "test://none"
    events: dict[str, int] = {}  # read-only here


@pytest.fixture
def logger_with(request: pytest.FixtureRequest) -> Any:
    logger = logging.getLogger(f"mplog.test.{request.node.name}")
    added: list[logging.Handler] = []

    def add(handler: logging.Handler) -> logging.Handler:
        logger.addHandler(handler)
        added.append(handler)
        return handler

    yield add
    for handler in added:
        logger.removeHandler(handler)
        handler.close()


def test_file_handlers_reached_synchronously_are_measured_and_queued_ones_are_not(tmp_path, logger_with):
    direct = logger_with(logging.FileHandler(tmp_path / "direct.log"))
    target = logging.FileHandler(tmp_path / "target.log", delay=True)
    logger_with(logging.handlers.MemoryHandler(10, target=target))
    queued_target = logging.FileHandler(tmp_path / "queued.log")
    logger_with(QueuedHandler([queued_target]))
    stderr = logger_with(logging.StreamHandler())
    try:
        found = file_handlers([direct, target, queued_target])
        assert direct in found and target in found and stderr in found
        assert queued_target not in found
        assert measure(stderr) is None
        assert measure(target) == FileState(str(tmp_path / "target.log"), 0, 0, 0, exists=False)
        direct.emit(logging.makeLogRecord({"msg": "hello"}))
        st = os.stat(tmp_path / "direct.log")
        assert measure(direct) == FileState(str(tmp_path / "direct.log"), st.st_dev, st.st_ino, 6)
    finally:
        target.close()
        queued_target.close()


def test_a_stream_handler_on_an_appended_file_is_measured_and_one_writing_at_its_own_offset_is_not(tmp_path):
    with open(tmp_path / "a.log", "a") as appended, open(tmp_path / "w.log", "w") as positioned:
        appended.write("x\n")
        appended.flush()
        state = measure(logging.StreamHandler(appended))
        assert state is not None and (state.path, state.size) == (str(tmp_path / "a.log"), 2)
        assert measure(logging.StreamHandler(positioned)) is None


def test_a_watched_file_handler_is_measured_by_its_path_which_it_reopens_after_a_move(tmp_path):
    watched = logging.handlers.WatchedFileHandler(tmp_path / "w.log")
    try:
        watched.emit(logging.makeLogRecord({"msg": "before"}))
        os.rename(tmp_path / "w.log", tmp_path / "w.log.1")  # logrotate moved it; the next emit reopens the path
        assert measure(watched) == FileState(str(tmp_path / "w.log"), 0, 0, 0, exists=False)
        watched.emit(logging.makeLogRecord({"msg": "after"}))
        st = os.stat(tmp_path / "w.log")
        assert measure(watched) == FileState(str(tmp_path / "w.log"), st.st_dev, st.st_ino, 6)
    finally:
        watched.close()
