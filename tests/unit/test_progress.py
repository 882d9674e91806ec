"""The progress file (mplog.listener.progress): each sender's ledger persisted with every frame, read back exactly.

A listener killed at any point is simulated by reading the file while the objects that
wrote it are still open: what a SIGKILL leaves is exactly what was stored, since every
store goes to the page cache.
"""

from __future__ import annotations

import logging
import mmap
import random
from pathlib import Path
from typing import Any

import pytest

from mplog.listener.loop import Server
from mplog.listener.progress import OutputFiles, ProgressFile, file_sizes, progress_path, read_progress
from mplog.listener.stats import SenderLimits, Stats
from mplog.listener.write_failures import end_cut_lines_on_open
from mplog.wire import FLAG_FINAL, Frame, Limits, Sender, build_frame, encode_record, encode_sender

TOTALS = ("received", "frames", "gaps", "dropped", "duplicates", "rejected")


def _listener(tmp_path: Path, max_senders: int, files: list[Any] | None = None) -> tuple[Stats, ProgressFile]:
    stats = Stats(SenderLimits(max_senders=max_senders))
    progress = ProgressFile(progress_path(str(tmp_path)), stats.table, files or [])
    stats.table.on_fold = progress.fold
    return stats, progress


def _handle(stats: Stats, progress: ProgressFile, frame: Frame, *, reject: bool = False) -> None:
    """What the receive loop does with one frame (mplog.listener.loop.Server.handle_frame), minus the dispatch."""
    if reject:
        stats.reject(frame, "bad_field")
        assert stats.booked is not None
        progress.store(stats.booked_key, stats.booked)
        return
    stats.accept(frame)
    assert stats.booked is not None
    progress.begin(stats.booked_key, stats.booked)
    progress.commit()


def _restarted(tmp_path: Path, checkpoint: dict[str, Any] | None, max_senders: int, **sizes: Any) -> Stats:
    """A new listener's stats: the checkpoint restored, then the progress file applied (supervisor.resume)."""
    stats = Stats(SenderLimits(max_senders=max_senders))
    if checkpoint is not None:
        stats.restore(checkpoint)
    ledgers, folds = read_progress(progress_path(str(tmp_path)), sizes.get("sizes_now"))
    stats.apply_progress(ledgers, folds, checkpoint["folded"]["senders"] if checkpoint else 0)
    return stats


def _frame(i: int, seq: int, n: int, dropped: int = 0, flags: int = 0) -> Frame:
    return Frame(Sender(f"host-{i % 3}", 1000 + i, 1.7e9, i), seq, dropped, flags, [["record"]] * n)


@pytest.mark.parametrize("seed", range(40))
def test_a_restart_from_any_checkpoint_finds_every_ledger_and_total_as_the_killed_listener_had_them(
    tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    max_senders = rng.choice([8, 16])
    stats, progress = _listener(tmp_path, max_senders)
    senders = max_senders + rng.randrange(1, 4)  # folds and returns, but fewer than the ring holds
    streams: dict[int, int] = {}
    checkpoint = None
    for _ in range(rng.randrange(30, 120)):
        i = rng.randrange(senders)
        seq = streams.get(i, 0) + (rng.randrange(1, 4) if rng.random() < 0.1 else 0)  # sometimes a gap
        if rng.random() < 0.05 and seq:
            seq -= 1  # a duplicate
        n = rng.randrange(5)
        flags = FLAG_FINAL if rng.random() < 0.02 else 0
        _handle(stats, progress, _frame(i, seq, n, rng.randrange(3), flags), reject=rng.random() < 0.05)
        streams[i] = max(streams.get(i, 0), seq + n)
        if rng.random() < 0.1:
            checkpoint = stats.snapshot()  # the JSON checkpoint, written now and then
    before = stats.snapshot()
    assert before["folded"]["senders"] <= 4 * max_senders  # the ring holds every fold
    after = _restarted(tmp_path, checkpoint, max_senders).snapshot()
    assert {k: after[k] for k in TOTALS} == {k: before[k] for k in TOTALS}
    for key, ledger in before["senders"].items():
        restored = after["senders"][key]
        assert {k: restored[k] for k in ("next_seq", "records", "gaps", "dropped", "rejected", "closed")} == {
            k: ledger[k] for k in ("next_seq", "records", "gaps", "dropped", "rejected", "closed")
        }
    for i in streams:  # folded or not, every sender continues where it was
        key = f"host-{i % 3}/{1000 + i}/{i:08x}"
        restarted = _restarted(tmp_path, checkpoint, max_senders)
        assert restarted.table.place(key)[0] == stats.table.place(key)[0]


def _pending(tmp_path: Path, *, new_sender: bool) -> tuple[Stats, dict[str, Any], logging.FileHandler]:
    """A listener that dies between a frame's begin() and commit(), with a file handler measured around it."""
    out = tmp_path / "out.log"
    handler = logging.FileHandler(out, encoding="utf-8")
    handler.stream.write("an earlier line\n")
    handler.flush()
    stats, progress = _listener(tmp_path, 16, [handler])
    if not new_sender:
        _handle(stats, progress, _frame(0, 0, 10))
    checkpoint = stats.snapshot()
    stats.accept(_frame(0, 10 if not new_sender else 0, 5))  # ...and the checkpoint saw it accepted
    progress.begin(stats.booked_key, stats.booked)  # type: ignore[arg-type]
    return stats, checkpoint, handler


@pytest.mark.parametrize("new_sender", [False, True])
def test_a_frame_the_killed_listener_was_dispatching_counts_as_received_when_a_file_grew(
    tmp_path: Path, new_sender: bool
) -> None:
    stats, checkpoint, handler = _pending(tmp_path, new_sender=new_sender)
    handler.stream.write("the frame's lines\n")  # the write went through; the kill came before commit()
    handler.flush()
    restarted = _restarted(tmp_path, checkpoint, 16, sizes_now=file_sizes([handler]))
    handler.close()
    assert restarted.snapshot()["received"] == (5 if new_sender else 15) == stats.snapshot()["received"]
    assert restarted.table.place("host-0/1000/00000000")[0] == (5 if new_sender else 15)


@pytest.mark.parametrize("new_sender", [False, True])
def test_a_frame_the_killed_listener_was_dispatching_counts_as_not_received_when_no_file_grew(
    tmp_path: Path, new_sender: bool
) -> None:
    _, checkpoint, handler = _pending(tmp_path, new_sender=new_sender)
    restarted = _restarted(tmp_path, checkpoint, 16, sizes_now=file_sizes([handler]))
    handler.close()
    snap = restarted.snapshot()
    assert snap["received"] == (0 if new_sender else 10)  # the checkpoint counted it: the file overrules it
    # A sender whose first frame it was stays known, with nothing received: if it comes back,
    # what that frame held is a gap, and if not, it ends without a goodbye (possible loss).
    # (Before, it was forgotten, and a checkpoint written during the frame kept it as received.)
    [sender] = snap["senders"].values()
    assert (sender["records"], sender["closed"]) == (0 if new_sender else 10, False)
    assert restarted.table.place("host-0/1000/00000000")[0] == (0 if new_sender else 10)


def _cut_frame(tmp_path: Path, written: bytes) -> tuple[Stats, dict[str, Any], OutputFiles, Path]:
    """A listener killed while writing a frame of 300 records (10 before it): ``written`` is what reached the file."""
    out = tmp_path / "out.log"
    handler = logging.FileHandler(out, encoding="utf-8")
    handler.stream.write("an earlier line\n")
    handler.flush()
    stats, progress = _listener(tmp_path, 16, [handler])
    _handle(stats, progress, _frame(0, 0, 10))
    checkpoint = stats.snapshot()
    stats.accept(_frame(0, 10, 300))
    progress.begin(stats.booked_key, stats.booked, 300)  # type: ignore[arg-type]
    progress.mark_written(-1)  # as the dispatcher does before it writes a frame's collected lines
    handler.stream.write(written.decode())  # then the kill: no commit()
    handler.flush()
    files = OutputFiles([handler])  # the restarted listener's handler: the same file, measured before it writes
    restarted = _restarted(tmp_path, checkpoint, 16, sizes_now=files)
    handler.close()
    return restarted, checkpoint, files, out


def _up_to_a_page_boundary(line: bytes, *, mid_line: bool) -> bytes:
    """Lines that take the file (16 bytes before them) to its first page boundary, the last one cut or whole."""
    room = mmap.PAGESIZE - len(b"an earlier line\n")
    if mid_line:
        return (line * (room // len(line) + 1))[:room]
    whole = line * (room // len(line) - 1)
    return b"y" * (room - len(whole) - 1) + b"\n" + whole  # a longer first line: the last one ends on the boundary


@pytest.mark.parametrize("mid_line", [True, False])
def test_a_frame_a_kill_cut_short_counts_its_whole_lines_as_received_and_the_rest_as_gaps(
    tmp_path: Path, mid_line: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = _up_to_a_page_boundary(b"x" * 30 + b"\n", mid_line=mid_line)  # as the kernel cuts a write at a SIGKILL
    restarted, _, files, out = _cut_frame(tmp_path, written)
    whole = written.count(b"\n")
    assert 100 < whole < 300 and written.endswith(b"\n") != mid_line
    snap = restarted.snapshot()
    # Before: the frame counted as received whole (310), its 300 - whole records lost without a count.
    assert (snap["received"], snap["gaps"]) == (10 + whole, 300 - whole)
    assert restarted.table.place("host-0/1000/00000000")[0] == 310  # the sender's next frame follows on
    assert files.cut == ([str(out)] if mid_line else [])
    monkeypatch.setattr(logging.FileHandler, "_open", logging.FileHandler._open)  # restored after the test
    end_cut_lines_on_open()
    handler = logging.FileHandler(out, encoding="utf-8")  # the restarted listener's: its open ends the cut line
    handler.handle(logging.makeLogRecord({"msg": "the next record"}))
    handler.close()
    text = out.read_bytes()  # the next record starts a line of its own
    assert text.endswith(b"\nthe next record\n") and text.count(b"\n") == 1 + whole + mid_line + 1


def test_a_frame_written_whole_to_a_page_boundary_counts_as_received(tmp_path: Path) -> None:
    line = b"x" * 30 + b"\n"
    room = -(len(b"an earlier line\n") + 300 * len(line)) % mmap.PAGESIZE
    restarted, _, files, _ = _cut_frame(tmp_path, b"y" * (room - 1) + b"\n" + line * 299)  # 300 lines, one longer
    assert (restarted.snapshot()["received"], restarted.snapshot()["gaps"]) == (310, 0) and files.cut == []


def test_a_frame_of_which_a_handler_wrote_fewer_lines_off_a_page_boundary_counts_as_received(tmp_path: Path) -> None:
    # A handler whose level let 3 of the frame's 300 records through: its file grew, not to a page boundary.
    restarted, _, files, _ = _cut_frame(tmp_path, b"an error\n" * 3)
    assert (restarted.snapshot()["received"], restarted.snapshot()["gaps"]) == (310, 0) and files.cut == []


@pytest.mark.parametrize("dup", [False, True], ids=["goodbye", "goodbye-resent-with-records-seen"])
def test_a_goodbye_the_killed_listener_was_handling_is_kept_though_no_file_could_grow(
    tmp_path: Path, dup: bool
) -> None:
    server = Server(_NoReceiver())  # type: ignore[arg-type]  # frames handed in
    server.progress = ProgressFile(progress_path(str(tmp_path)), server.stats.table, [])
    sender = Sender("host-0", 1000, 1.7e9, 0)
    item = encode_record(logging.LogRecord("t", logging.INFO, __file__, 1, "record", None, None))
    assert server.handle_frame(build_frame(encode_sender(sender), 0, 0, 0, [item] * 10)) is not None
    server.progress.commit = lambda: None  # type: ignore[method-assign]  # the kill comes before any commit
    # The goodbye: empty, or (resent) carrying the last records, which the listener had already written.
    goodbye = build_frame(encode_sender(sender), 5 if dup else 10, 0, FLAG_FINAL, [item] * 5 if dup else [])
    assert server.handle_frame(goodbye) is not None
    restarted = _restarted(tmp_path, None, 16, sizes_now={})  # no file grew: nothing was to be written
    # Before: the goodbye's ledger stayed pending and was read without it: the sender, every
    # record of which was written, showed as ended without a goodbye (possible loss).
    assert restarted.all_closed() and restarted.snapshot()["received"] == 10


def test_a_frame_committed_before_the_kill_is_received_whatever_the_files_say(tmp_path: Path) -> None:
    stats, progress = _listener(tmp_path, 16)
    _handle(stats, progress, _frame(0, 0, 7))
    stats.accept(_frame(0, 7, 3, flags=FLAG_FINAL))
    progress.begin(stats.booked_key, stats.booked)  # type: ignore[arg-type]
    progress.commit()  # then killed: the pending byte may still be set, the valid copy is already this one
    restarted = _restarted(tmp_path, None, 16, sizes_now={})
    assert restarted.snapshot()["received"] == 10 and restarted.all_closed()


def test_a_folded_sender_is_remembered_across_restarts_and_continues_where_it_was(tmp_path: Path) -> None:
    stats, progress = _listener(tmp_path, 4)
    _handle(stats, progress, _frame(0, 0, 50, dropped=3))  # the sender that will be folded
    for i in range(1, 12):  # eleven others push it out of a table of four
        _handle(stats, progress, _frame(i, 0, 1))
    assert "host-0/1000/00000000" not in stats.senders
    checkpoint = stats.snapshot()
    for _ in range(2):  # restarted twice: the new file carries what the old one held
        restarted = _restarted(tmp_path, checkpoint, 4)
        ProgressFile(progress_path(str(tmp_path)), restarted.table, []).close()
        checkpoint = restarted.snapshot()
    restarted.accept(_frame(0, 50, 5, dropped=3))  # it comes back
    snap = restarted.snapshot()
    assert (snap["received"], snap["gaps"], snap["dropped"]) == (66, 0, 3)  # before: 50 more gaps, 3 more drops
    assert snap["folded"]["returned"] == 1 and snap["senders"]["host-0/1000/00000000"]["next_seq"] == 55


def test_a_torn_ledger_copy_is_never_read(tmp_path: Path) -> None:
    stats, progress = _listener(tmp_path, 16)
    _handle(stats, progress, _frame(0, 0, 10))
    path = progress_path(str(tmp_path))
    ledgers, _ = read_progress(path)
    data = bytearray(Path(path).read_bytes())
    slot = data.index(b"host-0/1000/00000000") - 192  # the key sits at the end of the slot's ledgers
    copy = 32 + 80 * (data[slot + 1] ^ 1)  # the copy that is not valid: the one a kill would tear
    data[slot + copy : slot + copy + 40] = b"\xff" * 40
    Path(path).write_bytes(bytes(data))
    assert read_progress(path)[0] == ledgers


class _NoReceiver:
    endpoint = "test://"

    def __init__(self) -> None:
        self.events: dict[str, int] = {}


def test_a_frame_refused_whole_for_its_size_is_persisted_as_its_senders_rejected_records(tmp_path: Path) -> None:
    server = Server(_NoReceiver(), limits=Limits(max_frame_bytes=4096))  # type: ignore[arg-type]  # frames handed in
    server.progress = ProgressFile(progress_path(str(tmp_path)), server.stats.table, [])
    record = encode_record(logging.LogRecord("big", logging.INFO, __file__, 1, "x" * 100, None, None))
    sender = Sender("host-0", 1000, 1.7e9, 0)
    assert server.handle_frame(build_frame(encode_sender(sender), 0, 0, 0, [record] * 100)) is not None  # oversized
    ledgers, _ = read_progress(progress_path(str(tmp_path)))
    assert [(p.key, p.next_seq, p.rejected, p.records) for p in ledgers] == [(sender.key, 100, 100, 0)]
