"""A private rsyslogd per test (UDP, TCP, RELP, TLS on free loopback ports) and the certificates TLS needs.

Every record the daemon parses is written as one JSON line with the fields rsyslog
parsed out of it (``%hostname%``, ``%app-name%``, ``%procid%``, ``%msgid%``,
``%structured-data%``, ``%msg%`` ...), so a test compares fields, not text. The ruleset
that writes them has a direct queue: rsyslog writes a record before its input
acknowledges it (RELP), so a SIGKILL loses nothing it acknowledged.

Importable from spawn/forkserver children (tests/ is on sys.path).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers import PAYLOAD_RE, payload, wait_for

RSYSLOGD = shutil.which("rsyslogd") or ("/usr/sbin/rsyslogd" if os.path.exists("/usr/sbin/rsyslogd") else None)
MODULES = Path("/usr/lib/x86_64-linux-gnu/rsyslog")
CLIENT_NAME = "client.mplog.test"

FIELDS = ["pri", "timestamp", "hostname", "app-name", "procid", "msgid", "structured-data", "msg"]
_OPTIONS = {"timestamp": "date-rfc3339"}  # the others: json escaping
TEMPLATE = (
    'template(name="mplogjson" type="string" string="{'
    + ",".join(f'\\"{name}\\":\\"%{name}:::{_OPTIONS.get(name, "json")}%\\"' for name in FIELDS)
    + '}\\n")'
)


def have_module(name: str) -> bool:
    """Whether rsyslog's module ``name`` (imrelp, lmnsd_gtls) is installed."""
    if (MODULES / f"{name}.so").exists():
        return True
    return any(Path(p).joinpath(f"{name}.so").exists() for p in ("/usr/lib/rsyslog", "/usr/lib64/rsyslog"))


def free_port() -> int:
    """A port free for TCP and UDP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


# ---------------------------------------------------------------- certificates


@dataclass
class Certs:
    """A CA, a server certificate for localhost/127.0.0.1, a client certificate, and a CA nobody trusts."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    stranger_ca: str  # signs nothing used here: trusting only it must fail


def make_certs(directory: Path) -> Certs:
    """Generate the test PKI with the ``cryptography`` library (EC P-256, valid for a day); keys 0600."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def ca(common: str) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(name(common))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return key, cert

    def leaf(ca_key: Any, ca_cert: Any, common: str, sans: list[Any], usage: Any) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return key, cert

    def write(filename: str, data: bytes, private: bool = False) -> str:
        path = directory / filename
        path.write_bytes(data)
        if private:
            path.chmod(0o600)
        return str(path)

    def pem_cert(cert: Any) -> bytes:
        return bytes(cert.public_bytes(serialization.Encoding.PEM))

    def pem_key(key: Any) -> bytes:
        return bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )

    ca_key, ca_cert = ca("mplog test CA")
    server_key, server_cert = leaf(
        ca_key,
        ca_cert,
        "localhost",
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        ExtendedKeyUsageOID.SERVER_AUTH,
    )
    client_key, client_cert = leaf(
        ca_key, ca_cert, CLIENT_NAME, [x509.DNSName(CLIENT_NAME)], ExtendedKeyUsageOID.CLIENT_AUTH
    )
    _, stranger = ca("a CA nobody trusts")
    return Certs(
        ca=write("ca.pem", pem_cert(ca_cert)),
        server_cert=write("server.pem", pem_cert(server_cert)),
        server_key=write("server.key", pem_key(server_key), private=True),
        client_cert=write("client.pem", pem_cert(client_cert)),
        client_key=write("client.key", pem_key(client_key), private=True),
        stranger_ca=write("stranger-ca.pem", pem_cert(stranger)),
    )


# ---------------------------------------------------------------- the daemon


def rsyslog_config(
    directory: Path,
    out: Path,
    *,
    udp: int | None = None,
    tcp: int | None = None,
    relp: int | None = None,
    certs: Certs | None = None,
    client_certs: bool = True,
) -> str:
    """An rsyslog config: the inputs asked for, all bound to one ruleset that writes JSON lines to ``out``.

    With ``certs``, the TCP input is TLS (gtls) and the RELP input too; ``client_certs``
    makes both require a client certificate named :data:`CLIENT_NAME` signed by the CA.
    """
    glob = f'global(workDirectory="{directory}" maxMessageSize="64k" parser.escapeControlCharactersOnReceive="off"'
    if certs is not None and tcp is not None:
        glob += (
            f' defaultNetstreamDriver="gtls" defaultNetstreamDriverCAFile="{certs.ca}"'
            f' defaultNetstreamDriverCertFile="{certs.server_cert}" defaultNetstreamDriverKeyFile="{certs.server_key}"'
        )
    lines = [glob + ")"]
    if udp is not None:
        lines.append('module(load="imudp")')
        lines.append(f'input(type="imudp" address="127.0.0.1" port="{udp}" ruleset="out" rcvbufSize="8m")')
    if tcp is not None:
        if certs is None:
            lines.append('module(load="imtcp")')  # stock framing: octet counting or LF, no AddtlFrameDelimiter
        else:
            auth = (
                f'streamDriver.authMode="x509/name" permittedPeer=["{CLIENT_NAME}"]'
                if client_certs
                else 'streamDriver.authMode="anon"'
            )
            lines.append(f'module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" {auth})')
        lines.append(f'input(type="imtcp" address="127.0.0.1" port="{tcp}" ruleset="out")')
    if relp is not None:
        lines.append('module(load="imrelp")')
        spec = f'input(type="imrelp" address="127.0.0.1" port="{relp}" ruleset="out"'
        if certs is not None:
            spec += (
                f' tls="on" tls.caCert="{certs.ca}" tls.myCert="{certs.server_cert}" tls.myPrivKey="{certs.server_key}"'
            )
            if client_certs:
                spec += f' tls.authMode="name" tls.permittedPeer=["{CLIENT_NAME}"]'
        lines.append(spec + ")")
    lines.append(TEMPLATE)
    # A direct queue: a record is written before its input acknowledges it (RELP), so a
    # SIGKILL of rsyslogd loses nothing it acknowledged.
    lines.append(
        f'ruleset(name="out" queue.type="Direct") {{ action(type="omfile" file="{out}" template="mplogjson") }}'
    )
    return "\n".join(lines) + "\n"


class RsyslogDaemon:
    """rsyslogd on a given config (``-n -f CONF -i PIDFILE``), restartable with SIGTERM or SIGKILL."""

    def __init__(
        self, directory: Path, config: str, out: Path, ports: list[int], udp_ports: tuple[int, ...] = ()
    ) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.ports = ports
        self.udp_ports = udp_ports
        self.conf = directory / "rsyslog.conf"
        self.conf.write_text(config, encoding="utf-8")
        self.pidfile = directory / "rsyslogd.pid"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> RsyslogDaemon:
        assert RSYSLOGD is not None
        self.pidfile.unlink(missing_ok=True)
        with open(self.dir / "rsyslogd.stderr", "ab") as errors:
            self.proc = subprocess.Popen(
                [RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.pidfile)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
            )
        self.starts += 1
        for port in self.ports:
            wait_for(lambda port=port: self._listening(port), 15)
        for port in self.udp_ports:
            wait_for(lambda port=port: self._listening(port, socket.SOCK_DGRAM), 15)
        return self

    def _listening(self, port: int, kind: int = socket.SOCK_STREAM) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"rsyslogd exited with {self.proc.returncode}: {self.stderr()[-2000:]}")
        with socket.socket(socket.AF_INET, kind) as probe:
            # Bound, not connected to: a connection would be a session error in rsyslog's own log.
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return True
        return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the daemon with ``sig`` (SIGTERM: orderly; SIGKILL: at once) and wait for it."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()

    def stderr(self) -> str:
        try:
            return (self.dir / "rsyslogd.stderr").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def records(self) -> list[dict[str, str]]:
        """Every JSON line rsyslog wrote (a torn last line, still being written, is left out)."""
        try:
            text = self.out.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        found = []
        for line in text.split("\n"):
            if not line:
                continue
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
        return found

    def wait_records(self, count: int, timeout: float = 30.0) -> list[dict[str, str]]:
        """Wait until at least ``count`` records were written; return them all."""
        wait_for(lambda: len(self.records()) >= count, timeout)
        return self.records()


def start_daemon(directory: Path, **inputs: Any) -> RsyslogDaemon:
    """Start an rsyslogd with the inputs named in ``inputs`` (udp/tcp/relp=True, certs=..., client_certs=...)."""
    ports = {kind: free_port() for kind in ("udp", "tcp", "relp") if inputs.pop(kind, False)}
    out = directory / "out.jsonl"
    config = rsyslog_config(directory, out, **ports, **inputs)
    udp = (ports["udp"],) if "udp" in ports else ()
    daemon = RsyslogDaemon(directory, config, out, [p for k, p in ports.items() if k != "udp"], udp)
    daemon.udp_port = ports.get("udp")  # type: ignore[attr-defined]
    daemon.tcp_port = ports.get("tcp")  # type: ignore[attr-defined]
    daemon.relp_port = ports.get("relp")  # type: ignore[attr-defined]
    return daemon.start()


def message_text(record: dict[str, str]) -> str:
    """%msg% without the BOM RFC 5424 puts before UTF-8 text."""
    msg = record["msg"]
    return msg[1:] if msg.startswith("\ufeff") else msg


# ---------------------------------------------------------------- what the workers log, and the check


NOTE = 'a "quoted" ] \\ value'  # every character RFC 5424 makes a value escape


def rich_text(producer: int, seq: int) -> str:
    """Record ``seq`` of ``producer``: a numbered payload; every third one multi-line and not ASCII."""
    text = payload(producer, seq)
    if seq % 3 == 1:
        text += "\nsecond line: ünïcödé ✓ 日本語\n\tthird, indented"
    return text


def rich_worker(endpoint: str, producer: int, count: int, logger: str = "shop.orders") -> None:
    """A worker process: ``count`` records (rich_text) with two extras each."""
    import logging

    import mplog

    mplog.setup_worker(endpoint)
    log = logging.getLogger(logger)
    for seq in range(count):
        log.info("%s", rich_text(producer, seq), extra={"order": seq, "note": NOTE})


SD_RE = re.compile(
    r'^\[mplog@32473 sender="(?P<host>[^/"]+)/(?P<pid>\d+)/(?P<stream>[0-9a-f]{8})" seq="(?P<seq>\d+)"\]'
    r'\[fields@32473 order="(?P<order>\d+)" note="(?P<note>(?:[^"\\]|\\.)*)"\]$'
)
SD_PREFIX_RE = re.compile(
    r'^\[mplog@32473 sender="(?P<host>[^/"]+)/(?P<pid>\d+)/(?P<stream>[0-9a-f]{8})" seq="(?P<seq>\d+)"\]'
)
TIMESTAMP_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)$")


def check_rich_records(
    records: list[dict[str, str]],
    expected: dict[int, int],
    pids: dict[int, int],
    host: str,
    app: str,
    *,
    escaped: bool = False,
) -> None:
    """Every record rsyslog parsed is one the workers logged, once, with every field right.

    ``escaped``: rsyslog escaped control characters on receive (its default: LF is ``#012``).
    """
    seen = Counter()
    escaped_note = NOTE.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")
    for record in records:
        text = message_text(record)
        match = PAYLOAD_RE.match(text)
        assert match, record
        producer, seq = int(match["prod"]), int(match["seq"])
        seen[(producer, seq)] += 1
        logged = rich_text(producer, seq)
        if escaped:
            logged = logged.replace("\n", "#012").replace("\t", "#011")
        assert text == logged, record  # multi-line and non-ASCII text intact
        assert record["msg"].startswith("\ufeff"), record  # RFC 5424: BOM before UTF-8 text
        assert (record["hostname"], record["app-name"], record["procid"], record["msgid"]) == (
            host,
            app,
            str(pids[producer]),
            "shop.orders",
        ), record
        sd = SD_RE.match(record["structured-data"])
        assert sd, record
        assert (sd["host"], sd["pid"], sd["seq"], sd["order"], sd["note"]) == (
            host,
            str(pids[producer]),
            str(seq),  # the record's number in mplog's ledger is the worker's own count
            str(seq),
            escaped_note,
        ), record
        assert TIMESTAMP_RE.match(record["timestamp"]), record
    assert sum(seen.values()) == sum(expected.values()), f"{sum(seen.values())} records for {expected}"
    assert {key for key, n in seen.items() if n > 1} == set()
    assert set(seen) == {(p, s) for p, n in expected.items() for s in range(n)}
