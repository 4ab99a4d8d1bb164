"""``OutboundAppConfig``: builds the registry at startup, rebuilds it on settings changes, closes it at exit."""

from __future__ import annotations

import atexit
import logging
import sys
from types import FrameType
from typing import Any

from django.apps import AppConfig
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import request_finished, request_started, setting_changed

import outbound

from . import conf
from .checks import check_settings

logger = logging.getLogger(__name__)

_atexit_registered = False


class OutboundAppConfig(AppConfig):
    """The ``outbound_django`` app.

    ``ready()`` runs for every management command and twice under ``runserver``'s reloader, so it only parses the
    settings and builds the registry, whose clients open connections on first use: no network I/O.

    Invalid settings stop a server at boot: when a WSGI or ASGI server loads the project (``get_wsgi_application()``
    or ``get_asgi_application()``, as every ``wsgi.py`` / ``asgi.py`` calls them) ``ready()`` raises
    ``ImproperlyConfigured`` naming every mistake, so gunicorn, uvicorn and the like exit instead of serving 500s.
    Everywhere else — management commands, which must reach ``manage.py check``; ``runserver``, whose own system
    checks refuse to serve; pytest-django — the mistake is logged and the accessors raise ``ConfigError`` when used.
    Django runs no system checks under a server, so there the outbound warnings are logged at boot instead.
    """

    name = "outbound_django"
    verbose_name = "outbound"

    def ready(self) -> None:
        global _atexit_registered
        checks.register(check_settings, "outbound")
        setting_changed.connect(_setting_changed, dispatch_uid="outbound_django.setting_changed")
        # Calls made while serving a request are critical by default (outbound.criticality); others sheddable.
        request_started.connect(_request_started, dispatch_uid="outbound_django.criticality_started")
        request_finished.connect(_request_finished, dispatch_uid="outbound_django.criticality_finished")
        if not _atexit_registered:
            atexit.register(conf.close)
            _atexit_registered = True
        serving = _loaded_by_a_server()
        try:
            # Built here, before gunicorn --preload forks, so workers inherit one registry and the core's fork
            # handler gives each its own connections.
            conf.get_registry()
        except outbound.ConfigError as error:
            if serving:
                raise ImproperlyConfigured(
                    f"{error}\n(`manage.py check` explains each mistake in the OUTBOUND setting)"
                ) from error
            # Raising would crash every management command, `check` included, before it could report the mistake.
            logger.warning("%s (run `manage.py check` to list every OUTBOUND mistake)", error)
            return
        if serving:
            for message in check_settings():
                if not message.is_silenced():
                    logger.warning("%s %s (%s)", message.msg, message.hint, message.id)


def _request_started(**kwargs: Any) -> None:
    from outbound._criticality import request_started as started

    started()


def _request_finished(**kwargs: Any) -> None:
    from outbound._criticality import request_finished as finished

    finished()


def _loaded_by_a_server() -> bool:
    """Whether Django is being set up by ``get_wsgi_application()`` or ``get_asgi_application()``: a server is
    loading the project's ``wsgi.py`` / ``asgi.py`` to serve it.

    The call stack says so exactly (the functions' code objects, not names). A management command, runserver's
    reloader or pytest-django call ``django.setup()`` themselves; runserver loads its WSGI handler only after
    setup, when this has long run.
    """
    from django.core.asgi import get_asgi_application
    from django.core.wsgi import get_wsgi_application

    entry_points = {get_wsgi_application.__code__, get_asgi_application.__code__}
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code in entry_points:
            return True
        frame = frame.f_back
    return False


def _setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == conf.SETTING:
        conf.reset()
