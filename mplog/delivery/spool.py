"""Spool files for acknowledged delivery: unacknowledged frames that outlive their worker.

With ``spool_dir`` set, :class:`mplog.delivery.ack_sender.AckingSender` appends every frame it keeps to
its own spool file (:class:`OwnSpool`) before sending it, and forgets it once the
listener acknowledges it. A live worker holds an exclusive ``flock`` on its file; a
file nobody holds belongs to a worker that died, and the next worker to start adopts
it (:func:`adopt_spools`): it resends the frames under the dead worker's identity (the
listener drops what it already wrote), then says goodbye for it and deletes the file.

This module is the sender's side of it (:class:`Spooler`: failures, reports, which
adopted files to keep); the bytes of a file are :mod:`mplog.delivery.spool_format`, the
directory, the locks and the adoption :mod:`mplog.delivery.spool_files`.
"""

from __future__ import annotations

import os
from collections.abc import Container
from typing import Any

from mplog.delivery.spool_files import AdoptedSpool, AdoptedStream, OwnSpool, adopt_spools, prepare_dir
from mplog.delivery.spool_format import SpoolContents, goodbye_frame, parse_spool
from mplog.exceptions import report

__all__ = [
    "AdoptedSpool",
    "AdoptedStream",
    "OwnSpool",
    "SpoolContents",
    "Spooler",
    "adopt_spools",
    "goodbye_frame",
    "parse_spool",
    "prepare_dir",
]


class Spooler:
    """A sender's spool: its own file, and the dead workers' files it adopted.

    A failure to create or write the own file is counted in :attr:`errors`, reported
    once, and ends spooling: the sender goes on with its memory buffer alone. The whole
    frames the file already holds stay there for an adopter, and their acknowledgements
    are still recorded (:meth:`OwnSpool.stop`). Not thread-safe: the sender calls it with
    its lock held.
    """

    def __init__(self, directory: str, bound: int) -> None:
        self.directory = directory
        self.bound = bound
        self.errors = 0
        self.own: OwnSpool | None = None
        self.adopted: dict[str, tuple[AdoptedSpool, set[int]]] = {}  # path -> (file, its streams not yet closed)
        self.more = False  # the last adoption left files for later (its memory budget was spent)
        self.ready = False  # the directory is there to adopt from (the own file may still be missing)
        try:
            prepare_dir(directory)
            self.ready = True
            self.own = OwnSpool(directory, bound)
        except OSError as exc:
            self._failed(exc, directory)

    @property
    def path(self) -> str | None:
        """The own file, while it is written."""
        return self.own.path if self.own is not None and not self.errors else None

    def _failed(self, exc: OSError, where: str) -> None:
        self.errors += 1
        if self.own is None:
            kept = 0
        elif self.errors == 1:
            kept = self.own.stop()
        else:  # the acknowledgements of the frames stop() kept cannot be recorded: keep none
            self.own.drop()
            return
        if self.errors == 1:
            in_file = (
                f"the {kept} unacknowledged frames already in {where} stay there for a worker that adopts it, "
                if kept
                else ""
            )
            report(
                f"mplog: spool {where}: {exc}; acknowledged delivery goes on without a spool "
                f"({in_file}{'later' if kept else 'unacknowledged'} frames are kept in memory only; pid {os.getpid()})"
            )

    def call(self, method: str, *args: Any) -> Any:
        """``OwnSpool.method(*args)``; None when not spooling or when it failed.

        After a failure only ``acknowledged`` goes on, while the file keeps frames.
        """
        own = self.own
        if own is None or (self.errors and not (method == "acknowledged" and own.kept)):
            return None
        try:
            return getattr(own, method)(*args)
        except OSError as exc:
            self._failed(exc, own.path)
            return None

    def adopt(self, taken: Container[int]) -> list[tuple[str, dict[int, AdoptedStream]]]:
        """Lock the unheld spool files of the directory; their streams to resend, by file.

        Args:
            taken: stream ids the sender tracks already (a file naming one is left alone).

        Adopting needs only reads and deletes: a worker whose own file could not be created
        (a full disk) still adopts (see
        ``test_a_worker_that_cannot_create_its_own_spool_on_a_full_disk_still_adopts_a_dead_workers_spool``).
        """
        if not self.ready:
            return []
        own = self.own.path if self.own is not None else ""
        spools, problems, self.more = adopt_spools(self.directory, own, self.bound)
        for line in problems:
            report(f"mplog: {line}")
        result = []
        for spool in spools:
            try:
                found = spool.streams()
            except ValueError as exc:
                report(f"mplog: spool file {spool.path} holds an entry that is not a frame ({exc}); left as it is")
                spool.release()
                continue
            if not found:  # nothing left to send, nobody to say goodbye for
                spool.remove()
                continue
            if any(sid in taken for sid in found):
                spool.release()  # the same stream id twice (one chance in 2**32): another worker's job
                continue
            if spool.contents.torn:
                report(f"mplog: spool file {spool.path}: ignored a torn last entry ({spool.contents.torn} bytes)")
            self.adopted[spool.path] = (spool, set(found))
            result.append((spool.path, found))
        return result

    def stream_done(self, path: str, stream: int) -> None:
        """An adopted stream is acknowledged up to its goodbye: the file goes with its last one."""
        spool, open_streams = self.adopted[path]
        open_streams.discard(stream)
        if not open_streams:
            del self.adopted[path]
            spool.remove()

    def give_up(self, path: str, frames: int, waited: float) -> set[int]:
        """Leave an adopted file for the next worker; returns its streams, for the sender to forget."""
        spool, open_streams = self.adopted.pop(path)
        report(
            f"mplog: spool file {path} of a dead worker: {frames} frames were not acknowledged "
            f"within {waited:g} s; left for the next worker (pid {os.getpid()})"
        )
        spool.release()
        return open_streams

    def release_inherited(self) -> None:
        """In a forked child: close the parent's files without unlocking them (the locks are the parent's)."""
        if self.own is not None:
            self.own.release()
        for spool, _ in self.adopted.values():
            spool.release()
        self.own, self.adopted = None, {}

    def close(self, *, keep: bool) -> None:
        """Keep the own file (unacknowledged frames, for the next worker) or delete it."""
        if self.own is not None:
            if keep and (not self.errors or self.own.kept):
                self.own.release()
            else:
                self.own.remove()
