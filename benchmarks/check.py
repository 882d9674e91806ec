"""The output checker: every (producer pid, i) exactly once, every line well formed.

Usable on its own: ``python -m benchmarks.check FILE --pids 123,456 --records 50000``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

LINE_RE = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<pid>\d+) INFO bench request (?P<i>\d+) handled in 1\.234 ms user=alice"
)


@dataclass
class Verdict:
    """Exact counts found in an output file."""

    lines: int = 0
    lost: int = 0
    duplicated: int = 0
    malformed: int = 0
    unexpected: int = 0  # well-formed lines naming a pid or number nobody logged
    samples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.malformed or self.unexpected)


def check_lines(lines: Iterable[str], expected: dict[int, int]) -> Verdict:
    """Compare ``lines`` with ``expected`` (producer pid -> number of records logged)."""
    verdict = Verdict()
    seen: Counter[tuple[int, int]] = Counter()
    for line in lines:
        verdict.lines += 1
        match = LINE_RE.fullmatch(line)
        if match is None:
            verdict.malformed += 1
            if len(verdict.samples) < 3:
                verdict.samples.append(line[:200])
            continue
        key = (int(match["pid"]), int(match["i"]))
        if key[0] not in expected or key[1] >= expected[key[0]]:
            verdict.unexpected += 1
            continue
        seen[key] += 1
    verdict.duplicated = sum(n - 1 for n in seen.values() if n > 1)
    verdict.lost = sum(expected.values()) - len(seen)
    return verdict


def check_file(paths: Iterable[Path], expected: dict[int, int]) -> Verdict:
    """Check the lines of every file in ``paths`` together (rotated files included)."""

    def lines() -> Iterable[str]:
        for path in paths:
            if path.exists():
                with path.open(encoding="utf-8", errors="replace", newline="\n") as handle:
                    for line in handle:
                        yield line[:-1] if line.endswith("\n") else line

    return check_lines(lines(), expected)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--pids", required=True, help="comma-separated producer pids")
    parser.add_argument("--records", type=int, required=True, help="records logged by each producer")
    args = parser.parse_args(argv)
    expected = {int(p): args.records for p in args.pids.split(",")}
    verdict = check_file(args.files, expected)
    print(verdict)
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
