"""The public surface is pinned: a change here is a change users see (and CHANGELOG.md must say so)."""

from __future__ import annotations

import inspect

import pytest

import mplog
from mplog.formatters import JSONFormatter

CONFIG = "config: 'dict[str, Any] | str | os.PathLike[str] | None' = None"
LISTENER_OPTIONS = (
    "*, endpoint: 'str | None' = None, transport: 'str | None' = None, route_parent: 'bool' = True, "
    "export_env: 'bool' = True, supervise: 'bool' = True, ack: 'bool | None' = None"
)


def test_the_package_exports_exactly_these_names_sorted():
    assert mplog.__all__ == [
        "ConfigError",
        "FrameError",
        "Listener",
        "ListenerError",
        "ListenerStats",
        "MplogError",
        "MplogHandler",
        "TransportError",
        "WorkerOptions",
        "__version__",
        "ledger",
        "setup_worker",
        "start_listener",
    ]
    assert mplog.__all__ == sorted(mplog.__all__)  # STYLE.md: a sorted __all__
    for name in mplog.__all__:
        assert hasattr(mplog, name), name


@pytest.mark.parametrize(
    ("target", "signature"),
    [
        (mplog.start_listener, f"({CONFIG}, {LISTENER_OPTIONS}) -> 'Listener'"),
        (mplog.setup_worker, "(endpoint: 'str | None' = None, **options: 'Any') -> 'MplogHandler'"),
        (mplog.ledger, "(snapshot: 'dict[str, Any]', logged: 'int') -> 'Balance'"),
        (mplog.Listener.__init__, f"(self, {CONFIG}, {LISTENER_OPTIONS}) -> 'None'"),
        (mplog.Listener.start, "(self) -> 'Listener'"),
        (mplog.Listener.stats, "(self, timeout: 'float' = 10.0) -> 'ListenerStats'"),  # a dict subclass
        (mplog.Listener.stop, "(self, timeout: 'float' = 10.0) -> 'ListenerStats'"),
        (mplog.Listener.__enter__, "(self) -> 'Listener'"),
        (
            mplog.Listener.__exit__,
            "(self, exc_type: 'type[BaseException] | None', exc: 'BaseException | None', "
            "tb: 'TracebackType | None') -> 'None'",
        ),
        (mplog.MplogHandler.__init__, "(self, endpoint: 'str', options: 'WorkerOptions | None' = None) -> 'None'"),
        (
            JSONFormatter.__init__,
            "(self, fields: 'list[str] | None' = None, static: 'dict[str, Any] | None' = None, "
            "ensure_ascii: 'bool' = False, sort_keys: 'bool' = False) -> 'None'",
        ),
    ],
    ids=lambda value: getattr(value, "__qualname__", "signature"),
)
def test_public_signatures_are_pinned(target, signature):
    assert str(inspect.signature(target)) == signature


def test_a_listener_handle_has_its_documented_members():
    public = {name for name in dir(mplog.Listener) if not name.startswith("_")}
    assert {"start", "stats", "stop", "running"} <= public
    handle = mplog.Listener(None)
    assert (handle.endpoint, handle.pid) == ("", 0)  # filled in by start()
    assert handle.stop() == {}  # stop() before start() is harmless


def test_every_error_derives_from_mplog_error_and_a_builtin_users_already_catch():
    assert issubclass(mplog.ConfigError, (mplog.MplogError, ValueError))
    assert issubclass(mplog.FrameError, ValueError)
    assert issubclass(mplog.TransportError, OSError)
    assert issubclass(mplog.ListenerError, RuntimeError)
    for error in (mplog.ConfigError, mplog.FrameError, mplog.TransportError, mplog.ListenerError):
        assert issubclass(error, mplog.MplogError)


def test_the_package_is_typed():
    from importlib.resources import files

    assert files("mplog").joinpath("py.typed").is_file()


def test_the_celery_integration_exposes_install():
    pytest.importorskip("celery")
    from mplog.integrations import celery as integration

    assert integration.__all__ == ["TaskFilter", "install"]
    assert str(inspect.signature(integration.install)) == (
        "(app: 'Celery', endpoint: 'str | None' = None, *, redirect_stdout: 'bool | None' = None, "
        "**worker_options: 'Any') -> 'None'"
    )
