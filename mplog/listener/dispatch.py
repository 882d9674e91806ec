"""The listener's dispatch: one frame's records into ``logging``, written a batch at a time.

The generic path hands every record to its logger's ``handle()`` (the logger named
``name``, or a stand-in for one the config does not name: :mod:`mplog.listener.logger_lookup`): a
FileHandler then formats it, writes it and flushes the file, once per record. When a
record's whole route is plain (the logger and its ancestors call handlers the stock
way, no filters anywhere, every handler on the route a StreamHandler or FileHandler
that does not override emit/format/flush, formatted by a Formatter whose ``format``
is the stock one: decided by :mod:`mplog.listener.fast_guard`, the one place that names
every condition of every shortcut), the fast path formats the records of a frame itself, exactly as
``Formatter.format`` would (:class:`mplog.listener.line_format.LineFormat`: the time text cached per
second, and a format naming only wire fields built from the decoded fields without a
LogRecord), and hands each handler the whole batch in one write and one flush. Anything else takes the generic
path, record by record, after the batches collected so far are written, so every
handler sees its records in the order they arrived.

The output bytes are the same as the generic path's (``tests/unit/test_fastpath.py``
compares them, exception text, stack info and extras included). A failed write
counts one handler error per record of the batch whose line is not whole in the file
(:mod:`mplog.listener.write_failures`: for a FileHandler's regular file the lines that
reached it are known; for any other stream every record of the batch is counted).
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable
from itertools import groupby
from typing import Any, NamedTuple

from mplog.listener.fast_guard import batch_refusal, default_formatter, handler_refusal, logger_refusal
from mplog.listener.frame_lines import add_frame
from mplog.listener.line_format import LineFormat
from mplog.listener.logger_lookup import LoggerLookup
from mplog.listener.write_failures import OUTAGES, file_offset, lines_written
from mplog.wire import make_log_record
from mplog.wire.schema import F_EXC_TEXT, F_LEVELNO, F_NAME, F_STACK_INFO

__all__ = ["BatchDispatcher"]

_NAME, _LEVELNO, _EXC_TEXT, _STACK_INFO = map(operator.itemgetter, (F_NAME, F_LEVELNO, F_EXC_TEXT, F_STACK_INFO))


_Maker = Callable[[list[Any]], logging.LogRecord]


class _Frame(NamedTuple):
    """What one frame's dispatch shares between its steps: routes and sinks found so far, the record maker."""

    routes: dict[str, list[_Sink] | None]  # logger name -> its sinks, or None: the generic path
    sinks: dict[int, _Sink]  # id(handler) -> its sink
    make: _Maker
    on_error: Callable[[], None] | None
    written: Callable[[int], None] | None  # the progress mark (BatchDispatcher.dispatch)
    at: int  # the frame's records before the run being added


class _Sink:
    """One handler's share of the current frame: formatted lines waiting for one write."""

    __slots__ = ("compiled", "format", "handler", "level", "lines", "make", "records")

    def __init__(self, handler: logging.StreamHandler[Any], fmt: LineFormat, make: _Maker) -> None:
        self.handler = handler
        self.level = handler.level
        self.format = fmt
        self.compiled = fmt.compiled  # lines built from the wire fields, without a LogRecord
        self.make = make  # wire fields -> LogRecord, for whatever needs a record after all
        self.lines: list[str] = []
        self.records: list[Any] = []  # per line: its LogRecord, or its wire fields (a list)

    def add(self, record: logging.LogRecord) -> None:
        """``record``'s line (``LineFormat.format``: ``Formatter.format``'s steps, inlined where stock)."""
        try:
            line = self.format.format(record)
        except Exception:  # what the listener's guarded Handler.handle does with any error of emit()
            self.handler.handleError(record)
            return
        self.lines.append(line)
        self.records.append(record)

    def add_fields(self, fields: list[Any]) -> None:
        """The line of ``fields`` with no LogRecord (a compiled format: fast_guard.formatter_refusal accepted)."""
        try:
            line = self.format.line(fields)
        except Exception:  # the LogRecord path formats it again, and reports the error as emit() would
            self.add(self.make(fields))
            return
        self.lines.append(line)
        self.records.append(fields)

    def add_run(self, run: list[list[Any]]) -> None:
        """:meth:`add_fields` for each record of ``run``, in one call when none of them fails."""
        try:
            lines = self.format.lines(run)
        except Exception:  # one at a time: the record that fails is reported as emit() would
            for fields in run:
                self.add_fields(fields)
            return
        self.lines.extend(lines)
        self.records.extend(run)

    def _record(self, item: Any) -> logging.LogRecord:
        return self.make(item) if type(item) is list else item

    def write(self) -> None:
        """The lines collected so far, in one ``stream.write`` and one ``flush``.

        Shortcut: ``Handler.handle`` (filters, the lock taken per record), ``emit`` and its
        flush per record. Safe for a handler :func:`~mplog.listener.fast_guard.handler_refusal`
        accepted: no filters, the stock ``StreamHandler.emit`` (``stream.write(msg +
        terminator)`` then ``flush``), so the joined lines are the same bytes; the lock is
        still taken, once. A write that fails is reported per record not whole in the file.
        """
        handler, records = self.handler, self.records
        if not records:
            return
        lines, self.lines, self.records = self.lines, [], []
        if handler.stream is None:  # a delayed or closed FileHandler: let emit() decide
            for item in records:
                handler.handle(self._record(item))
            return
        terminator = handler.terminator
        handler.acquire()
        try:
            start = file_offset(handler)  # one lseek per frame: what a failed write put in the file is then known
            handler.stream.write(terminator.join(lines) + terminator)
            handler.flush()
        except Exception:
            # The records whose lines are whole in the file were written; each of the others is
            # one handler error (the first one's handleError drops what the stream still holds).
            for item in records[lines_written(handler, start, lines) :]:
                handler.handleError(self._record(item))
        else:
            if OUTAGES.failing:
                OUTAGES.written(handler)
        finally:
            handler.release()


def _handle_alone(logger: logging.Logger, record: logging.LogRecord, sinks: dict[int, _Sink]) -> None:
    """A record off the fast path: ``logger.handle``, after the lines collected so far (each handler's order kept)."""
    for sink in sinks.values():
        sink.write()
    logger.handle(record)


def _handlers_want_positions() -> bool:
    """True when a configured handler asks for each record's sender and sequence number (``wants_positions``).

    Configured: on a logger, or named by dictConfig (a QueuedHandler's or MemoryHandler's
    target); a closed handler is neither.
    """
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    handlers = [h for logger in loggers for h in getattr(logger, "handlers", ())]
    handlers += list(getattr(logging, "_handlers", {}).values())  # dictConfig names every handler it builds
    return any(getattr(handler, "wants_positions", False) is True for handler in handlers)


class BatchDispatcher:
    """Dispatches the records of one frame; ``fast=False`` keeps to the generic path.

    When a handler has ``wants_positions = True`` (RFC5424Handler, RELPHandler), every
    LogRecord built gets ``mplog_sender`` (the frame's sender key) and ``mplog_seq`` (its
    sequence number in that sender's ledger). Looked up once, at the first frame; without
    such a handler nothing is added.
    """

    def __init__(self, *, fast: bool = True) -> None:
        self.fast = fast
        self._loggers = LoggerLookup()
        self.positions: bool | None = None  # None: not looked up yet

    def logger(self, name: str) -> logging.Logger:
        """The logger a record named ``name`` is handled by (see :class:`LoggerLookup`)."""
        return self._loggers.get(name)

    def dispatch(
        self,
        records: list[list[Any]],
        host: str,
        peer: str | None = None,
        on_error: Callable[[], None] | None = None,
        *,
        sender: str | None = None,
        first_seq: int | None = None,
        columns: list[list[Any]] | None = None,
        written: Callable[[int], None] | None = None,
    ) -> None:
        """Hand every record (validated field lists) to its logger's handlers.

        Args:
            records: the frame's records, already validated.
            host: the sender's host name (the ``hostname`` attribute unless an extra sets it).
            peer: the authenticated client key, set as ``peer_key`` over any extra of that name.
            on_error: called once for each record whose dispatch raised outside every handler
                (a logger-level filter, for example); handlers report their own errors.
            sender: the frame's sender key, for handlers that want positions.
            first_seq: the sequence number of ``records[0]`` when the records are consecutive.
            columns: ``records`` as columns (``check_records`` gives them for a frame it
                passed whole): the frame's lines may then be built at once (mplog.listener.frame_lines).
            written: told ``n`` once the first ``n`` records are in their files (after each record
                a handler wrote at once, with every line collected before it), and -1 before the
                lines collected for the rest are written (mplog.listener.progress).
        """
        self._loggers.refresh()
        if self.positions is None:
            self.positions = _handlers_want_positions()
        make = self._maker(records, host, peer, sender, first_seq)
        if not self.fast:
            self._dispatch_generic(records, make, on_error, written)
            return
        routes: dict[str, list[_Sink] | None] = {}
        sinks: dict[int, _Sink] = {}
        try:
            # The frame path: every line built from the columns at once (mplog.listener.frame_lines
            # says when it may be taken); else run by run, then record by record.
            if (
                columns is not None
                and records
                and add_frame(self, records, columns, routes=routes, sinks=sinks, make=make)
            ):
                return  # every line is in its sink: written below
            at = 0  # the frame's records before this run
            for name, same_logger in groupby(records, _NAME):
                run = list(same_logger)
                logger = self.logger(name)
                if not (len(run) > 1 and self._add_run(run, name, logger, routes=routes, sinks=sinks, make=make)):
                    self._add_records(run, name, logger, _Frame(routes, sinks, make, on_error, written, at))
                at += len(run)
        finally:
            if written is not None:
                written(-1)
            for sink in sinks.values():
                sink.write()

    def _dispatch_generic(
        self,
        records: list[list[Any]],
        make: _Maker,
        on_error: Callable[[], None] | None,
        written: Callable[[int], None] | None,
    ) -> None:
        """Every record to its logger's ``handle()``, as ``logging`` would (``fast=False``)."""
        for index, fields in enumerate(records, 1):
            logger = self.logger(fields[F_NAME])
            if logger.isEnabledFor(fields[F_LEVELNO]):
                try:
                    logger.handle(make(fields))
                except Exception:
                    if on_error is not None:
                        on_error()
                    continue
                if written is not None:
                    written(index)
        if written is not None:
            written(-1)

    def _add_records(self, run: list[list[Any]], name: str, logger: logging.Logger, frame: _Frame) -> None:
        """The records of ``run`` (one logger's) one by one: to its sinks, or off the fast path to ``logger.handle``."""
        routes, sinks, make = frame.routes, frame.sinks, frame.make
        for index, fields in enumerate(run, 1):
            levelno = fields[F_LEVELNO]
            if not logger.isEnabledFor(levelno):
                continue
            try:
                route = routes[name] if name in routes else routes.setdefault(name, self._route(logger, sinks, make))
                if route is None:
                    _handle_alone(logger, make(fields), sinks)
                    if frame.written is not None:  # it, and every line collected before it, is in its file
                        frame.written(frame.at + index)
                    continue
                built: logging.LogRecord | None = None  # only for a sink whose format needs a record
                for sink in route:
                    # callHandlers' own test (record.levelno >= hdlr.level), per record: the
                    # level of each record was checked by isEnabledFor above, as Logger.info does.
                    if levelno >= sink.level:
                        if sink.compiled:
                            sink.add_fields(fields)
                        else:
                            if built is None:
                                built = make(fields)
                            sink.add(built)
            except Exception:
                if frame.on_error is not None:
                    frame.on_error()

    def _maker(
        self, records: list[list[Any]], host: str, peer: str | None, sender: str | None, first_seq: int | None
    ) -> _Maker:
        """Wire fields -> LogRecord for this frame (with its position when a handler wants it)."""
        if self.positions and sender is not None:
            # Per frame, and only with such a handler: each record's number, by the identity of its fields.
            seqs = {id(fields): first_seq + i for i, fields in enumerate(records)} if first_seq is not None else {}

            def make_numbered(fields: list[Any]) -> logging.LogRecord:
                record = make_log_record(fields, host)
                if peer is not None:
                    record.peer_key = peer
                record.mplog_sender = sender
                record.mplog_seq = seqs.get(id(fields))
                return record

            return make_numbered

        def make(fields: list[Any]) -> logging.LogRecord:
            record = make_log_record(fields, host)
            if peer is not None:
                record.peer_key = peer
            return record

        return make

    def _add_run(
        self,
        run: list[list[Any]],
        name: str,
        logger: logging.Logger,
        *,
        routes: dict[str, list[_Sink] | None],
        sinks: dict[int, _Sink],
        make: _Maker,
    ) -> bool:
        """Hand a run of consecutive records of one logger to its sinks at once; False: one at a time.

        Shortcut: no ``isEnabledFor``, ``callHandlers`` level check or record-factory call per
        record, and each sink formats the run in one call (``LineFormat.lines``). Only when
        :func:`~mplog.listener.fast_guard.batch_refusal` finds nothing that needs a closer look
        (every level enabled and at or above every sink's level, every sink's format compiled,
        no exception text or stack): then each record's line is the one the record path builds.
        """
        try:
            if name not in routes:
                routes[name] = self._route(logger, sinks, make)
        except Exception:  # the record-at-a-time path meets it again and counts it per record
            return False
        route = routes[name]
        marked = any(map(_EXC_TEXT, run)) or any(map(_STACK_INFO, run))
        if route is None or batch_refusal(logger, set(map(_LEVELNO, run)), marked, route) is not None:
            return False
        for sink in route:
            sink.add_run(run)
        return True

    def _route(self, logger: logging.Logger, sinks: dict[int, _Sink], make: _Maker) -> list[_Sink] | None:
        """The sinks a record of ``logger`` goes to, in callHandlers order; None: use the generic path.

        Shortcut: ``Logger.handle`` (the logger's filters, ``disabled``) and ``callHandlers``
        (the walk up the parents while ``propagate``) done once per frame instead of per
        record, when :func:`~mplog.listener.fast_guard.logger_refusal` and
        :func:`~mplog.listener.fast_guard.handler_refusal` of every handler met accept: then
        the walk below visits the handlers ``callHandlers`` would, in its order.
        """
        if logger_refusal(logger) is not None:
            return None
        route: list[_Sink] = []
        current: logging.Logger | None = logger
        while current is not None:
            for handler in current.handlers:
                if handler_refusal(handler) is not None:
                    return None
                sink = sinks.get(id(handler))
                if sink is None:
                    assert isinstance(handler, logging.StreamHandler)
                    # Built afresh for every frame, so a formatter changed since the last one is seen.
                    sink = sinks[id(handler)] = _Sink(
                        handler, LineFormat(handler.formatter or default_formatter()), make
                    )
                route.append(sink)
            current = current.parent if current.propagate else None
        return route or None  # no handler at all: lastResort's business (and a warning once), generic path
