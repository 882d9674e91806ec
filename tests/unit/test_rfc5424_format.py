"""The RFC 5424 encoder: header fields, timestamps with offsets, structured data escaping, limits and what is cut."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator

import pytest

from mplog.exceptions import ConfigError
from mplog.handlers import RELPHandler, RFC5424Format, RFC5424Handler
from mplog.handlers.relp_session import MAX_TXNR, RELPSession
from mplog.handlers.rfc5424_format import RFC5424Encoder, facility_code


def _record(msg: str = "hello", **attrs: object) -> logging.LogRecord:
    record = logging.LogRecord("app.db", logging.WARNING, __file__, 10, msg, None, None)
    record.__dict__.update(attrs)
    return record


def _encode(record: logging.LogRecord, **options: object) -> tuple[str, RFC5424Encoder]:
    encoder = RFC5424Encoder(RFC5424Format(**options))  # type: ignore[arg-type]
    return encoder.encode(record, record.getMessage()).decode("utf-8"), encoder


@pytest.fixture
def timezone() -> Iterator[object]:
    before = os.environ.get("TZ")

    def use(name: str) -> None:
        os.environ["TZ"] = name
        time.tzset()

    yield use
    if before is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = before
    time.tzset()


@pytest.mark.parametrize(
    ("zone", "utc", "expected"),
    [
        ("UTC", False, "2023-11-14T22:13:20.123456+00:00"),
        ("Asia/Kolkata", False, "2023-11-15T03:43:20.123456+05:30"),
        ("America/St_Johns", False, "2023-11-14T18:43:20.123456-03:30"),
        ("Asia/Kolkata", True, "2023-11-14T22:13:20.123456Z"),
    ],
)
def test_the_timestamp_has_microseconds_and_the_utc_offset_of_that_moment(timezone, zone, utc, expected):
    timezone(zone)
    text, _ = _encode(_record(created=1_700_000_000.123456), utc=utc)
    assert text.split(" ")[1] == expected


def test_the_header_names_the_workers_host_pid_app_and_logger(timezone):
    timezone("UTC")
    record = _record(hostname="web7", process=4242, processName="ForkPoolWorker-3", created=0.5)
    text, encoder = _encode(record, facility="local3")
    assert text == "<156>1 1970-01-01T00:00:00.500000+00:00 web7 ForkPoolWorker-3 4242 app.db - \ufeffhello"
    assert encoder.cut == {"header": 0, "name": 0, "value": 0, "message": 0}
    fixed, _ = _encode(_record(app_name="from-extra"), app_name="shop", msgid="ORDERS", bom=False)
    assert fixed.split(" ")[3:6] == ["shop", str(os.getpid()), "ORDERS"]
    assert fixed.endswith(" - hello")  # no BOM when asked
    from_extra, _ = _encode(_record(app_name="from-extra"))
    assert from_extra.split(" ")[3] == "from-extra"


def test_structured_data_carries_the_sender_the_sequence_number_and_the_extras_escaped():
    record = _record(
        mplog_sender="web7/4242/00c0ffee",
        mplog_seq=17,
        peer_key="AbC=]",
        user='bo"b',
        path="C:\\tmp]",
        count=3,
        tags=["a", "b"],
    )
    text, encoder = _encode(record)
    sd = text.split(" ", 6)[6].rsplit(" ", 1)[0]
    assert sd == (
        '[mplog@32473 sender="web7/4242/00c0ffee" peer="AbC=\\]" seq="17"]'
        '[fields@32473 user="bo\\"b" path="C:\\\\tmp\\]" count="3" tags="[\\"a\\", \\"b\\"\\]"]'
    )
    assert encoder.cut == {"header": 0, "name": 0, "value": 0, "message": 0}
    other, _ = _encode(_record(mplog_sender="h/1/00000001", mplog_seq=None), enterprise_id=12345)
    assert '[mplog@12345 sender="h/1/00000001"]' in other
    plain, _ = _encode(_record(user="x"), structured_data=False)
    assert plain.split(" ")[6] == "-"


def test_names_values_header_fields_and_messages_past_the_limits_are_cut_and_counted():
    record = _record(
        "é" * 1000,
        hostname="h" * 300,
        **{"bad name=]": 1, "n" * 40: "v" * 50},
    )
    text, encoder = _encode(record, max_value_chars=20, max_message_bytes=600)
    raw = text.encode()
    assert len(raw) <= 600
    assert text.split(" ")[2] == "h" * 255
    assert ' bad_name__="1" ' + "n" * 32 + '="' + "v" * 20 + '"]' in text
    assert text.endswith("é") and "\ufffd" not in text  # cut between characters, not inside one
    assert encoder.cut == {"header": 1, "name": 2, "value": 1, "message": 1}


def test_structured_data_too_long_for_the_message_is_left_out_and_counted():
    text, encoder = _encode(_record("text", big="x" * 900), max_value_chars=1000, max_message_bytes=500)
    assert text.split(" ")[6] == "-" and text.endswith("text")
    assert encoder.cut["value"] == 1


def test_levels_map_to_syslog_severities_and_facilities_by_name_or_number():
    severities = {}
    for level in (5, logging.DEBUG, logging.INFO, 25, logging.WARNING, logging.ERROR, logging.CRITICAL, 60):
        record = _record()
        record.levelno = level
        text, _ = _encode(record, facility=23)
        severities[level] = int(text[1 : text.index(">")]) - 23 * 8
    assert severities == {5: 7, 10: 7, 20: 6, 25: 6, 30: 4, 40: 3, 50: 2, 60: 2}
    assert facility_code("local0") == 16 and facility_code(logging.handlers.SysLogHandler.LOG_LOCAL0) == 16


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"facility": "nope"}, "facility must be a syslog facility name"),
        ({"app_name": "has space"}, "app_name must be 1 to 48 printable ASCII"),
        ({"msgid": "m" * 33}, "msgid must be 1 to 32"),
        ({"policy": "drop_all"}, "policy must be one of block, drop_newest, drop_oldest"),
        ({"max_buffer": 0}, "max_buffer must be a positive int"),
        ({"max_message_bytes": 100}, "at least 480"),
        ({"windwo": 8}, "unknown option 'windwo'; known options:"),
        ({"keyfile": "/k.pem"}, "keyfile is set without certfile"),
    ],
)
def test_bad_options_are_config_errors_that_name_the_key(options, message):
    with pytest.raises(ConfigError, match=message):
        RFC5424Handler(["127.0.0.1", 514], "tcp", **options)
    with pytest.raises(ConfigError, match="transport must be one of tcp, tls"):
        RELPHandler(["127.0.0.1", 2514], "udp")
    with pytest.raises(ConfigError, match="address must be"):
        RFC5424Handler(["127.0.0.1", "514"], "udp")


# ---------------------------------------------------------------- the RELP session's reader


def test_relp_responses_split_across_reads_are_parsed_whole_and_numbers_wrap_after_999999999():
    import socket

    ours, theirs = socket.socketpair()
    try:
        session = RELPSession(ours)
        offers = b"200 OK\nrelp_version=0\nrelp_software=x\ncommands=syslog"
        stream = b"1 rsp %d %b\n" % (len(offers), offers)
        stream += b"2 rsp 6 200 OK\n3 rsp 13 500 too large\n0 serverclose 0\n"
        found = []
        for start in range(0, len(stream), 7):  # seven bytes at a time
            theirs.sendall(stream[start : start + 7])
            found += session.receive(1.0)
        assert found == [
            (1, b"rsp", offers),
            (2, b"rsp", b"200 OK"),
            (3, b"rsp", b"500 too large"),
            (0, b"serverclose", b""),
        ]
        assert session.closed_by_server
        session._next = MAX_TXNR
        assert [session.next_txnr() for _ in range(3)] == [MAX_TXNR, 1, 2]
        theirs.sendall(b"7 rsp 99999999 x\n")
        with pytest.raises(OSError, match="more than a response needs"):
            session.receive(1.0)
    finally:
        ours.close()
        theirs.close()
