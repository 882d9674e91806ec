"""A directory that belongs to another user never holds this user's sockets, spool or state.

An outsider made ``/tmp/mplog-0`` (mode 0755, their own) before root's ``mplog listen``
started: the listener bound its socket there, the outsider (the directory's owner) moved it
away and bound their own, and root's workers sent their records to them. The owner of a
directory can always rename what is in it, whatever its mode, so the owner is checked as
well as the mode (docs/security.md). These tests chown a directory to ``nobody`` and need root.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from lifecycle_helpers import cli_env, listen_argv, short_dir

import mplog
from mplog.delivery.spool_files import prepare_dir
from mplog.exceptions import ConfigError
from mplog.listener.supervisor import ensure_state_dir

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(60),
    pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown to another uid needs root"),
]

OTHER_UID = 65534  # nobody
EXIT_CONFIG = 2
SCHEMES = ["ipc", "mp"]


@pytest.fixture
def sockets() -> Iterator[Path]:
    with short_dir() as path:
        yield path


def _foreign(path: Path, mode: int = 0o755) -> Path:
    """``path`` made a directory that belongs to OTHER_UID, with ``mode`` (0755: only its owner writes)."""
    path.mkdir(exist_ok=True)
    os.chmod(path, mode)
    os.chown(path, OTHER_UID, OTHER_UID)
    return path


def _says_foreign(text: str, directory: Path) -> None:
    assert repr(str(directory)) in text, text
    assert f"uid {OTHER_UID}" in text and "another user" in text, text
    assert "remove it" in text, text


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_listener_refuses_an_endpoint_directory_owned_by_another_user(sockets, scheme):
    squatted = _foreign(sockets / "squat")
    with pytest.raises(ConfigError) as refused:
        mplog.start_listener(None, endpoint=f"{scheme}://{squatted}/l.sock", route_parent=False, export_env=False)
    _says_foreign(str(refused.value), squatted)
    assert "choose another endpoint" in str(refused.value)
    assert os.listdir(squatted) == []  # no socket, no lock file left for the owner to move


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_worker_refuses_an_endpoint_in_a_directory_owned_by_another_user(sockets, scheme):
    squatted = _foreign(sockets / "squat")
    with pytest.raises(ConfigError) as refused:
        mplog.setup_worker(f"{scheme}://{squatted}/collector.sock")
    _says_foreign(str(refused.value), squatted)


def test_a_symbolic_link_owned_by_another_user_is_refused_even_to_a_private_directory(sockets):
    private = sockets / "mine"
    private.mkdir(mode=0o700)
    link = sockets / "link"
    link.symlink_to(private)
    os.lchown(link, OTHER_UID, OTHER_UID)
    with pytest.raises(ConfigError) as refused:
        mplog.start_listener(None, endpoint=f"ipc://{link}/l.sock", route_parent=False, export_env=False)
    assert "symbolic link" in str(refused.value)
    _says_foreign(str(refused.value), link)


def test_mplog_listen_and_setup_worker_refuse_a_squatted_default_directory(tmp_path, sockets):
    # The default endpoint is $TMPDIR/mplog-UID/collector.sock: squat it as the outsider did.
    squatted = _foreign(sockets / f"mplog-{os.getuid()}")
    config = tmp_path / "collector.json"
    config.write_text('{"version": 1}')
    env = cli_env(TMPDIR=str(sockets))
    listen = subprocess.run(
        [sys.executable, "-m", "mplog", "listen", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert listen.returncode == EXIT_CONFIG, listen.stderr
    assert listen.stderr.count("\n") == 1, listen.stderr
    _says_foreign(listen.stderr, squatted)
    worker = subprocess.run(
        [sys.executable, "-c", "import mplog; mplog.setup_worker()"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert worker.returncode == 1
    assert "no local collector" in worker.stderr
    _says_foreign(worker.stderr, squatted)
    assert os.listdir(squatted) == []


def test_mplog_listen_refuses_a_state_dir_owned_by_another_user(tmp_path, sockets):
    state = _foreign(tmp_path / "state", 0o700)
    config = tmp_path / "collector.json"
    config.write_text(json.dumps({"version": 1, "mplog": {"state_dir": str(state)}}))
    listen = _listen(listen_argv(config, f"ipc://{sockets}/c.sock"))
    assert listen.returncode == EXIT_CONFIG, listen.stderr
    assert "mplog.state_dir" in listen.stderr and "choose another mplog.state_dir" in listen.stderr
    _says_foreign(listen.stderr, state)


def test_a_state_dir_others_can_write_to_is_refused(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, 0o777)
    with pytest.raises(ConfigError, match=r"mplog.state_dir .* is writable by other users \(mode 777\)"):
        ensure_state_dir(str(state))


def test_a_spool_dir_owned_by_another_user_is_refused(tmp_path):
    spool = _foreign(tmp_path / "spool", 0o700)
    with pytest.raises(PermissionError) as refused:
        prepare_dir(str(spool))
    assert "spool_dir" in str(refused.value) and "choose another spool_dir" in str(refused.value)
    _says_foreign(str(refused.value), spool)


def test_a_directory_of_this_user_or_of_root_is_still_taken(sockets):
    from mplog.transports.base import check_private_dir  # new with the check

    check_private_dir(tempfile.gettempdir())  # root's, others write to it, but its sticky bit guards their files
    with mplog.start_listener(
        None, endpoint=f"ipc://{sockets}/l.sock", route_parent=False, export_env=False
    ) as listener:
        assert listener.running


def _authorized(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A server key pair and an authorized_keys directory (this user's, 0700) holding one worker's key."""
    from mplog.transports import curve

    _, server_secret = curve.generate_key_pair(tmp_path / "server", "collector")
    worker_public, _ = curve.generate_key_pair(tmp_path / "authorized", "worker")
    (tmp_path / "authorized" / "worker.key_secret").unlink()  # only public keys belong there
    return server_secret, tmp_path / "authorized", worker_public


def test_authorized_keys_another_user_can_change_is_refused(tmp_path):
    # Whoever can write the directory, or a key file in it, decides who may connect.
    from mplog.transports.curve import server_keys

    server_secret, authorized, worker_key = _authorized(tmp_path)
    curve = {"server_secret_key": str(server_secret), "authorized_keys": str(authorized)}
    assert len(server_keys(curve).authorized or ()) == 1  # this user's own: taken

    os.chown(worker_key, OTHER_UID, OTHER_UID)
    foreign = rf"authorized key '{worker_key}' belongs to another user \(uid {OTHER_UID}\)"
    with pytest.raises(ConfigError, match=foreign):
        server_keys(curve)
    os.chown(worker_key, os.geteuid(), os.getegid())

    os.chmod(worker_key, 0o666)
    with pytest.raises(ConfigError, match=r"is writable by other users \(mode 0666\); run: chmod 644"):
        server_keys(curve)
    os.chmod(worker_key, 0o644)

    elsewhere = _foreign(tmp_path / "elsewhere")
    (elsewhere / "evil.key").write_text((worker_key).read_text())
    os.chown(elsewhere / "evil.key", OTHER_UID, OTHER_UID)
    (authorized / "evil.key").symlink_to(elsewhere / "evil.key")  # a link to a key another user owns
    with pytest.raises(ConfigError, match=r"belongs to another user"):
        server_keys(curve)
    (authorized / "evil.key").unlink()

    os.chown(authorized, OTHER_UID, OTHER_UID)
    with pytest.raises(ConfigError) as refused:
        server_keys(curve)
    _says_foreign_keys(str(refused.value), authorized)


def test_mplog_listen_refuses_authorized_keys_owned_by_another_user(tmp_path):
    server_secret, authorized, _ = _authorized(tmp_path)
    os.chown(authorized, OTHER_UID, OTHER_UID)
    keys = ["--curve-secret-key", str(server_secret), "--authorized-keys", str(authorized)]
    listen = _listen([sys.executable, "-m", "mplog", "listen", "--bind", "tcp://127.0.0.1:0", *keys])
    assert listen.returncode == EXIT_CONFIG, listen.stderr
    _says_foreign_keys(listen.stderr, authorized)


def _says_foreign_keys(text: str, directory: Path) -> None:
    """The refusal of an authorized_keys directory: its owner, and a fix that is not "remove it"."""
    assert f"authorized_keys directory {str(directory)!r}" in text and f"uid {OTHER_UID}" in text, text
    assert "give it to this user or to root (chown)" in text and "rm -r" not in text, text


def _listen(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``mplog listen`` as given, expected to refuse its config at once."""
    return subprocess.run(argv, capture_output=True, text=True, env=cli_env(), timeout=30, check=False)
