"""The ``mplog`` command: ``listen``, ``demo`` (see ``mplog --help``).

Exit codes: 0 success, 1 failure at run time, 2 bad usage or configuration,
3 the endpoint could not be bound.
"""

from __future__ import annotations

import argparse
import logging
import logging.config
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from types import FrameType

from mplog.exceptions import ConfigError, TransportError

__all__ = ["main"]

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_BIND = 0, 1, 2, 3


def default_collector_endpoint() -> str:
    """A per-user ipc endpoint for a standalone collector on this host."""
    return f"ipc://{tempfile.gettempdir()}/mplog-{os.getuid()}/collector.sock"


def _cmd_listen(args: argparse.Namespace) -> int:
    from mplog.config import build_receiver, load_config
    from mplog.server import Server, install_handler_error_counter

    config, runtime = load_config(args.config)
    endpoint = args.bind or runtime.endpoint or default_collector_endpoint()
    logging.config.dictConfig(config)
    receiver, limits = build_receiver(endpoint, runtime.as_dict())
    server = Server(receiver, limits=limits)
    install_handler_error_counter(server.stats)

    def stop(signum: int, frame: FrameType | None) -> None:
        server.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.stats_interval:
        threading.Thread(target=_report_stats, args=(server, args.stats_interval), daemon=True).start()
    print(f"mplog: listening on {receiver.endpoint}", file=sys.stderr, flush=True)
    try:
        server.run()
    finally:
        logging.shutdown()
        receiver.close()
    snap = server.snapshot()
    print(
        f"mplog: stopped; received {snap['received']} records from {len(snap['senders'])} senders, "
        f"malformed {snap['malformed_total']}, gaps {snap['gaps']}, dropped {snap['dropped']}",
        file=sys.stderr,
        flush=True,
    )
    return EXIT_OK


def _report_stats(server: object, interval: float) -> None:
    from mplog.server import Server

    assert isinstance(server, Server)
    while not server.stop_event.wait(interval):
        snap = server.snapshot()
        print(
            f"mplog: received {snap['received']} senders {len(snap['senders'])} malformed {snap['malformed_total']} "
            f"gaps {snap['gaps']} dropped {snap['dropped']} handler_errors {sum(snap['handler_errors'].values())}",
            file=sys.stderr,
            flush=True,
        )


def _cmd_demo(args: argparse.Namespace) -> int:
    from mplog.demo import run_demo

    return run_demo(args.directory, workers=args.workers, jobs=args.jobs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mplog",
        description="Logging for many processes: one listener owns every handler.",
        epilog="Exit codes: 0 ok, 1 failure, 2 bad usage or config, 3 endpoint could not be bound.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listen = commands.add_parser("listen", help="run a standalone listener (a collector) in the foreground")
    listen.add_argument("--config", "-c", help="dictConfig file (.toml, .json, .yaml); default: stderr at INFO")
    listen.add_argument("--bind", "-b", help="endpoint to bind, e.g. tcp://127.0.0.1:5140 or ipc:///path")
    listen.add_argument("--stats-interval", type=float, default=0.0, help="print a one-line stats report every N s")
    listen.set_defaults(func=_cmd_listen)

    demo = commands.add_parser("demo", help="a spawn Pool logging into a rotating file through a listener")
    demo.add_argument("--directory", default="mplog-demo", help="where the log files go (default ./mplog-demo)")
    demo.add_argument("--workers", type=int, default=4)
    demo.add_argument("--jobs", type=int, default=20_000)
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mplog`` command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"mplog: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except TransportError as exc:
        print(f"mplog: {exc}", file=sys.stderr)
        return EXIT_BIND
    return code
