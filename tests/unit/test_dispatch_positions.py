"""Records carry their sender and sequence number only when a configured handler asks for them."""

from __future__ import annotations

import logging

from mplog.listener.dispatch import BatchDispatcher
from mplog.wire import Sender, build_frame, decode_header, encode_record, encode_sender


class Keeper(logging.Handler):
    def __init__(self, wants: bool) -> None:
        super().__init__()
        self.wants_positions = wants
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _frame(first: int, count: int) -> bytes:
    maker = logging.getLogger("positions")
    packed = [
        encode_record(maker.makeRecord("positions", logging.INFO, __file__, 1, "r%d", (i,), None)) for i in range(count)
    ]
    return build_frame(encode_sender(Sender("web7", 4242, 1.0, 7)), first, 0, 0, packed)


def _dispatch(wants: bool, first_seq: int | None) -> list[logging.LogRecord]:
    keeper = Keeper(wants)
    logger = logging.getLogger("positions")
    logger.addHandler(keeper)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        frame = decode_header(_frame(100, 5))
        BatchDispatcher().dispatch(frame.records, "web7", sender=frame.sender.key, first_seq=first_seq)
    finally:
        logger.removeHandler(keeper)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    return keeper.records


def test_a_handler_that_wants_positions_gets_each_records_sender_and_sequence_number():
    records = _dispatch(True, 100)
    assert [(r.mplog_sender, r.mplog_seq, r.getMessage()) for r in records] == [
        ("web7/4242/00000007", 100 + i, f"r{i}") for i in range(5)
    ]
    unnumbered = _dispatch(True, None)  # records not consecutive (some refused by validation)
    assert [(r.mplog_sender, r.mplog_seq) for r in unnumbered] == [("web7/4242/00000007", None)] * 5


def test_without_such_a_handler_records_get_nothing_added():
    records = _dispatch(False, 100)
    assert len(records) == 5
    assert not any(hasattr(r, "mplog_seq") or hasattr(r, "mplog_sender") for r in records)
