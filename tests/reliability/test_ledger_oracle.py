"""The oracle can see loss (RELIABILITY A6): a handler that loses, repeats and tears records fails the ledger."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from helpers import payload, read_lines, wait_for
from ledger import build_ledger

import mplog

HERE = str(Path(__file__).resolve().parent)
TESTS = str(Path(__file__).resolve().parent.parent)


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_the_ledger_fails_on_a_handler_that_silently_loses_duplicates_and_truncates(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([HERE, TESTS, os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "out.log"
    config = {
        "version": 1,
        "formatters": {"f": {"format": "%(message)s"}},
        "handlers": {"buggy": {"()": "fault_handlers.LossyDuplicating", "filename": str(out), "formatter": "f"}},
        "root": {"level": "INFO", "handlers": ["buggy"]},
    }
    log = logging.getLogger("oracle")
    with mplog.start_listener(config) as listener:
        for seq in range(2000):
            log.info("%s", payload(0, seq, 10))
        wait_for(lambda: listener.stats()["received"] == 2000)
        stats = listener.stats()
    ledger = build_ledger(read_lines(out), {0: 2000}, stats, {0: os.getpid()})
    entry = ledger.entries[0]
    # The listener saw every record (its counters are clean), so the loss is the handler's,
    # invisible to every counter: only the output check can find it.
    assert stats["gaps"] == stats["dropped"] == stats["rejected"] == 0
    assert entry.unexplained == 100  # every 20th record lost
    assert entry.duplicates == 100  # every 20th + 1 written twice
    assert ledger.truncated == 1
    with pytest.raises(AssertionError, match="unexplained 100"):
        ledger.assert_balanced()


def test_the_ledger_balances_an_output_that_matches_the_counters_and_names_each_kind_of_mismatch():
    lines = [payload(0, s) for s in range(90)] + [payload(1, s) for s in range(50)] + [payload(1, 3)]
    snapshot = {
        "senders": {
            "h/10/1": {"pid": 10, "dropped": 7, "rejected": 0, "gaps": 3, "duplicates": 0},
            "h/11/1": {"pid": 11, "dropped": 0, "rejected": 0, "gaps": 0, "duplicates": 2},
        }
    }
    ledger = build_ledger(lines, {0: 100, 1: 50}, snapshot, {0: 10, 1: 11})
    assert ledger.entries[0].unexplained == 0  # 90 written + 7 dropped + 3 gaps
    assert ledger.entries[1].duplicates == 1 and ledger.entries[1].listener_duplicates == 2
    with pytest.raises(AssertionError, match="1 duplicate lines"):
        ledger.assert_balanced()
    ledger.assert_balanced(max_duplicates=1)
    short = build_ledger(lines[:80], {0: 100}, snapshot, {0: 10})
    with pytest.raises(AssertionError, match="unexplained 10"):
        short.assert_balanced()
    short.assert_balanced(max_unexplained=10)
