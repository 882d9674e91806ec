"""One bad string does not cost its neighbours: a record holding invalid UTF-8 is repaired, the rest delivered.

msgpack refuses a whole frame for one str that is not valid UTF-8 (the encoded bytes of a
lone surrogate, ``b"\\xed\\xb3\\xbf"``, for instance). The listener decodes such a frame
again with the bad bytes kept, writes them as ``\\xNN`` escapes, counts the record under
``repaired["bad_utf8"]`` and delivers every record; a frame whose sender host name is not
valid UTF-8 is refused (its identity cannot be repaired). A frame that decodes as it is
never takes this path.
"""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest
from helpers import wait_for
from hostile import NoReceiver, listener_config, raw_sender, record

import mplog
from mplog.listener.loop import Server
from mplog.wire import repair as wire_repair

BAD = b"\xed\xb3\xbf".decode("utf-8", "surrogateescape")  # packed back as those three bytes
SENDER = ["utf8-host", 7, 1.0, 3]


def packed(records: list[Any], sender: list[Any] | None = None, seq: int = 0) -> bytes:
    data: bytes = msgpack.packb(
        [1, sender or SENDER, seq, 0, 0, records], use_bin_type=True, unicode_errors="surrogateescape"
    )
    return data


def neighbours() -> list[list[Any]]:
    return [
        record("app", "before"),
        record("app", f"bad {BAD} message"),
        record(f"app.{BAD}", "bad logger name"),
        record("extra", "bad extra", extra={f"k{BAD}": f"v{BAD}", "list": ["ok", BAD, {"deep": BAD}]}),
        record("app", "after"),
    ]


@pytest.mark.integration
@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["zmq", "multiprocessing"])
def test_a_record_with_invalid_utf8_is_repaired_and_its_neighbours_delivered(tmp_path, transport):
    out, extras = tmp_path / "out.log", tmp_path / "extras.jsonl"
    config = listener_config(out, fmt="%(name)s|%(message)s")
    config["formatters"]["json"] = {"()": "mplog.formatters.JSONFormatter"}
    config["handlers"]["json"] = {"class": "logging.FileHandler", "filename": str(extras), "formatter": "json"}
    config["loggers"] = {"extra": {"handlers": ["json"], "level": "DEBUG"}}
    endpoint = f"ipc://{tmp_path}/l.sock" if transport == "zmq" else f"mp://{tmp_path}/l.sock"
    with mplog.start_listener(config, endpoint=endpoint, route_parent=False, export_env=False) as listener:
        sender = raw_sender(listener.endpoint)
        try:
            assert sender.send(packed(neighbours()))
            assert sender.send(packed([record("app", "bad host")], sender=["h" + BAD, 1, 1.0, 1]))
            wait_for(lambda: listener.stats()["received"] == 5 and listener.stats()["malformed_total"] == 1, 20)
        finally:
            sender.close()
        stats = listener.stats()
    lines = out.read_bytes().decode("utf-8").splitlines()  # strictly valid UTF-8
    assert lines == [
        "app|before",
        "app|bad \\xed\\xb3\\xbf message",
        "app.\\xed\\xb3\\xbf|bad logger name",
        "extra|bad extra",
        "app|after",
    ]
    [line] = extras.read_bytes().decode("utf-8").splitlines()
    written = json.loads(line)
    assert written["k\\xed\\xb3\\xbf"] == "v\\xed\\xb3\\xbf"
    assert written["list"] == ["ok", "\\xed\\xb3\\xbf", {"deep": "\\xed\\xb3\\xbf"}]
    assert stats["repaired"] == {"bad_utf8": 3}
    assert stats["malformed"] == {"bad_utf8": 1}  # the frame whose host name is bad
    assert stats["senders"]["utf8-host/7/00000003"]["records"] == 5
    assert stats["gaps"] == 0


def test_a_frame_that_decodes_never_takes_the_repair_path(monkeypatch):
    """No extra cost on frames that decode fine: the second decode runs only after msgpack refused one."""
    calls: list[bytes] = []
    real = wire_repair.decode_escaped
    monkeypatch.setattr(
        "mplog.listener.loop.decode_escaped", lambda data, limits: calls.append(data) or real(data, limits)
    )
    server = Server(NoReceiver())  # type: ignore[arg-type]  # frames handed in directly
    server.handle_frame(packed([record("app", "fine")]))
    assert calls == []
    assert server.snapshot()["received"] == 1
    server.handle_frame(packed([record("app", BAD)], seq=1))
    assert len(calls) == 1
    assert server.snapshot()["repaired"] == {"bad_utf8": 1}


def test_decode_frame_itself_stays_strict():
    from mplog.exceptions import FrameError
    from mplog.wire import decode_frame

    with pytest.raises(FrameError) as refused:
        decode_frame(packed([record("app", BAD)]))
    assert refused.value.reason == "bad_utf8"
    frame = wire_repair.decode_escaped(packed([record("app", BAD)]))
    fixed, reasons = wire_repair.salvage_records(frame.records, escaped=True)
    assert reasons == ["bad_utf8"]
    assert fixed[0] is not None and fixed[0][3] == "\\xed\\xb3\\xbf"
