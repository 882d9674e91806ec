"""Every code snippet in README.md and docs/*.md runs, so the docs cannot drift from the code.

Conventions for doc writers (the files are globbed, so a new page is covered at once):

- A fenced ```python block is a program: it is written to ``snippet.py`` in a fresh
  temporary directory and run there with ``python snippet.py`` (a 60 s limit); it must
  exit 0. Each block stands alone (``if __name__ == "__main__":`` where it starts processes).
- ``<!-- file: NAME -->`` on the line before a fenced block (any language) writes that
  block to ``NAME`` in the directory of every snippet of the same page, so a snippet can
  load ``logging.toml``. A file named ``*.toml``, ``*.json``, ``*.yaml`` or ``*.yml`` is
  also loaded with :func:`mplog.config.load_config` as a test of its own.
- ``<!-- not-run: REASON -->`` on the line before a ```python block skips it, with the
  reason shown in the test report. Use it sparingly: for a fragment that needs a service
  or a second host, not for a snippet that merely takes some work to make runnable.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mplog.config import load_config

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^```(?P<lang>[\w+-]*)\s*$")
MARK = re.compile(r"^<!--\s*(?P<kind>file|not-run):\s*(?P<value>.*?)\s*-->\s*$")
CONFIG_SUFFIXES = (".toml", ".json", ".yaml", ".yml")
SNIPPET_TIMEOUT = 60


@dataclass
class Block:
    page: str
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    file: str | None = None  # <!-- file: NAME -->
    skip: str | None = None  # <!-- not-run: REASON -->

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


@dataclass
class Page:
    name: str
    blocks: list[Block] = field(default_factory=list)

    @property
    def files(self) -> dict[str, str]:
        return {b.file: b.text for b in self.blocks if b.file}


def parse(name: str, text: str) -> Page:
    """Split a Markdown page into its fenced blocks and the marks just above them."""
    page = Page(name)
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None or not lines[i].startswith("```"):
            i += 1
            continue
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        block = Block(name, start + 1, opening["lang"], "\n".join(body) + "\n")
        above = start - 1
        while above >= 0 and not lines[above].strip():
            above -= 1
        mark = MARK.match(lines[above]) if above >= 0 else None
        if mark is not None and mark["kind"] == "file":
            block.file = mark["value"]
        elif mark is not None:
            block.skip = mark["value"] or "no reason given"
        page.blocks.append(block)
        i += 1
    return page


def _pages() -> list[Page]:
    paths = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [parse(str(p.relative_to(ROOT)), p.read_text(encoding="utf-8")) for p in paths if p.exists()]


PAGES = _pages()
SNIPPETS = [(page, b) for page in PAGES for b in page.blocks if b.lang == "python" and not b.file]
CONFIGS = [b for page in PAGES for b in page.blocks if b.file and b.file.endswith(CONFIG_SUFFIXES)]


@pytest.mark.timeout(SNIPPET_TIMEOUT + 30)
@pytest.mark.parametrize(("page", "block"), SNIPPETS, ids=[b.id for _, b in SNIPPETS])
def test_python_snippet_runs(tmp_path, page, block):
    if block.skip:
        pytest.skip(f"not-run: {block.skip}")
    for name, text in page.files.items():
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    (tmp_path / "snippet.py").write_text(block.text, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPLOG_")}
    result = subprocess.run(
        [sys.executable, "snippet.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=SNIPPET_TIMEOUT,
        check=False,
    )
    output = f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
    assert result.returncode == 0, f"{block.id} exited {result.returncode}\n{output}"


@pytest.mark.parametrize("block", CONFIGS, ids=[b.id for b in CONFIGS])
def test_config_file_in_the_docs_loads(tmp_path, block):
    assert block.file is not None
    path = tmp_path / block.file
    path.write_text(block.text, encoding="utf-8")
    load_config(path)


def test_the_snippet_extractor_reads_fences_and_marks():
    page = parse(
        "x.md",
        "text\n<!-- file: logging.toml -->\n```toml\n[root]\nlevel = 'INFO'\n```\n\n"
        "```python\nprint(1)\n```\n<!-- not-run: needs a second host -->\n\n```python\nboom()\n```\n"
        "```sh\nls\n```\n",
    )
    assert [(b.lang, b.line, b.file, b.skip) for b in page.blocks] == [
        ("toml", 3, "logging.toml", None),
        ("python", 8, None, None),
        ("python", 13, None, "needs a second host"),
        ("sh", 16, None, None),
    ]
    assert page.files == {"logging.toml": "[root]\nlevel = 'INFO'\n"}
    assert page.blocks[1].text == "print(1)\n"


def test_the_readme_quick_start_is_run():
    assert any(page.name == "README.md" and block.lang == "python" and not block.skip for page, block in SNIPPETS)
