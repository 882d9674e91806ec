"""Celery: every prefork child sends its records to the mplog listener, with the task's id and name.

Call :func:`install` where the Celery app is defined (the module the worker imports)::

    app = Celery("shop", broker="redis://localhost:6379/0")
    mplog.integrations.celery.install(app)   # endpoint: $MPLOG_ENDPOINT

What it connects, and why:

- ``setup_logging``: with a receiver on this signal Celery configures no logging of its
  own (no handlers on the root logger, no hijacking); the receiver routes the worker's
  main process to the listener instead.
- ``worker_process_init``: each prefork child (forked from the main process) gets its
  own connection to the listener, the records it logs carry ``task_id`` and ``task_name``.
- ``worker_process_shutdown``: a child replaced under ``max_tasks_per_child`` ends with
  ``os._exit()``, which runs no ``atexit`` hook: its last records are delivered here.
- ``print()``: Celery would redirect stdout to the ``celery.redirected`` logger itself
  but skips that when ``setup_logging`` has a receiver, so :func:`install` does it (unless
  ``worker_redirect_stdouts`` is off): each ``print()`` inside a task becomes exactly
  one record, with its task id, and nothing of it is written to the worker's stdout.
  stderr is left alone, so a crash still reaches the terminal.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals
from celery._state import get_current_task

from mplog.worker import MplogHandler, setup_worker

__all__ = ["TaskFilter", "install"]

REDIRECT_LOGGER = "celery.redirected"


class TaskFilter(logging.Filter):
    """Adds ``task_id`` and ``task_name`` to every record (``None`` outside a task)."""

    def filter(self, record: logging.LogRecord) -> bool:
        task = get_current_task()
        request = getattr(task, "request", None) if task is not None else None
        task_id = getattr(request, "id", None)
        if task_id is not None and task is not None:
            record.task_id = task_id
            record.task_name = task.name
        else:
            record.__dict__.setdefault("task_id", None)
            record.__dict__.setdefault("task_name", None)
        return True


class _Installation:
    """The receivers connected by :func:`install` (kept alive: Celery holds them weakly by default)."""

    def __init__(self, app: Celery, endpoint: str | None, redirect_stdout: bool | None, options: dict[str, Any]):
        self.app = app
        self.endpoint = endpoint
        self.redirect_stdout = redirect_stdout
        self.options = options
        self.handler: MplogHandler | None = None

    def connect_to_listener(self) -> MplogHandler:
        handler = setup_worker(self.endpoint, **self.options)
        if not any(isinstance(f, TaskFilter) for f in handler.filters):
            handler.addFilter(TaskFilter())
        self.handler = handler
        return handler

    def on_setup_logging(self, **kwargs: Any) -> None:
        self.connect_to_listener()
        conf = self.app.conf
        redirect = conf.worker_redirect_stdouts if self.redirect_stdout is None else self.redirect_stdout
        if redirect:
            level = conf.worker_redirect_stdouts_level or "WARNING"
            self.app.log.redirect_stdouts_to_logger(
                logging.getLogger(REDIRECT_LOGGER), level, stdout=True, stderr=False
            )

    def on_worker_process_init(self, **kwargs: Any) -> None:
        self.connect_to_listener()

    def on_worker_process_shutdown(self, **kwargs: Any) -> None:
        handler = self.handler
        if handler is not None:
            handler.close()


_installed: dict[int, _Installation] = {}


def install(
    app: Celery, endpoint: str | None = None, *, redirect_stdout: bool | None = None, **worker_options: Any
) -> None:
    """Route a Celery worker's logging (main process and every pool child) to the mplog listener.

    Args:
        app: the Celery app; its ``worker_hijack_root_logger`` is turned off.
        endpoint: the listener's endpoint; default ``$MPLOG_ENDPOINT``, read in the worker.
        redirect_stdout: turn ``print()`` into records of the ``celery.redirected`` logger;
            default: the app's ``worker_redirect_stdouts`` (on unless configured off).
        **worker_options: passed to :func:`mplog.setup_worker` (e.g. ``policy``).

    Calling it twice for the same app changes nothing.
    """
    if id(app) in _installed:
        return
    app.conf.worker_hijack_root_logger = False
    installation = _Installation(app, endpoint, redirect_stdout, worker_options)
    _installed[id(app)] = installation
    signals.setup_logging.connect(installation.on_setup_logging, weak=False)
    signals.worker_process_init.connect(installation.on_worker_process_init, weak=False)
    signals.worker_process_shutdown.connect(installation.on_worker_process_shutdown, weak=False)
