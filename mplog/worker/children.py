"""Route every process that multiprocessing starts while a listener runs, even one that never calls setup_worker().

A ``fork`` child inherits its parent's root handler; a ``spawn`` or ``forkserver`` child
starts from a fresh interpreter (or from the forkserver's) with no handler at all, so
its INFO records went nowhere, and nothing counted them: they never reached mplog.
:func:`route_children` puts a marker holding the listener's exported settings into
multiprocessing's per-process config (``current_process()._config``), which
multiprocessing copies into every ``Process`` it creates and sends, pickled with the
``Process``, to a spawn or forkserver child. The child unpickles its ``Process`` before it
runs anything of the user's (after importing the main module, before a Pool's
initializer or the target): unpickling the marker calls :func:`mplog.setup_worker` there.
A ``fork`` child unpickles nothing; it inherits the marker in its ``Process``'s config and
multiprocessing's after-fork hooks, which its bootstrap runs before the target, and the
hook registered with the marker routes it the same way: this matters when the parent
does not route its own logging (``route_parent=False``), so that the child has no mplog
handler to inherit. (A spawn child never runs the parent's after-fork hooks, hence the
marker.) A child already set up (an mplog handler on its root logger) is left as it
is; a target or initializer that calls ``setup_worker()`` itself gets the same handler
back, or, with other transport options, a new one that replaces it without a trace.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.util
import os
import sys

from mplog.worker.env import ENV_ACK, ENV_ENDPOINT, ENV_LEVEL, ack_setting, inherited_setting
from mplog.worker.handler import MplogHandler, setup_worker

__all__ = ["route_children"]

_KEY = "mplog:route_children"


class _Route:
    """The marker: the settings a child needs, pickled as a call to :func:`_arrive` made in the child."""

    def __init__(self, settings: dict[str, str]) -> None:
        self.settings = settings

    def __reduce__(self) -> tuple[object, tuple[dict[str, str]]]:
        return (_arrive, (self.settings,))


def _arrive(settings: dict[str, str]) -> _Route:
    """In a spawn or forkserver child, while it unpickles its Process: route its logging (never raises)."""
    try:
        _route(settings)
    except Exception as exc:
        try:
            sys.stderr.write(
                f"mplog: process {os.getpid()} was not routed to {settings.get(ENV_ENDPOINT)}: "
                f"{type(exc).__name__}: {exc}; call mplog.setup_worker() in it\n"
            )
        except Exception:
            pass
    return _Route(settings)


def _after_fork(marker: _Route) -> None:
    """In a fork child that multiprocessing started: route it as the marker would a spawn child."""
    config = getattr(multiprocessing.current_process(), "_config", None)
    if isinstance(config, dict) and config.get(_KEY) is marker:  # routing was on when its Process was made
        _arrive(marker.settings)


def _route(settings: dict[str, str]) -> None:
    root = logging.getLogger()
    if any(isinstance(handler, MplogHandler) for handler in root.handlers):
        return  # set up already (by the main module's import, or in the forkserver)
    # The settings travel with the marker: this process's own config and environment
    # are the forkserver's while it unpickles, which may predate the listener.
    name = settings.get(ENV_LEVEL, "")
    level = int(name) if name.isdigit() else logging.getLevelName(name.upper()) if name else None
    setup_worker(
        settings[ENV_ENDPOINT],
        level=level if isinstance(level, int) else None,
        ack=ack_setting(settings.get(ENV_ACK)),
    )


def route_children(enabled: bool) -> bool:
    """Route (or, with False, stop routing) the processes multiprocessing starts from now on.

    Call after the listener's settings are exported (:func:`mplog.worker.handler.export_setting`):
    the marker holds what they are at this moment.

    Returns:
        Whether they were routed before this call (to restore it later).
    """
    config = getattr(multiprocessing.current_process(), "_config", None)
    if not isinstance(config, dict):
        return False
    before = _KEY in config
    config.pop(_KEY, None)
    endpoint = inherited_setting(ENV_ENDPOINT)
    if enabled and endpoint:
        settings = {ENV_ENDPOINT: endpoint}
        for key in (ENV_LEVEL, ENV_ACK):
            value = inherited_setting(key)
            if value is not None:
                settings[key] = value
        marker = config[_KEY] = _Route(settings)
        multiprocessing.util.register_after_fork(marker, _after_fork)  # held weakly: gone with the marker
    return before
