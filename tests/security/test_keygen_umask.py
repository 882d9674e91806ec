"""``mplog keygen`` makes its key directory 0700 whatever the umask.

Under umask 000 an outsider saw the directory made 0777: the secret file was 0600, but any
user could replace the files in the directory (a public key an operator then trusts).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from lifecycle_helpers import cli_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

KEYGEN_UNDER_UMASK_0 = """
import os, sys
os.umask(0)
from mplog.cli import main
sys.exit(main(["keygen", *sys.argv[1:]]))
"""


def _keygen(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", KEYGEN_UNDER_UMASK_0, *argv],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=30,
        check=False,
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_keygen_makes_its_directory_0700_under_umask_000(tmp_path):
    keys = tmp_path / "a" / "b" / "keys"
    done = _keygen(str(keys), "srv")
    assert done.returncode == 0, done.stderr
    assert _mode(keys) == 0o700
    assert _mode(tmp_path / "a") == 0o700 and _mode(tmp_path / "a" / "b") == 0o700  # the parents it made too
    assert _mode(keys / "srv.key_secret") == 0o600 and _mode(keys / "srv.key") == 0o644


def test_keygen_refuses_an_existing_directory_others_can_write_to(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    os.chmod(keys, 0o777)
    done = _keygen(str(keys), "srv")
    assert done.returncode == 2
    assert f"key directory {str(keys)!r} is writable by other users (mode 777)" in done.stderr
    assert list(keys.iterdir()) == []
