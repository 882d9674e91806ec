"""Every script in examples/ runs and reports success.

The convention every example follows (and new ones must follow to be run here):
``python examples/NAME.py OUTPUT_DIR`` writes only under OUTPUT_DIR, prints a one-line
summary as its last line of output (``NAME example: ...``), and exits 0 only when every
record it logged arrived.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.py"))


def test_the_examples_directory_holds_the_core_examples():
    names = {path.stem for path in EXAMPLES}
    assert {"pool", "executor", "process", "collector"} <= names


@pytest.mark.timeout(120)
@pytest.mark.parametrize("script", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_example_runs_and_every_record_arrives(tmp_path, script):
    output = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPLOG_")}
    proc = subprocess.run(
        [sys.executable, str(script), str(output)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    lines = proc.stdout.strip().splitlines()
    assert lines, f"{script.name} printed no summary; stderr:\n{proc.stderr}"
    assert " example: " in lines[-1], lines[-1]
    assert output.is_dir()
