"""A real SMTP server (aiosmtpd) for the handler tests, run as a subprocess.

Each accepted mail is written to DIR/NNNNNN.eml (atomically); ``--delay`` makes every
DATA command answer slowly, ``--reject`` answers every DATA with 554. Prints
``ready`` on stdout once it accepts connections; stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import sys
import warnings
from typing import Any

warnings.simplefilter("ignore", DeprecationWarning)  # aiosmtpd on newer Pythons; not what is tested

from aiosmtpd.controller import Controller  # noqa: E402


class Sink:
    def __init__(self, directory: str, delay: float, reject: bool) -> None:
        self.directory = directory
        self.delay = delay
        self.reject = reject
        self.numbers = itertools.count()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.reject:
            return "554 5.0.0 rejected by the test"
        path = os.path.join(self.directory, f"{next(self.numbers):06d}.eml")
        with open(path + ".tmp", "wb") as out:
            out.write(envelope.original_content)
        os.replace(path + ".tmp", path)
        return "250 OK"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--reject", action="store_true")
    args = parser.parse_args()
    controller = Controller(Sink(args.dir, args.delay, args.reject), hostname="127.0.0.1", port=args.port)
    controller.start()
    print("ready", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    controller.stop()
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    sys.exit(main())
