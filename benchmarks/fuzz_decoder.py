"""Long-running fuzz target for the frame decoder (RELIABILITY C2, bench variant).

Runs ``mplog.wire.decode_frame`` on fuzzer-chosen bytes and fails on anything but a
clean decode or :class:`mplog.FrameError`. With atheris installed it is coverage
guided (libFuzzer); without it, Hypothesis drives the same target at scale::

    python benchmarks/fuzz_decoder.py -atheris_runs=2000000 -max_len=65536 -rss_limit_mb=2048 -timeout=5
    python benchmarks/fuzz_decoder.py --hypothesis 200000

Seeds are valid frames (built by the real encoder) written to a fresh corpus
directory, so mutations start from the interesting part of the input space.
The last run's figures are in docs/reliability.md.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time

import msgpack

from mplog.exceptions import FrameError
from mplog.wire import DEFAULT_LIMITS, Sender, build_frame, decode_frame, encode_record, encode_sender, make_log_record


def _seed_frames() -> list[bytes]:
    sender = encode_sender(Sender("host", 1234, 1.5, 7))
    records = []
    for i, (msg, extra) in enumerate(
        [
            ("hello", {}),
            ("with extra %s", {"user": "x", "n": 3, "nested": {"a": [1, 2.5, None, b"\x00"]}}),
            ("\udcff surrogate", {"k": True}),
        ]
    ):
        rec = logging.LogRecord("fuzz.name", logging.INFO, "/p.py", i, msg, ("a",) if "%s" in msg else None, None)
        rec.__dict__.update(extra)
        records.append(encode_record(rec))
    return [
        build_frame(sender, 0, 0, 0, records),
        build_frame(sender, 5, 2, 1, []),
        build_frame(sender, 2**40, 0, 0, records[:1] * 20),
        msgpack.packb([1, ["h", 1, 0.0, 0], 0, 0, 0, [[None] * 20]]),
    ]


def check_one(data: bytes) -> None:
    """The property: decode returns a validated frame or raises FrameError; nothing else."""
    try:
        frame = decode_frame(data, DEFAULT_LIMITS)
    except FrameError:
        return
    for fields in frame.records:  # what reaches a handler must build a LogRecord
        record = make_log_record(fields, frame.sender.host)
        if not isinstance(record.msg, str):
            raise AssertionError(f"non-str message reached a handler: {type(record.msg)}")


def run_atheris(argv: list[str]) -> None:
    import atheris

    corpus = tempfile.mkdtemp(prefix="mplog-fuzz-corpus-")
    for i, frame in enumerate(_seed_frames()):
        with open(os.path.join(corpus, f"seed{i}"), "wb") as f:
            f.write(frame)
    atheris.instrument_all()  # mplog.wire is pure Python: coverage guides the mutations
    atheris.Setup([*argv, corpus], check_one)
    atheris.Fuzz()


def run_hypothesis(examples: int) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    seeds = _seed_frames()

    def mutate(base: bytes, edits: list[tuple[int, int]]) -> bytes:
        buf = bytearray(base)
        for pos, byte in edits:
            if buf:
                buf[pos % len(buf)] = byte
        return bytes(buf)

    inputs = st.one_of(
        st.binary(max_size=65536),
        st.builds(
            mutate,
            st.sampled_from(seeds),
            st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=8),
        ),
    )

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(inputs)
    def prop(data: bytes) -> None:
        check_one(data)

    start = time.monotonic()
    prop()
    print(f"hypothesis: {examples} examples in {time.monotonic() - start:.0f} s, no failure")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--hypothesis":
        run_hypothesis(int(sys.argv[2]))
    else:
        try:
            import atheris  # noqa: F401
        except ImportError:
            run_hypothesis(100_000)
        else:
            run_atheris(sys.argv)
