"""ListenerStats: the snapshot as a dict, typed properties, a one-line str(); json_safe: strict JSON."""

from __future__ import annotations

import json
import math

from mplog.listener.stats_view import ListenerStats, SenderCounts, json_safe, summary

SNAPSHOT = {
    "received": 7,
    "frames": 3,
    "dropped": 2,
    "gaps": 1,
    "duplicates": 0,
    "rejected": 0,
    "malformed": {"bad_header": 2},
    "malformed_total": 2,
    "repaired": {"bad_level": 1},
    "repaired_total": 1,
    "handler_errors": {"file": 3},
    "refused": 0,
    "uptime": 12.5,
    "senders": {
        "a/1/00000001": {"host": "a", "pid": 1, "stream": 1, "records": 4, "dropped": 2, "gaps": 1, "closed": True},
        "b/2/00000002": {"host": "b", "pid": 2, "stream": 2, "records": 3, "dropped": 0, "gaps": 0, "closed": False},
    },
}


def test_the_stats_are_the_snapshot_with_typed_properties():
    stats = ListenerStats(SNAPSHOT)
    assert stats == SNAPSHOT and json.loads(json.dumps(stats)) == SNAPSHOT
    assert (stats.received, stats.frames, stats.dropped, stats.gaps, stats.duplicates) == (7, 3, 2, 1, 0)
    assert (stats.malformed, stats.repaired, stats.handler_errors, stats.uptime) == (2, 1, 3, 12.5)
    sender = stats.senders["a/1/00000001"]
    assert isinstance(sender, SenderCounts) and stats["senders"]["a/1/00000001"] is sender
    assert (sender.host, sender.pid, sender.records, sender.closed) == ("a", 1, 4, True)
    assert str(sender) == "a/1: 4 records, dropped 2, gaps 1, duplicates 0, closed"
    assert SNAPSHOT["senders"]["a/1/00000001"].__class__ is dict  # the input is not changed


def test_str_is_one_line_naming_every_kind_of_loss():
    line = (
        "received 7 records from 2 senders (1 closed): dropped 2, gaps 1, duplicates 0, malformed 2, "
        "repaired 1, handler errors 3 (file 3)"
    )
    assert str(ListenerStats(SNAPSHOT)) == summary(SNAPSHOT) == line
    assert summary({**SNAPSHOT, "refused": 4}) == line.replace(", handler", ", refused 4 connections, handler")
    # Records of frames refused whole: mplog status and print(stats) left them out, so a sender's
    # rows did not add up (an observability outsider: 13 received + 5 gaps of 20 logged).
    assert summary({**SNAPSHOT, "rejected": 2}) == line.replace(", handler", ", rejected 2, handler")
    crowded = {**SNAPSHOT, "claims_refused_total": 2, "folded": {"senders": 9, "returned": 1}}
    assert summary(crowded) == line.replace("2 senders", "2 senders (+8 folded)").replace(
        ", handler", ", refused claims 2, handler"
    )
    acknowledged = {**SNAPSHOT, "unclosed": 1, "unconfirmed": 3, "out_of_order": 2}
    assert summary(acknowledged) == line.replace(
        ", handler",
        ", 1 ended without goodbye (possible loss), unconfirmed 3 frames, out of order 2 frames (resent), handler",
    )
    stats = ListenerStats(acknowledged)
    assert (stats.unclosed, stats.unconfirmed, stats.out_of_order) == (1, 3, 2)
    assert str(ListenerStats()) == (
        "received 0 records from 0 senders (0 closed): dropped 0, gaps 0, duplicates 0, malformed 0, repaired 0"
    )


def test_json_safe_turns_every_non_finite_float_into_null():
    value = {"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": {"d": (math.nan, 2)}, "e": "NaN"}
    assert json.dumps(json_safe(value), allow_nan=False) == (
        '{"a": null, "b": [null, null, 1.5], "c": {"d": [null, 2]}, "e": "NaN"}'
    )
