"""CURVE keys and the listener's gatekeeper: key files, allow-lists, refused-connection counts.

Key files are small text files (valid TOML) holding Z85 keys::

    NAME.key          public-key = "..."                       (share it)
    NAME.key_secret   public-key = "..." / secret-key = "..."  (mode 0600, never shared)

A listener with CURVE runs one :class:`Gatekeeper` thread per receiving socket: it
answers ZAP requests (is this client key allowed?) and reads the socket's monitor to
count handshakes, refusals and disconnections. Secret keys are never logged, put in a
``repr`` or in stats.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import zmq
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from mplog.exceptions import ConfigError
from mplog.transports.base import check_private_dir

__all__ = [
    "ENV_CLIENT_KEY",
    "ENV_CLIENT_SECRET_KEY",
    "ENV_SERVER_KEY",
    "ClientKeys",
    "Gatekeeper",
    "KeyPair",
    "ServerKeys",
    "client_keys",
    "configure_client",
    "configure_server",
    "generate_key_pair",
    "read_authorized_keys",
    "read_key_pair",
    "read_public_key",
    "server_keys",
]

_POLL_MS = 20  # how soon close() is noticed: mplog listen's SIGTERM waited for it (up to 0.1 s)

ENV_SERVER_KEY = "MPLOG_SERVER_KEY"  # the collector's public key: a .key file or the Z85 text
ENV_CLIENT_SECRET_KEY = "MPLOG_CLIENT_SECRET_KEY"  # this worker's .key_secret file
ENV_CLIENT_KEY = "MPLOG_CLIENT_KEY"  # optional: this worker's .key file (must match the secret)

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = "mplog"
_Z85_RE = re.compile(r"^[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")
_LINE_RE = re.compile(r'^\s*(public-key|secret-key)\s*=\s*"([^"]*)"\s*$')
_REFUSALS = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "refused_auth",  # CURVE ok, key not allowed
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "refused_protocol",  # wrong mechanism, wrong server key, bad ZMTP
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "refused_other",  # garbage instead of a greeting, timeouts
}
REFUSAL_COUNTERS = tuple(_REFUSALS.values())


class KeyPair(NamedTuple):
    """A CURVE key pair as Z85 text; its repr never shows the secret."""

    public: str
    secret: str

    def __repr__(self) -> str:
        return f"KeyPair(public={self.public!r}, secret=<hidden>)"


@dataclass(frozen=True)
class ServerKeys:
    """What a CURVE server socket needs: its key pair and who may connect (None: anyone with the server key)."""

    pair: KeyPair = field(repr=False)
    authorized: frozenset[str] | None


@dataclass(frozen=True)
class ClientKeys:
    """What a CURVE client socket needs: the server's public key and its own key pair."""

    server_public: str
    pair: KeyPair = field(repr=False)


# ---------------------------------------------------------------- key files


def _check_z85(text: str, what: str) -> str:
    if not _Z85_RE.match(text):
        raise ConfigError(f"{what} is not a 40-character Z85 CURVE key; create keys with `mplog keygen DIR`")
    return text


def _parse(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read key file {str(path)!r}: {exc}") from None
    found: dict[str, str] = {}
    for line in text.splitlines():
        match = _LINE_RE.match(line)
        if match:
            found[match[1]] = _check_z85(match[2], f"{match[1]} in {str(path)!r}")
    return found


def generate_key_pair(directory: str | os.PathLike[str], name: str, *, force: bool = False) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public, 0644) and ``NAME.key_secret`` (secret, 0600) under ``directory``.

    Returns:
        The paths of the public and the secret file.

    Raises:
        ConfigError: a bad name, or the files exist and ``force`` is false.
    """
    if not re.match(r"^[A-Za-z0-9_.-]+$", name) or name.startswith("."):
        raise ConfigError(f"key name {name!r} must be letters, digits, '_', '-' or '.', not starting with '.'")
    folder = Path(directory)
    _make_key_dir(folder)
    public_path, secret_path = folder / f"{name}{PUBLIC_SUFFIX}", folder / f"{name}{SECRET_SUFFIX}"
    if not force and (public_path.exists() or secret_path.exists()):
        raise ConfigError(f"{str(secret_path)!r} already exists; choose another name or pass --force")
    public, secret = (key.decode("ascii") for key in zmq.curve_keypair())
    header = f"# mplog CURVE key pair {name!r}, made by `mplog keygen`\n"
    _write(
        secret_path,
        f'{header}# SECRET: keep it private (mode 0600)\npublic-key = "{public}"\nsecret-key = "{secret}"\n',
        0o600,
    )
    _write(public_path, f'{header}public-key = "{public}"\n', 0o644)
    return public_path, secret_path


def _make_key_dir(folder: Path) -> None:
    """Create ``folder`` (and missing parents) mode 0700 whatever the umask, or check an existing one.

    Under umask 000 it used to be made 0777: the secret file was 0600, but any user could
    replace the files in the directory (test_keygen_makes_its_directory_0700_under_umask_000).

    Raises:
        ConfigError: it cannot be created, or an existing one belongs to another user or
            others can write to it.
    """
    if not os.path.lexists(folder):
        old_umask = os.umask(0o077)
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create key directory {str(folder)!r}: {exc}") from exc
        finally:
            os.umask(old_umask)
        os.chmod(folder, 0o700)
    check_private_dir(str(folder), "key directory", "another key directory")


def _write(path: Path, text: str, mode: int) -> None:
    # Created with its final mode (never world-readable for a moment, whatever the umask).
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode & 0o600)
    try:
        os.write(fd, text.encode("ascii"))
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_public_key(spec: str | os.PathLike[str]) -> str:
    """Return a Z85 public key from a ``.key``/``.key_secret`` file, or ``spec`` itself if it is Z85 text."""
    path = Path(spec)
    if path.is_file():
        found = _parse(path)
        if "public-key" not in found:
            raise ConfigError(f"key file {str(path)!r} holds no public-key line; create keys with `mplog keygen DIR`")
        return found["public-key"]
    text = os.fspath(spec)
    if _Z85_RE.match(text):
        return text
    raise ConfigError(f"no such key file {text!r} (and it is not a Z85 key); create keys with `mplog keygen DIR`")


def read_key_pair(path: str | os.PathLike[str]) -> KeyPair:
    """Load a ``.key_secret`` file; it must be private to its owner (no group or other access).

    Raises:
        ConfigError: the file is missing, readable by others, or holds no valid key pair.
    """
    file = Path(path)
    try:
        mode = stat.S_IMODE(file.stat().st_mode)
    except OSError as exc:
        raise ConfigError(f"cannot read secret key file {str(file)!r}: {exc.strerror}") from None
    found = _parse(file) if mode & 0o077 else None  # a public key file given by mistake: say that first
    if found is not None and "secret-key" not in found:
        raise ConfigError(
            f"{str(file)!r} holds no secret-key line (a public NAME.key file?); pass the NAME.key_secret file "
            "of the pair from `mplog keygen`"
        )
    if mode & 0o077:
        raise ConfigError(
            f"secret key file {str(file)!r} is accessible by other users (mode {mode:04o}); run: chmod 600 {file}"
        )
    found = _parse(file)
    if "secret-key" not in found:
        raise ConfigError(f"{str(file)!r} holds no secret-key line; pass a NAME.key_secret file from `mplog keygen`")
    secret = found["secret-key"]
    public = zmq.curve_public(secret.encode("ascii")).decode("ascii")
    if found.get("public-key", public) != public:
        raise ConfigError(f"the public-key in {str(file)!r} does not belong to its secret-key")
    return KeyPair(public, secret)


def read_authorized_keys(directory: str | os.PathLike[str]) -> frozenset[str]:
    """Load every ``*.key`` file in ``directory``: the client keys allowed to connect.

    Raises:
        ConfigError: the directory is missing or holds no key (CURVE fails closed).
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise ConfigError(f"authorized_keys {str(folder)!r} is not a directory of client NAME.key files")
    # Whoever can write the directory or a key file in it decides who may connect, as sshd's
    # StrictModes holds for authorized_keys (test_authorized_keys_another_user_can_change_is_refused).
    check_private_dir(
        str(folder),
        "authorized_keys directory",
        fix="give it to this user or to root (chown) or choose another authorized_keys directory",
    )
    files = [p for p in sorted(folder.glob(f"*{PUBLIC_SUFFIX}")) if p.is_file()]
    for path in files:
        _check_key_file_owner(path)
    keys = frozenset(_parse(p)["public-key"] for p in files)
    if not keys:
        raise ConfigError(
            f"authorized_keys {str(folder)!r} holds no NAME.key file, so no client could connect; copy the workers' "
            "public keys there, or set allow_any = true to admit any client that knows the server key"
        )
    return keys


def _check_key_file_owner(path: Path) -> None:
    """Refuse an authorized key another user could replace.

    The file, and a link to it, must be this user's or root's and writable by no one else.
    """
    euid = os.geteuid()
    for entry in (os.lstat(path), os.stat(path)):
        if entry.st_uid not in (euid, 0):
            raise ConfigError(
                f"authorized key {str(path)!r} belongs to another user (uid {entry.st_uid}), who could replace it "
                f"with their own key; run: chown {euid} {path}  (or remove it)"
            )
        if stat.S_ISREG(entry.st_mode) and entry.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise ConfigError(
                f"authorized key {str(path)!r} is writable by other users (mode {stat.S_IMODE(entry.st_mode):04o}); "
                f"run: chmod 644 {path}"
            )


def server_keys(curve: dict[str, Any], where: str = "mplog.curve") -> ServerKeys:
    """Turn a ``curve`` table (server_secret_key, authorized_keys | allow_any) into :class:`ServerKeys`.

    Raises:
        ConfigError: naming the missing or bad key: an empty or partial table, or CURVE
            without an explicit client policy, fails closed (never plaintext).
    """
    known = {"server_secret_key", "authorized_keys", "allow_any"}
    unknown = set(curve) - known
    if unknown:
        raise ConfigError(f"unknown key {where}.{sorted(unknown)[0]}; known keys: {', '.join(sorted(known))}")
    secret_file = curve.get("server_secret_key")
    if not isinstance(secret_file, str) or not secret_file:
        raise ConfigError(f"{where}.server_secret_key must be the path of a NAME.key_secret file (`mplog keygen DIR`)")
    allow_any = curve.get("allow_any", False)
    if not isinstance(allow_any, bool):
        raise ConfigError(f"{where}.allow_any must be true or false, got {allow_any!r}")
    directory = curve.get("authorized_keys")
    if allow_any and directory:
        raise ConfigError(f"{where}: set either authorized_keys or allow_any = true, not both")
    if not allow_any and not directory:
        raise ConfigError(
            f"{where} needs authorized_keys (a directory of client NAME.key files) or, to admit any client that "
            "knows the server key, allow_any = true"
        )
    try:
        pair = read_key_pair(secret_file)
    except ConfigError as exc:  # the file's problem, and which setting named it
        raise ConfigError(f"{where}.server_secret_key: {exc}") from None
    return ServerKeys(pair, None if allow_any else read_authorized_keys(str(directory)))


def client_keys(
    server_key: str = "", secret_key: str = "", public_key: str = "", *, use_env: bool = True
) -> ClientKeys | None:
    """Resolve a worker's CURVE keys from options, else from ``$MPLOG_SERVER_KEY`` and friends.

    Each argument is a key file path or Z85 text. Without a client key pair a fresh
    one is made for this process (enough for a collector with ``allow_any``).
    Returns None when no server key is known (plaintext).
    """
    env = os.environ if use_env else {}
    server = server_key or env.get(ENV_SERVER_KEY, "")
    if not server:
        if secret_key:
            raise ConfigError("curve_secret_key was given without curve_server_key (the collector's public key)")
        return None
    secret_spec = secret_key or env.get(ENV_CLIENT_SECRET_KEY, "")
    if secret_spec and Path(secret_spec).is_file():
        pair = read_key_pair(secret_spec)
    elif secret_spec:
        text = _check_z85(secret_spec, "curve_secret_key")
        pair = KeyPair(zmq.curve_public(text.encode("ascii")).decode("ascii"), text)
    else:
        public, secret = (key.decode("ascii") for key in zmq.curve_keypair())
        pair = KeyPair(public, secret)
    public_spec = public_key or (env.get(ENV_CLIENT_KEY, "") if secret_spec else "")
    if public_spec and read_public_key(public_spec) != pair.public:
        given = _named(public_spec, "curve_public_key" if public_key else ENV_CLIENT_KEY)
        secret_from = _named(secret_spec, "curve_secret_key" if secret_key else ENV_CLIENT_SECRET_KEY)
        raise ConfigError(
            f"the client public key ({given}) does not belong to the client secret key ({secret_from}); "
            "give the NAME.key of the same pair, or leave it out"
        )
    server_public = read_public_key(server)
    if server_public == pair.public:  # e.g. this worker's own .key_secret given as the server key
        given = _named(server, "curve_server_key" if server_key else ENV_SERVER_KEY)
        raise ConfigError(
            f"the server key ({given}) is this client's own public key; give the collector's public NAME.key"
        )
    return ClientKeys(server_public, pair)


def _named(spec: str, source: str) -> str:
    """Where a key came from, in words: its option or variable, and its file (never a key's text)."""
    return f"{source}, file {spec}" if Path(spec).is_file() else f"{source}, given as text"


# ---------------------------------------------------------------- the gatekeeper thread


class Gatekeeper:
    """Answers ZAP requests for one context and counts a socket's connection events.

    ``counts`` holds ``handshakes`` (succeeded), ``refused_auth``, ``refused_protocol``,
    ``refused_other`` and ``disconnected``; read it from any thread.
    """

    def __init__(self, ctx: zmq.Context[Any], sock: zmq.Socket[Any], keys: ServerKeys | None) -> None:
        self.counts: Counter[str] = Counter()
        authorized = keys.authorized if keys is not None else None
        self._authorized = None if authorized is None else frozenset(k.encode("ascii") for k in authorized)
        self._stop = threading.Event()
        self._zap: zmq.Socket[Any] | None = None
        if keys is not None:  # bound before the socket is, so no handshake finds it missing
            self._zap = ctx.socket(zmq.REP)
            self._zap.setsockopt(zmq.LINGER, 0)
            self._zap.bind(ZAP_ENDPOINT)
        events = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
        for event in _REFUSALS:
            events |= event
        self._sock = sock
        self._monitor = sock.get_monitor_socket(events)
        self._thread = threading.Thread(target=self._run, name="mplog-gatekeeper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._monitor, zmq.POLLIN)
        if self._zap is not None:
            poller.register(self._zap, zmq.POLLIN)
        while not self._stop.is_set():
            self._serve(poller)

    def _serve(self, poller: zmq.Poller) -> None:
        try:
            for sock, _ in poller.poll(_POLL_MS):
                if sock is self._zap:
                    self._answer(self._zap.recv_multipart())
                else:
                    self._note(self._monitor.recv_multipart())
        except zmq.ZMQError:
            if not self._stop.is_set():
                self.counts["gatekeeper_errors"] += 1

    def _note(self, message: list[bytes]) -> None:
        event = parse_monitor_message(message)["event"]
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.counts["handshakes"] += 1
        elif event == zmq.EVENT_DISCONNECTED:
            self.counts["disconnected"] += 1
        else:
            self.counts[_REFUSALS.get(zmq.Event(event), "refused_other")] += 1

    def _answer(self, request: list[bytes]) -> None:
        assert self._zap is not None
        if len(request) < 6:  # not a ZAP request; REP still owes an answer
            self._zap.send_multipart([b"1.0", b"", b"500", b"bad request", b"", b""])
            return
        version, request_id, _domain, _address, _identity, mechanism, *credentials = request
        allowed = mechanism == b"CURVE" and bool(credentials) and len(credentials[0]) == 32
        user = b""
        if allowed:
            user = z85.encode(credentials[0])
            allowed = self._authorized is None or user in self._authorized
        if allowed:
            self._zap.send_multipart([version, request_id, b"200", b"OK", user, b""])
        else:
            self._zap.send_multipart([version, request_id, b"400", b"key not authorized", b"", b""])

    def close(self) -> None:
        """Stop the thread and release its sockets (before the context is terminated); idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        with contextlib.suppress(zmq.ZMQError):
            self._sock.disable_monitor()
        self._thread.join(5.0)
        self._monitor.close(linger=0)
        if self._zap is not None:
            self._zap.close(linger=0)


def configure_server(sock: zmq.Socket[Any], keys: ServerKeys) -> None:
    """Make ``sock`` a CURVE server whose clients are checked over ZAP (fail closed if no handler)."""
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.pair.secret.encode("ascii"))
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.pair.public.encode("ascii"))
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode("ascii"))
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)


def configure_client(sock: zmq.Socket[Any], keys: ClientKeys) -> None:
    """Make ``sock`` a CURVE client of the server whose public key is ``keys.server_public``."""
    sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server_public.encode("ascii"))
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.pair.public.encode("ascii"))
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.pair.secret.encode("ascii"))
