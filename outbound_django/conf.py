"""The process's ``Registry``, built from ``settings.OUTBOUND`` and rebuilt when that setting changes.

Settings are read when the registry is built, not at import, so ``override_settings(OUTBOUND=...)`` and
pytest-django's ``settings`` fixture take effect: ``OutboundAppConfig`` calls ``reset()`` on ``setting_changed``.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from django.conf import settings

import outbound

SETTING = "OUTBOUND"

_lock = threading.Lock()
_registry: outbound.Registry | None = None


def outbound_settings() -> Any:
    """``settings.OUTBOUND`` as written, or an empty mapping when it is not set (the checks warn about that)."""
    return getattr(settings, SETTING, {})


def get_registry() -> outbound.Registry:
    """The process's registry, built from ``settings.OUTBOUND`` on first use (no network I/O).

    Raises:
        outbound.ConfigError: the settings are invalid (``manage.py check`` lists every mistake).
    """
    global _registry
    registry = _registry
    if registry is not None:
        return registry
    with _lock:
        if _registry is None:
            # An invalid mapping raises here on every call, so each caller gets a fresh, accurate error.
            _registry = outbound.Registry.from_mapping(outbound_settings())
        return _registry


def reset() -> None:
    """Close the current registry and forget it: the next ``get_registry()`` reads the settings again."""
    global _registry
    with _lock:
        registry, _registry = _registry, None
    if registry is not None:
        registry.close()


def close() -> None:
    """Close the current registry but keep it, so later use raises ``RegistryClosedError`` instead of rebuilding.

    Registered with ``atexit``: neither WSGI nor Django's ASGI handler has a shutdown hook.
    """
    with _lock:
        registry = _registry
    if registry is not None:
        registry.close()


def _new_lock_in_child() -> None:
    # A thread of the parent may have held the lock at fork() (gunicorn --preload forks after ready()); the core
    # resets its own state in the child, this resets ours.
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_in_child)
