"""RotatingFileHandler and TimedRotatingFileHandler owned by the listener, fed by worker processes."""

from __future__ import annotations

import datetime
import gzip
import os
import re
import sys
import time
from pathlib import Path

import pytest
from handler_peers import join_workers, run_workers, snippet_file, start_workers
from helpers import PAYLOAD_RE, check_lines, read_lines, wait_for

import mplog

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

SIZE = 40  # payload body: lines of 63 bytes


def _files(directory: Path, base: str = "app.log") -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.startswith(base))


def _gz_lines(path: Path) -> list[str]:
    return gzip.decompress(path.read_bytes()).decode("utf-8").splitlines()


def test_four_workers_rotate_100000_records_into_files_none_torn_none_lost_none_oversized(tmp_path):
    workers, per_worker, max_bytes = 4, 25_000, 256 * 1024
    line_bytes = len(f"P0:{0:08d}:{SIZE:05d}:{'X' * SIZE}\n")
    backups = workers * per_worker * line_bytes // max_bytes + 2  # room for every file
    config = snippet_file("rotating", tmp_path, dir=tmp_path, maxbytes=max_bytes, backups=backups)
    with mplog.start_listener(config, route_parent=False) as listener:
        run_workers(listener.endpoint, workers, per_worker, size=SIZE)
    stats = listener.stats()
    files = _files(tmp_path)
    assert len(files) > 10
    assert not (tmp_path / f"app.log.{backups}").exists()  # the last slot stayed free: nothing was pruned
    lines = read_lines(*files)
    assert len(lines) == workers * per_worker
    check_lines(lines, dict.fromkeys(range(workers), per_worker)).assert_exact()  # no torn or merged lines
    for path in files:
        assert path.stat().st_size <= max_bytes + line_bytes, path
        assert path.read_bytes().endswith(b"\n")
    # Oldest file first, each producer's records are in order: one writer, rotated in sequence.
    by_age = sorted(files, key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
    last = dict.fromkeys(range(workers), -1)
    for match in map(PAYLOAD_RE.search, read_lines(*by_age)):
        assert match is not None
        producer, seq = int(match["prod"]), int(match["seq"])
        assert seq == last[producer] + 1
        last[producer] = seq
    assert stats["received"] == workers * per_worker
    assert stats["gaps"] == stats["dropped"] == stats["malformed_total"] == 0
    assert stats["handler_errors"] == {}


def test_rotating_file_handler_keeps_at_most_backup_count_files_holding_the_newest_records(tmp_path):
    per_worker, max_bytes, backups = 6_000, 32 * 1024, 3
    config = snippet_file("rotating", tmp_path, dir=tmp_path, maxbytes=max_bytes, backups=backups)
    with mplog.start_listener(config, route_parent=False) as listener:
        run_workers(listener.endpoint, 1, per_worker, size=SIZE)
    files = _files(tmp_path)
    assert [p.name for p in files] == ["app.log", "app.log.1", "app.log.2", "app.log.3"]
    seqs = [int(m["seq"]) for m in map(PAYLOAD_RE.search, read_lines(*reversed(files))) if m]
    assert seqs == list(range(per_worker - len(seqs), per_worker))  # the newest records, in order, no gap


def test_namer_and_rotator_from_the_config_gzip_every_rotated_file(tmp_path):
    workers, per_worker = 2, 5_000
    config = snippet_file("rotating-namer", tmp_path, dir=tmp_path, maxbytes=64 * 1024, backups=50)
    with mplog.start_listener(config, route_parent=False) as listener:
        run_workers(listener.endpoint, workers, per_worker, size=SIZE)
    rotated = [p for p in _files(tmp_path) if p.name != "app.log"]
    assert rotated and all(re.fullmatch(r"app\.log\.\d+\.gz", p.name) for p in rotated)
    lines = read_lines(tmp_path / "app.log") + [line for p in rotated for line in _gz_lines(p)]
    assert len(lines) == workers * per_worker
    check_lines(lines, dict.fromkeys(range(workers), per_worker)).assert_exact()
    assert listener.stats()["handler_errors"] == {}


def test_gzip_compression_runs_in_the_background_while_the_listener_keeps_writing(tmp_path):
    # A 16 MB file of random text at gzip level 9 takes a couple of seconds to compress.
    big = os.urandom(4_000_000).hex()
    prefill = "".join(f"noise {big[i : i + 100]}\n" for i in range(0, len(big), 100))
    (tmp_path / "app.log").write_text(prefill)
    config = snippet_file("rotating-gzip", tmp_path, dir=tmp_path, maxbytes=4 * 1024 * 1024, backups=3, level=9)
    pending = tmp_path / "app.log.1.pending"
    samples: list[tuple[bool, int]] = []
    workers, per_worker = 2, 2_000
    with mplog.start_listener(config, route_parent=False) as listener:
        procs = start_workers(listener.endpoint, workers, per_worker, pace=0.0005)
        try:
            # The first record rolls the 16 MB file over; it compresses while records keep arriving.
            wait_for(pending.exists, 20, 0.005)
            while pending.exists():
                samples.append((True, listener.stats()["received"]))
                time.sleep(0.05)
        finally:
            join_workers(procs)
    during = [received for busy, received in samples if busy]
    assert len(during) >= 5 and during[-1] - during[0] >= 500, during  # kept receiving while compressing
    assert _gz_lines(tmp_path / "app.log.1.gz") == prefill.splitlines()
    assert not pending.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
    lines = read_lines(tmp_path / "app.log")
    check_lines(lines, dict.fromkeys(range(workers), per_worker)).assert_exact()
    assert len(lines) == workers * per_worker
    assert listener.stats()["handler_errors"] == {}


def test_timed_rotation_every_second_prunes_to_backup_count_and_loses_nothing(tmp_path):
    # The documented snippet (backupCount 2) plus a second timed handler that keeps every file.
    path = snippet_file("timed", tmp_path, dir=tmp_path, backups=2)
    config = tomllib.loads(path.read_text())
    keep_all = dict(config["handlers"]["timed"], filename=str(tmp_path / "all" / "app.log"), backupCount=0)
    (tmp_path / "all").mkdir()
    config["handlers"]["keep_all"] = keep_all
    config["root"]["handlers"].append("keep_all")
    per_worker = 450
    with mplog.start_listener(config, route_parent=False) as listener:
        run_workers(listener.endpoint, 1, per_worker, pace=0.01)  # about 4.5 s: at least three rollovers
    everything = _files(tmp_path / "all")
    assert len(everything) >= 4, [p.name for p in everything]
    check_lines(read_lines(*everything), {0: per_worker}).assert_exact()
    assert len(read_lines(*everything)) == per_worker
    kept = _files(tmp_path)
    assert len(kept) == 3  # app.log and backupCount = 2 backups
    seqs = sorted(int(m["seq"]) for m in map(PAYLOAD_RE.search, read_lines(*kept)) if m)
    assert seqs == list(range(per_worker - len(seqs), per_worker))  # the newest, contiguous
    assert 0 < len(seqs) < per_worker
    assert listener.stats()["handler_errors"] == {}


def test_timed_rotation_at_time_is_honoured_in_utc(tmp_path, monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # local time of the listener is UTC+05:30
    at = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) + datetime.timedelta(seconds=4)
    config = snippet_file("timed-attime", tmp_path, dir=tmp_path, at=at.time().isoformat())
    with mplog.start_listener(config, route_parent=False) as listener:
        assert time.time() < at.timestamp() - 1  # the handler was built before the rollover time
        run_workers(listener.endpoint, 1, 500, pace=0.01)  # about 5 s around the rollover time
    files = _files(tmp_path)
    assert len(files) == 2, [p.name for p in files]
    backup = next(p for p in files if p.name != "app.log")
    assert re.fullmatch(r"app\.log\.\d{4}-\d{2}-\d{2}", backup.name)
    before = [float(line.split()[0]) for line in read_lines(backup)]
    after = [float(line.split()[0]) for line in read_lines(tmp_path / "app.log")]
    assert before and after
    assert max(before) < at.timestamp() + 0.5 and min(after) >= at.timestamp() - 0.5
    check_lines(read_lines(*files), {0: 500}).assert_exact()
    assert len(read_lines(*files)) == 500
