"""The cyclic garbage collector as the listener's receive loop runs it (issue 17, lever P1).

Decoding one frame of version 1 builds some 21 lists per record (512 records: ~10,750
containers) before any of them is freed; with CPython's default first-generation threshold
(700 net allocations) that is ~15 young collections, and a middle one every tenth, per
frame, each walking objects that plain reference counting frees a moment later (~0.1 to
0.3 us per record of the listener's ~2 us). The loop's own data holds no reference
cycles, so while it runs the first-generation threshold is :data:`YOUNG_THRESHOLD`.
(``gc.freeze()`` of what start-up built as well measured no better: 1.165 against 1.141
us per record in process, within noise; full collections are rare either way.)

The trade: cyclic garbage (made by a handler or a library, say) is collected later: after
at most :data:`YOUNG_THRESHOLD` net container allocations instead of 700, i.e. it can hold
that many more objects (a few MB at most) for a while; nothing that reference counting
frees (everything the listener itself makes) lives any longer. The threshold is put back
when the loop ends (an in-process Server in a test leaves the interpreter as it found it).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["YOUNG_THRESHOLD", "collector_gc"]

YOUNG_THRESHOLD = 100_000  # net container allocations between two young collections (CPython's default: 700)


@contextmanager
def collector_gc(young: int = YOUNG_THRESHOLD) -> Iterator[None]:
    """Raise the first-generation threshold to ``young`` (never lower it) while the block runs."""
    before = gc.get_threshold()
    gc.set_threshold(max(young, before[0]), *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
