"""``OutboundAppConfig``: builds the registry at startup, rebuilds it on settings changes, closes it at exit."""

from __future__ import annotations

import atexit
import logging
from typing import Any

from django.apps import AppConfig
from django.core import checks
from django.core.signals import setting_changed

import outbound

from . import conf
from .checks import check_settings

logger = logging.getLogger(__name__)

_atexit_registered = False


class OutboundAppConfig(AppConfig):
    """The ``outbound_django`` app.

    ``ready()`` runs for every management command and twice under ``runserver``'s reloader, so it only parses the
    settings and builds the registry, whose clients open connections on first use: no network I/O.
    """

    name = "outbound_django"
    verbose_name = "outbound"

    def ready(self) -> None:
        global _atexit_registered
        checks.register(check_settings, "outbound")
        setting_changed.connect(_setting_changed, dispatch_uid="outbound_django.setting_changed")
        if not _atexit_registered:
            atexit.register(conf.close)
            _atexit_registered = True
        try:
            # Built here, before gunicorn --preload forks, so workers inherit one registry and the core's fork
            # handler gives each its own connections.
            conf.get_registry()
        except outbound.ConfigError as error:
            # Raising would crash every management command, `check` included, before it could report the mistake.
            # The accessors raise this error when used; `manage.py check` lists every mistake.
            logger.warning("%s (run `manage.py check` to list every OUTBOUND mistake)", error)


def _setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == conf.SETTING:
        conf.reset()
