"""The receive loop runs with fewer young collections (mplog.listener.gc_threshold) and gives the threshold back."""

from __future__ import annotations

import gc
import logging
import threading
from pathlib import Path

from helpers import payload, wait_for

from mplog.listener.gc_threshold import YOUNG_THRESHOLD
from mplog.listener.loop import Server
from mplog.transports import open_receiver, open_sender
from mplog.wire import Sender, build_frame, encode_record, encode_sender


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_the_receive_loop_raises_the_young_gc_threshold_and_puts_it_back(tmp_path: Path) -> None:
    lines = _Lines()
    logger = logging.getLogger("gc.loop")
    logger.handlers[:] = [lines]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    before = gc.get_threshold()
    server = Server(open_receiver(f"ipc://{tmp_path}/listener.sock"))
    sender = open_sender(server.receiver.endpoint)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        identity = encode_sender(Sender("host-gc", 1, 1.0, 1))
        records = [
            encode_record(logging.LogRecord("gc.loop", logging.INFO, __file__, 1, payload(1, i), None, None))
            for i in range(300)
        ]
        assert sender.send(build_frame(identity, 0, 0, 0, records), 5.0)
        wait_for(lambda: len(lines.messages) == 300, timeout=20)
        assert lines.messages == [payload(1, i) for i in range(300)]
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *before[1:])
        # Cyclic garbage is still collected, only later: an explicit collection finds it.
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        server.stop_event.set()
        thread.join(20)
        sender.close()
        server.receiver.close()
    assert not thread.is_alive()
    assert gc.get_threshold() == before
