"""One reader of a frame's envelope (mplog.wire.read_envelope), and no other module reading frame bytes.

The listener's holding and acknowledgements, the worker's acknowledged sender and spool,
and the listener's count of a frame refused whole all read a frame's sender, place and
flags with it: the same answer for a version 1 and a version 2 frame of the same records,
the same refusals for bytes that are not a frame.
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import msgpack
import pytest
from helpers import payload

import mplog
from mplog.wire import FLAG_URGENT, Envelope, Sender, encode_sender, read_envelope, read_sender
from mplog.wire.columns import frame_of_body, pack_body
from mplog.wire.encode import plain_fields
from mplog.wire.schema import DEFAULT_LIMITS

SENDER = Sender("host-a", 4242, 1.7e9, 0xBEEF)


def _frames(n: int, seq: int = 10, dropped: int = 3, flags: int = FLAG_URGENT) -> tuple[bytes, bytes]:
    """The same ``n`` records as a version 1 and a version 2 frame."""
    records = []
    for i in range(n):
        fields = plain_fields(logging.LogRecord("app", logging.INFO, "p.py", i, payload(0, i), None, None))
        assert fields is not None
        records.append(fields)
    packer = msgpack.Packer(use_bin_type=True)
    sender = encode_sender(SENDER)
    v1 = frame_of_body(sender, seq, dropped, flags, pack_body(packer, records, DEFAULT_LIMITS, columns=False))
    v2 = frame_of_body(sender, seq, dropped, flags, pack_body(packer, records, DEFAULT_LIMITS))
    return v1, v2


@pytest.mark.parametrize("n", [0, 1, 40])
def test_a_version_1_and_a_version_2_frame_have_the_same_envelope(n: int) -> None:
    v1, v2 = _frames(n)
    assert (v1[:2], v2[:2]) == (b"\x96\x01", b"\x97\x02" if n else b"\x96\x01")
    one, two = read_envelope(v1), read_envelope(v2)
    expected = Envelope(1, encode_sender(SENDER), "host-a", 4242, 1.7e9, 0xBEEF, 10, 3, FLAG_URGENT, n)
    assert one == expected
    assert two == expected._replace(version=2 if n else 1)
    assert (two.key, two.end_seq, two.identity()) == (SENDER.key, 10 + n, SENDER)


@pytest.mark.parametrize(
    "obj",
    [
        [2, list(SENDER), 0, 0, 0, []],  # six items say version 1
        [1, list(SENDER), 0, 0, 0, 1, []],  # seven say version 2
        [1, list(SENDER)[:3], 0, 0, 0, []],
        [1, [7, 4242, 1.0, 1], 0, 0, 0, []],  # a host that is no str
        [1, list(SENDER), -1, 0, 0, []],
        [1, list(SENDER), 0, True, 0, []],  # a msgpack boolean is no int
        [2, list(SENDER), 0, 0, 0, -1, []],
        [2, list(SENDER), 0, 0, 0, "1", []],
        {"not": "a frame"},
    ],
)
def test_what_does_not_start_like_a_frame_is_refused(obj: object) -> None:
    data = msgpack.packb(obj, use_bin_type=True)
    with pytest.raises(ValueError, match="not a frame envelope"):
        read_envelope(data)
    with pytest.raises(ValueError, match="not a frame envelope"):
        read_envelope(data[:3])


def test_the_decoders_checks_apply_where_a_trusted_sender_is_needed() -> None:
    env = read_envelope(msgpack.packb([1, ["h" * 300, 1, 1.0, 1], 0, 0, 0, []], use_bin_type=True))
    with pytest.raises(mplog.FrameError, match="host must be a str of at most 255"):
        env.identity()


def test_no_module_outside_the_wire_package_reads_a_frames_bytes() -> None:
    """A frame's envelope is read by mplog.wire alone (issue 15, item 4): no other parser of it."""
    root = Path(mplog.__file__).parent
    readers = [
        f"{path.relative_to(root)}:{node.lineno} {node.attr}"
        for path in sorted(root.rglob("*.py"))
        if path.parent.name != "wire"
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Attribute) and node.attr in ("Unpacker", "read_array_header")
    ]
    assert readers == []


def test_a_packed_sender_reads_back_as_its_sender() -> None:
    """A sender kept apart from its frame (a spool file's identity) is read by the wire package too."""
    assert read_sender(encode_sender(SENDER)) == SENDER
    assert read_sender(read_envelope(_frames(1)[1]).sender) == SENDER
    for bad in (b"", b"\xc1", msgpack.packb([1, 2, 3, 4]), msgpack.packb(["h", -1, 0.0, 1]), b"\x94"):
        with pytest.raises(ValueError, match="not a packed sender"):
            read_sender(bad)


# Modules outside mplog/wire that unpack msgpack of their own (not a frame, not a sender).
_OWN_FORMATS = {
    "delivery/ack_format.py",  # an acknowledgement: [stream, next_seq(, refused)]
    "delivery/intent.py",  # the write-ahead intent file's entries
}


def test_no_module_outside_the_wire_package_unpacks_a_sender() -> None:
    """``unpackb`` outside mplog.wire only in modules with formats of their own (issue 15, item 4)."""
    root = Path(mplog.__file__).parent
    callers = {
        str(path.relative_to(root))
        for path in sorted(root.rglob("*.py"))
        if path.parent.name != "wire"
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Attribute) and node.attr == "unpackb"
    }
    assert callers <= _OWN_FORMATS
