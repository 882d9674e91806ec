"""The ``mplog`` command: ``listen``, ``check``, ``status``, ``demo`` (see ``mplog --help``).

Exit codes: 0 success, 1 failure at run time (e.g. ``status`` got no answer),
2 bad usage or configuration, 3 the endpoint could not be bound.

Environment (for containers; a flag wins over its variable): ``MPLOG_CONFIG`` the
config file of ``listen`` and ``check``, ``MPLOG_BIND`` the endpoint ``listen`` binds
and ``status`` asks, ``MPLOG_CONTROL`` an explicit status-channel endpoint.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import logging.config
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

from mplog.exceptions import ConfigError, TransportError
from mplog.transports.base import default_collector_endpoint

__all__ = ["main"]

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_BIND = 0, 1, 2, 3
ENV_CONFIG, ENV_BIND, ENV_CONTROL = "MPLOG_CONFIG", "MPLOG_BIND", "MPLOG_CONTROL"


def _warn_truncating() -> None:
    """Without a state directory a restart is a first start: name the files a restart would truncate (mode 'w')."""
    handlers = getattr(logging, "_handlers", {}).values()  # every handler dictConfig built, by name
    paths = sorted({h.baseFilename for h in handlers if isinstance(h, logging.FileHandler) and "w" in h.mode})
    if paths:
        print(
            f"mplog: no mplog.state_dir: a restart of this collector truncates {', '.join(paths)} again "
            "(mode 'w') and starts its stats from zero; set mplog.state_dir to continue both (docs/reliability.md)",
            file=sys.stderr,
            flush=True,
        )


def _cmd_listen(args: argparse.Namespace) -> int:
    from mplog.config import load_config
    from mplog.listener import sd_notify
    from mplog.listener.process import build_listener, build_receiver, prepare_process
    from mplog.listener.status_channel import handler_errors_text
    from mplog.listener.supervisor import ensure_state_dir

    config, runtime = load_config(_config_path(args))
    endpoint = args.bind or os.environ.get(ENV_BIND) or runtime.endpoint or default_collector_endpoint()
    settings = runtime.as_dict()
    _apply_key_flags(args, settings)
    settings["control"] = args.control or os.environ.get(ENV_CONTROL) or settings.get("control")
    if args.metrics:
        settings["metrics"] = args.metrics
    state_dir = settings.get("state_dir")
    if state_dir:  # created 0700 if missing; one that cannot be used is a ConfigError (exit 2), not a silent loss
        ensure_state_dir(state_dir)
    # Niceness first (before any thread starts); a restarted collector never truncates; a
    # handler that cannot be built: ConfigError, exit 2, one line. Then, the same listener
    # that mplog.Listener starts (mplog.listener.process): with mplog.state_dir a restarted
    # collector continues its stats and, in ack mode, the acknowledged marks.
    prepare_process(config, settings, state_dir)
    listener = build_listener(build_receiver(endpoint, settings), config, settings, state_dir)
    server = listener.server

    first_at: list[float] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        if server.stop_event.is_set():  # a second signal: a handler holds the stop, so give up now
            if time.monotonic() - first_at[0] < SAME_STOP_REQUEST:
                return  # the same request twice: `timeout` signals its child, then the child's process group
            threading.Thread(target=_give_up, args=(server, "a second signal came"), daemon=True).start()
            return
        first_at.append(time.monotonic())
        sd_notify.notify("STOPPING=1", "STATUS=draining")
        server.stop_event.set()
        # A handler that never returns from emit or close (the stdlib HTTPHandler has no
        # timeout) would hold the stop forever: give up after the drain and a bounded close.
        after = server.drain_timeout + GIVE_UP_AFTER_DRAIN
        timer = threading.Timer(after, _give_up, args=(server, f"it did not finish within {after:g} s"))
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.stats_interval:
        threading.Thread(target=_report_stats, args=(server, args.stats_interval), daemon=True).start()
    print(f"mplog: listening on {listener.endpoint}", file=sys.stderr, flush=True)
    if not state_dir:
        _warn_truncating()
    if listener.metrics is not None:
        print(f"mplog: metrics on {listener.metrics.url}", file=sys.stderr, flush=True)
    sd_notify.notify("READY=1", f"STATUS=listening on {listener.endpoint}", f"MAINPID={os.getpid()}")
    snap = listener.run()
    _report_unclosed(snap)
    print(
        f"mplog: stopped; received {snap['received']} records from {_senders_text(snap)}, "
        f"malformed {snap['malformed_total']}, repaired {snap['repaired_total']}, gaps {snap['gaps']}, "
        f"dropped {snap['dropped']}{_losses_text(snap)}{handler_errors_text(snap)}",
        file=sys.stderr,
        flush=True,
    )
    return EXIT_OK


def _senders_text(snap: dict[str, Any]) -> str:
    """``N senders``, and ``(+M folded)`` past ``mplog.limits.max_senders``, as ``mplog status`` says it."""
    from mplog.listener.stats_view import ListenerStats

    folded = ListenerStats(snap).folded
    return f"{len(snap.get('senders') or {})} senders" + (f" (+{folded} folded)" if folded else "")


def _losses_text(snap: dict[str, Any]) -> str:
    """The rest of a stop line's ledger, each only when non-zero: rejected (unwritten at stop among them),
    refused connections, and what buffering handlers dropped (by handler)."""
    text = ""
    if snap.get("rejected"):
        unwritten = snap.get("unwritten_at_stop") or 0
        text += f", rejected {snap['rejected']}" + (f" ({unwritten} unwritten at stop)" if unwritten else "")
    if snap.get("refused"):
        text += f", refused {snap['refused']} connections"
    from mplog.listener.stats_view import by_handler_text

    return text + by_handler_text("handler drops", snap.get("handler_drops"))


# A second SIGTERM or SIGINT sooner than this after the first is the same request (GNU `timeout`
# sends its signal to its child and then to the child's process group, so a single
# `timeout mplog listen` stop arrived twice and gave up in 1 of 4 runs of an outsider's script);
# a person's second Ctrl-C takes longer.
SAME_STOP_REQUEST = 0.25

# Seconds past the drain that `mplog listen` gives its handlers to close on SIGTERM before it
# exits without them (under systemd's default TimeoutStopSec of 90 s, and deployment.md's 30 s).
GIVE_UP_AFTER_DRAIN = 15.0


def _give_up(server: object, why: str) -> None:
    """Exit now (status 1) with the counts of the moment: a handler holds the listener's stop."""
    from mplog.listener.loop import Server

    assert isinstance(server, Server)
    snap = server.snapshot()
    senders = snap.get("senders") or {}
    open_ = sum(1 for s in senders.values() if not s.get("closed"))
    print(
        f"mplog: gave up stopping ({why}: a handler that blocks in emit or close?); exiting without closing the "
        f"handlers; received {snap['received']} records from {_senders_text(snap)} ({open_} not closed: possible "
        f"loss), gaps {snap['gaps']}, dropped {snap['dropped']}{_losses_text(snap)}; what the listener still held "
        "is lost uncounted",
        file=sys.stderr,
        flush=True,
    )
    os._exit(EXIT_FAILURE)


def _report_unclosed(snap: dict[str, object]) -> None:
    """One line before the stop summary naming the senders that ended without a goodbye (possible loss)."""
    senders = snap.get("senders")
    if not isinstance(senders, dict):
        return
    gone = [s for s in senders.values() if s.get("unclosed") and not s.get("closed")]
    if gone:
        from mplog.listener.stats_view import printable  # a sender's own words: no line breaks, no terminal controls

        names = ", ".join(f"{printable(s['host'])}/{printable(s['pid'])} ({s['unclosed']})" for s in gone[:10])
        more = f" and {len(gone) - 10} more" if len(gone) > 10 else ""
        print(
            f"mplog: {len(gone)} senders ended without a goodbye; their last records may be lost, uncounted: "
            f"{names}{more}",
            file=sys.stderr,
            flush=True,
        )


def _report_stats(server: object, interval: float) -> None:
    from mplog.listener.loop import Server

    assert isinstance(server, Server)
    while not server.stop_event.wait(interval):
        snap = server.snapshot()
        print(
            f"mplog: received {snap['received']} senders {len(snap['senders'])} malformed {snap['malformed_total']} "
            f"repaired {snap['repaired_total']} gaps {snap['gaps']} dropped {snap['dropped']} "
            f"rejected {snap['rejected']} refused {snap.get('refused', 0)} "
            f"handler_errors {sum(snap['handler_errors'].values())} "
            f"handler_drops {sum((snap.get('handler_drops') or {}).values())}",
            file=sys.stderr,
            flush=True,
        )


def _config_path(args: argparse.Namespace) -> str | None:
    """The config file from ``--config``, else ``$MPLOG_CONFIG``; a bad variable is named."""
    if args.config:
        return str(args.config)
    path = os.environ.get(ENV_CONFIG)
    if path and not os.path.isfile(path):
        raise ConfigError(f"{ENV_CONFIG}={path!r} is not a file; set it to a .toml, .json or .yaml config or unset it")
    return path or None


def _cmd_check(args: argparse.Namespace) -> int:
    from mplog.config import load_config
    from mplog.listener.handler_check import check_handlers
    from mplog.listener.settings import worker_level
    from mplog.listener.status_channel import control_endpoint_for

    path = _config_path(args)
    if path is None:
        raise ConfigError(f"mplog check needs a config file: pass one, or set {ENV_CONFIG}")
    config, runtime = load_config(path)
    _check_references(config)
    check_handlers(config)  # arguments and log file directories, without building a handler
    endpoint = runtime.endpoint or default_collector_endpoint()
    print(f"{path}: OK")
    print(f"listener   {endpoint}{'' if runtime.endpoint else '  (default; mplog listen --bind overrides)'}")
    print(f"transport  {runtime.transport}")
    try:
        print(f"status     {control_endpoint_for(endpoint, getattr(runtime, 'control', None))}")
    except ConfigError as exc:
        print(f"status     none ({exc})")
    for section in ("formatters", "filters", "handlers"):
        for name, spec in config.get(section, {}).items():
            kind = spec.get("class") or spec.get("()") or "logging.Formatter"
            details = " ".join(f"{k}={v!r}" for k, v in spec.items() if k not in ("class", "()"))
            print(f"{section[:-1]:<10} {name}: {kind} {details}".rstrip())
    for name, spec in [("root", config.get("root", {})), *config.get("loggers", {}).items()]:
        details = " ".join(f"{k}={v!r}" for k, v in spec.items())
        print(f"logger     {name}: {details}".rstrip())
    number = worker_level(config)
    level = logging.getLevelName(number)
    if not isinstance(level, str) or level == f"Level {number}":  # a level without a name: MPLOG_LEVEL takes the number
        level = str(number)
    # What workers learn from the status channel (mplog.worker.level); one that cannot reach it is told by hand.
    reach = f"asked; where the status channel is out of reach: MPLOG_LEVEL={level}"
    print(f"workers send records at {level} and above ({reach})")
    return EXIT_OK


def _check_references(config: dict[str, object]) -> None:
    """Import every class and factory the config names, and resolve every ``ext://`` value, as the listener will."""
    resolver = logging.config.BaseConfigurator({})
    for section in ("formatters", "filters", "handlers"):
        entries = config.get(section, {})
        assert isinstance(entries, dict)
        for name, spec in entries.items():
            for key in ("class", "()"):
                target = spec.get(key)
                if not isinstance(target, str) or target.startswith("ext://"):
                    continue
                try:
                    resolver.resolve(target)
                except (ImportError, ValueError) as exc:
                    raise ConfigError(
                        f"{section}.{name}.{key} names {target!r}, which cannot be imported ({exc}); "
                        "check the spelling and that its package is installed where the listener runs"
                    ) from None
        _check_external_objects(resolver, section, entries)


def _check_external_objects(resolver: logging.config.BaseConfigurator, where: str, value: object) -> None:
    """Resolve each ``ext://`` value at any depth, as dictConfig does wherever it finds one."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_external_objects(resolver, f"{where}.{key}", item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_external_objects(resolver, f"{where}[{index}]", item)
    elif isinstance(value, str) and value.startswith("ext://"):
        try:
            resolver.resolve(value[len("ext://") :])
        except (ImportError, ValueError) as exc:
            raise ConfigError(
                f"{where}: cannot resolve {value!r} ({exc}); check the spelling (e.g. 'ext://sys.stdout') "
                "and that its module is installed where the listener runs"
            ) from None


def _cmd_status(args: argparse.Namespace) -> int:
    from mplog.exceptions import ListenerError
    from mplog.listener.status_channel import format_status, request_stats
    from mplog.worker.env import ENV_ENDPOINT

    # $MPLOG_ENDPOINT too: inside a program that started its own listener (start_listener()
    # exports it to its workers) the collector's socket is not the listener to ask.
    endpoint = args.endpoint or os.environ.get(ENV_BIND) or os.environ.get(ENV_ENDPOINT) or default_collector_endpoint()
    try:
        stats = request_stats(endpoint, args.timeout, control=args.control or os.environ.get(ENV_CONTROL))
    except ListenerError as exc:
        print(f"mplog: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        from mplog.listener.stats_view import json_safe

        # Strict JSON whatever a sender claimed (a NaN start_time would print a bare NaN).
        print(json.dumps(json_safe(stats), indent=2, sort_keys=True, allow_nan=False))
    else:
        print(format_status(stats))
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from mplog.demo import run_demo

    return run_demo(args.directory, workers=args.workers, jobs=args.jobs)


# ---------------------------------------------------------------- across hosts: keys and relays


def _add_server_key_flags(parser: argparse.ArgumentParser, title: str = "CURVE on the bind side") -> None:
    group = parser.add_argument_group(title)
    group.add_argument("--curve-secret-key", metavar="FILE", help="this server's NAME.key_secret (mplog keygen)")
    group.add_argument("--authorized-keys", metavar="DIR", help="directory of the client NAME.key files allowed in")
    group.add_argument(
        "--allow-any-client", action="store_true", help="admit any client that knows the server's public key"
    )
    group.add_argument(
        "--insecure", action="store_true", help="allow a plaintext bind to a non-loopback address (no CURVE)"
    )


def _apply_key_flags(args: argparse.Namespace, settings: dict[str, object]) -> None:
    if args.curve_secret_key or args.authorized_keys or args.allow_any_client:
        curve: dict[str, object] = {"server_secret_key": args.curve_secret_key or ""}
        if args.authorized_keys:
            curve["authorized_keys"] = args.authorized_keys
        if args.allow_any_client:
            curve["allow_any"] = True
        settings["curve"] = curve
    if args.insecure:
        settings["insecure"] = True


def _cmd_keygen(args: argparse.Namespace) -> int:
    from mplog.transports.curve import generate_key_pair  # zmq is imported only by commands that need it

    for name in args.names:
        public, secret = generate_key_pair(args.directory, name, force=args.force)
        print(f"mplog: wrote {public} (public, share it) and {secret} (secret, mode 0600)", file=sys.stderr)
    return EXIT_OK


def _cmd_relay(args: argparse.Namespace) -> int:
    from mplog.listener.relay import Relay
    from mplog.listener.settings import transport_options_for
    from mplog.transports import TransportOptions

    inbound: dict[str, object] = {}
    _apply_key_flags(args, inbound)
    bind_options = transport_options_for(inbound)
    connect_options = TransportOptions(
        curve_server_key=args.server_key or "", curve_secret_key=args.client_secret_key or ""
    )
    relay = Relay(args.bind, args.connect, bind_options=bind_options, connect_options=connect_options)

    def stop(signum: int, frame: FrameType | None) -> None:
        relay.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"mplog: relaying {relay.endpoint} -> {args.connect}", file=sys.stderr, flush=True)
    try:
        relay.run()
    finally:
        relay.close()  # counts what it could not pass on
        snap = relay.snapshot()
    lost = ""
    if snap["unforwarded"]:
        lost = (
            f"; {snap['unforwarded_records']} records in {snap['unforwarded']} frames ({snap['unforwarded_bytes']} "
            "bytes) could not be passed on and are lost (the collector shows them as gaps, or their senders as ended "
            "without a goodbye, if it ever heard of them)"
        )
    print(
        f"mplog: relay stopped; forwarded {snap['frames']} frames ({snap['bytes']} bytes), "
        f"refused {snap['refused']} connections{lost}",
        file=sys.stderr,
        flush=True,
    )
    return EXIT_OK


def _add_cross_host_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keygen = commands.add_parser("keygen", help="write CURVE key pairs: NAME.key (public) and NAME.key_secret (0600)")
    keygen.add_argument("directory", help="where the key files go (created if missing)")
    keygen.add_argument("names", nargs="*", default=["server"], help="one key pair per name (default: server)")
    keygen.add_argument("--force", action="store_true", help="overwrite existing key files")
    keygen.set_defaults(func=_cmd_keygen)

    relay = commands.add_parser("relay", help="forward frames from this host's workers to a collector, untouched")
    relay.add_argument(
        "--bind", "-b", required=True, help="where this host's workers connect, e.g. tcp://127.0.0.1:5142"
    )
    relay.add_argument("--connect", required=True, help="the collector (comma-separated: several share the load)")
    relay.add_argument("--server-key", metavar="FILE", help="the collector's public key, to connect with CURVE")
    relay.add_argument("--client-secret-key", metavar="FILE", help="this relay's NAME.key_secret for the collector")
    _add_server_key_flags(relay)
    relay.set_defaults(func=_cmd_relay)


def _interval(text: str) -> float:
    """``--stats-interval``: 0 (no reports) or at least 0.1 s (a negative one printed a report per loop pass)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if value != 0 and not 0.1 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 (no reports) or at least 0.1 seconds, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mplog",
        description="Logging for many processes: one listener owns every handler.",
        epilog="Exit codes: 0 ok, 1 failure, 2 bad usage or config, 3 endpoint could not be bound.",
    )
    parser.add_argument("--version", action="version", version=f"mplog {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listen = commands.add_parser("listen", help="run a standalone listener (a collector) in the foreground")
    listen.add_argument("--config", "-c", help="dictConfig file (.toml/.json/.yaml); default $MPLOG_CONFIG")
    listen.add_argument("--bind", "-b", help="endpoint to bind, e.g. tcp://127.0.0.1:5140; default $MPLOG_BIND")
    listen.add_argument(
        "--stats-interval",
        type=_interval,
        default=0.0,
        metavar="SECONDS",
        help="print a one-line stats report every SECONDS s (at least 0.1; default 0: none)",
    )
    listen.add_argument("--control", help="status-channel endpoint (default: next to the bound endpoint)")
    listen.add_argument(
        "--metrics", metavar="HOST:PORT", help="serve Prometheus metrics at http://HOST:PORT/metrics (mplog.metrics)"
    )
    _add_server_key_flags(listen, "CURVE on the bind side (overrides the config's mplog.curve section)")
    listen.set_defaults(func=_cmd_listen)

    check = commands.add_parser("check", help="validate a config file and print what the listener would build")
    check.add_argument("config", nargs="?", help="the config file (.toml, .json, .yaml); default $MPLOG_CONFIG")
    check.set_defaults(func=_cmd_check)

    status = commands.add_parser("status", help="ask a running listener for its stats: a table per sender")
    status.add_argument(
        "endpoint", nargs="?", help="the listener's endpoint; default $MPLOG_BIND, $MPLOG_ENDPOINT or the collector's"
    )
    status.add_argument("--control", help="the status-channel endpoint, when not the one next to ENDPOINT")
    status.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for an answer (default 2)")
    status.add_argument("--json", action="store_true", help="print the raw stats as JSON")
    status.set_defaults(func=_cmd_status)

    demo = commands.add_parser("demo", help="a spawn Pool logging into a rotating file through a listener")
    demo.add_argument("--directory", default="mplog-demo", help="where the log files go (default ./mplog-demo)")
    demo.add_argument("--workers", type=int, default=4)
    demo.add_argument("--jobs", type=int, default=20_000)
    demo.set_defaults(func=_cmd_demo)
    _add_cross_host_commands(commands)
    return parser


def _version() -> str:
    """The installed distribution's version (what pip installed), else the package's own."""
    try:
        return importlib.metadata.version("mplog")
    except importlib.metadata.PackageNotFoundError:
        from mplog import __version__

        return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mplog`` command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at interpreter exit
    except BrokenPipeError:
        return _stdout_closed()
    except ConfigError as exc:
        print(f"mplog: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except TransportError as exc:
        from mplog.listener.status_channel import port_in_use_hint

        print(f"mplog: {exc}{port_in_use_hint(str(exc))}", file=sys.stderr)
        return EXIT_BIND
    return code


def _stdout_closed() -> int:
    """The reader of stdout went away (``mplog status | head -1``): not an error of this command.

    Python would print a BrokenPipeError traceback, and another one when it flushes
    stdout at exit; stdout is pointed at /dev/null so that the exit is quiet.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return EXIT_OK
