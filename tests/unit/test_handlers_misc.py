"""mplog.handlers pieces without a listener: rotation, queue, stream factory, syslog reconnection, config checks."""

from __future__ import annotations

import datetime
import gzip
import io
import logging
import socket
import threading
import time

import pytest

from mplog import ConfigError
from mplog.config import load_config
from mplog.handlers import FactoryStreamHandler, QueuedHandler, RotatingFileHandler, TimedRotatingFileHandler
from mplog.handlers.rotation import Compressor, gzip_file
from mplog.handlers.syslog import peer_closed


def _record(text: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("app", level, __file__, 1, "%s", (text,), None)


def test_gzip_file_replaces_the_source_with_its_compressed_copy(tmp_path):
    source, dest = tmp_path / "a.log.pending", tmp_path / "a.log.1.gz"
    source.write_bytes(b"line\n" * 1000)
    gzip_file(str(source), str(dest))
    assert gzip.decompress(dest.read_bytes()) == b"line\n" * 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.log.1.gz"]


def test_compressor_reports_a_file_it_cannot_compress_and_keeps_going(tmp_path):
    failed: list[str] = []
    compressor = Compressor(on_error=failed.append)
    (tmp_path / "ok").write_text("x")
    compressor.submit(str(tmp_path / "missing"), str(tmp_path / "missing.gz"))
    compressor.submit(str(tmp_path / "ok"), str(tmp_path / "ok.gz"))
    assert compressor.stop(5)
    assert failed == [str(tmp_path / "missing")]
    assert compressor.compressed == 1 and (tmp_path / "ok.gz").exists()


def test_rotating_handler_with_compress_writes_gz_backups_and_waits_for_them_at_close(tmp_path):
    handler = RotatingFileHandler(str(tmp_path / "app.log"), maxBytes=100, backupCount=3, compress="gzip")
    handler.setFormatter(logging.Formatter("%(message)s"))
    for i in range(40):
        handler.handle(_record(f"record {i:04d}"))
    handler.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["app.log", "app.log.1.gz", "app.log.2.gz", "app.log.3.gz"]
    newest = gzip.decompress((tmp_path / "app.log.1.gz").read_bytes()).decode().splitlines()
    current = (tmp_path / "app.log").read_text().splitlines()
    assert newest[-1] == f"record {39 - len(current):04d}"


def test_rotation_options_are_checked_with_a_clear_message(tmp_path):
    path = str(tmp_path / "x.log")
    with pytest.raises(ConfigError, match="compress must be one of gzip"):
        RotatingFileHandler(path, compress="zip")
    with pytest.raises(ConfigError, match="either compress or rotator"):
        RotatingFileHandler(path, compress="gzip", rotator="ext://mplog.handlers.rotation.gzip_file")
    with pytest.raises(ConfigError, match="cannot be imported"):
        RotatingFileHandler(path, namer="ext://no.such.module.namer")
    with pytest.raises(ConfigError, match="atTime must be a time"):
        TimedRotatingFileHandler(path, when="midnight", atTime="25 o'clock")


def test_timed_handler_takes_at_time_as_a_string(tmp_path):
    handler = TimedRotatingFileHandler(str(tmp_path / "x.log"), when="midnight", atTime="02:30:15", delay=True)
    assert handler.atTime == datetime.time(2, 30, 15)
    handler.close()


def test_queued_handler_feeds_named_targets_from_its_thread_and_drains_at_close():
    target = logging.StreamHandler(io.StringIO())
    target.set_name("unit-target")
    handler = QueuedHandler(["unit-target"], maxsize=5)
    try:
        for i in range(3):
            handler.handle(_record(f"r{i}"))
    finally:
        handler.close()
    assert target.stream.getvalue().splitlines() == ["r0", "r1", "r2"]
    with pytest.raises(ConfigError, match="list of handler names"):
        QueuedHandler("unit-target")


def test_queued_handler_counts_records_its_full_queue_dropped():
    target = logging.StreamHandler(io.StringIO())
    handler = QueuedHandler([target], maxsize=2)
    handler.start()
    assert handler.listener is not None
    handler.listener.stop()  # nothing drains the queue now
    handler.listener = None
    for i in range(5):
        handler.handle(_record(f"r{i}"))
    assert handler.dropped == 3


def test_queued_handler_close_is_bounded_and_counts_what_a_held_target_never_took():
    # A target that never returns (an SMTP server that accepts and never greets) held close()
    # for good, and nothing counted the queued records (an outsider: 297 of 300).
    release = threading.Event()

    class Held(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.taken: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.taken.append(record.getMessage())
            release.wait(30)

    target = Held()
    handler = QueuedHandler([target], maxsize=100, close_timeout=0.3)
    for i in range(50):
        handler.handle(_record(f"r{i}"))
    wait_until = time.monotonic() + 5
    while not target.taken and time.monotonic() < wait_until:
        time.sleep(0.01)  # the feeding thread has taken the first record into the held target
    began = time.monotonic()
    handler.close()
    assert time.monotonic() - began < 2.0
    assert target.taken == ["r0"] and handler.dropped == 49  # in the target, or dropped and counted
    release.set()
    with pytest.raises(ConfigError, match="close_timeout must be a number"):
        QueuedHandler([target], close_timeout="10")


def test_factory_stream_handler_opens_at_the_first_record_and_reopens_on_demand():
    streams: list[io.StringIO] = []

    def factory(prefix: str) -> io.StringIO:
        streams.append(io.StringIO(prefix))
        streams[-1].seek(len(prefix))
        return streams[-1]

    handler = FactoryStreamHandler(factory, kwargs={"prefix": ">"}, close_stream=False)
    assert streams == []
    handler.handle(_record("one"))
    handler.reopen()
    handler.handle(_record("two"))
    handler.close()
    assert [s.getvalue() for s in streams] == [">one\n", ">two\n"]


def test_peer_closed_tells_a_live_connection_from_one_the_peer_closed():
    left, right = socket.socketpair()
    try:
        assert not peer_closed(left)
        right.close()
        assert peer_closed(left)
    finally:
        left.close()


@pytest.mark.parametrize(
    "spec",
    [
        {"class": "logging.handlers.SocketHandler", "host": "h", "port": 1},
        {"()": "logging.handlers.DatagramHandler", "host": "h", "port": 1},
    ],
)
def test_pickle_sending_handlers_need_the_explicit_opt_in(spec):
    with pytest.raises(ConfigError, match="sends pickled records"):
        load_config({"handlers": {"legacy": spec}})
    config, runtime = load_config({"mplog": {"allow_pickle_forwarding": True}, "handlers": {"legacy": spec}})
    assert runtime.allow_pickle_forwarding and "legacy" in config["handlers"]
    with pytest.raises(ConfigError, match="allow_pickle_forwarding must be true or false"):
        load_config({"mplog": {"allow_pickle_forwarding": "yes"}})


def test_a_memory_handler_flush_level_name_becomes_its_number():
    spec = {"class": "logging.handlers.MemoryHandler", "capacity": 5, "flushLevel": "error"}
    config, _ = load_config({"handlers": {"buffer": spec}})
    assert config["handlers"]["buffer"]["flushLevel"] == logging.ERROR
    with pytest.raises(ConfigError, match=r"handlers\.buffer\.flushLevel must be a level name"):
        load_config({"handlers": {"buffer": dict(spec, flushLevel="LOUD")}})


def test_nt_event_log_handler_is_refused_off_windows():
    with pytest.raises(ConfigError, match="only on Windows"):
        load_config({"handlers": {"events": {"class": "logging.handlers.NTEventLogHandler", "appname": "a"}}})
