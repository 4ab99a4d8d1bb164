"""Testing apps that use outbound: a pytest plugin, and a switch that makes retries wait for nothing.

The plugin is registered through the ``pytest11`` entry point and does nothing unless a test asks for it:

- the ``outbound_registry`` fixture gives the active registry — the Flask app's (from your ``app`` fixture, or the
  app context a test pushed) or Django's (``outbound_django``) — with every breaker closed and every count, retry
  budget and stat cleared, so a test that mocked a string of 503s does not leave a breaker open for the next one;
- the ini option ``outbound_reset = true`` does that reset before every test, without naming the fixture;
- the ``outbound_no_waits`` fixture (or ``outbound_no_waits = true`` for every test) makes every retry backoff and
  ``Retry-After`` wait zero, so a test of the retry path takes milliseconds; the decisions (what is retried, how
  often, the budget) are unchanged. Outside pytest, ``set_waits(False)`` / ``no_waits()`` do the same;
- the ``outbound_no_cache`` fixture (or ``outbound_no_cache = true``) turns every service's ``cache`` off: every
  call goes to the upstream (or the mock) and nothing is stored; a ``fallback`` still answers. Outside pytest,
  ``set_cache(False)`` / ``no_cache()``. ``registry.reset(name)`` also empties a service's cache.

A test that needs another registry than the one found here overrides ``outbound_registry`` in its conftest.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from . import _retry
from ._cache import _switch
from ._registry import Registry

__all__ = ["active_registry", "no_cache", "no_waits", "set_cache", "set_waits"]


def set_waits(enabled: bool) -> None:
    """Turn retry waits (backoff and ``Retry-After``) on or off for the whole process (``stamina.set_testing``)."""
    _retry.WAITS.enabled = enabled


@contextlib.contextmanager
def no_waits() -> Iterator[None]:
    """Retries wait for nothing inside the ``with`` block; the previous setting comes back after it."""
    before = _retry.WAITS.enabled
    _retry.WAITS.enabled = False
    try:
        yield
    finally:
        _retry.WAITS.enabled = before


def set_cache(enabled: bool) -> None:
    """Turn every service's cache on or off for the whole process (off: calls go upstream, nothing is stored)."""
    _switch.CACHING.enabled = enabled


@contextlib.contextmanager
def no_cache() -> Iterator[None]:
    """No service's cache answers or stores inside the ``with`` block; the previous setting comes back after it."""
    before = _switch.CACHING.enabled
    _switch.CACHING.enabled = False
    try:
        yield
    finally:
        _switch.CACHING.enabled = before


def active_registry(request: pytest.FixtureRequest | None = None) -> Registry | None:
    """The registry the app under test uses: the Flask app's (its ``app`` fixture, or the pushed app context), else
    Django's when ``outbound_django`` is installed; ``None`` when there is none."""
    registry = _flask_registry(request)
    return registry if registry is not None else _django_registry()


def _flask_registry(request: pytest.FixtureRequest | None) -> Registry | None:
    try:
        import flask
    except ImportError:
        return None
    app: Any = None
    if request is not None and "app" in request.fixturenames:
        app = request.getfixturevalue("app")  # pytest-flask's fixture, and the usual name of a factory fixture
    elif flask.has_app_context():
        app = flask.current_app
    registry = getattr(app, "extensions", {}).get("outbound") if app is not None else None
    return registry if isinstance(registry, Registry) else None


def _django_registry() -> Registry | None:
    try:
        from django.apps import apps
        from django.conf import settings
    except ImportError:
        return None
    if not settings.configured or not apps.is_installed("outbound_django"):
        return None
    from outbound_django.conf import get_registry

    return get_registry()


# -- the pytest plugin ---------------------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("outbound_reset", "reset the active outbound registry before every test", type="bool", default=False)
    parser.addini("outbound_no_waits", "make every outbound retry wait zero seconds", type="bool", default=False)
    parser.addini("outbound_no_cache", "turn every outbound service's cache off", type="bool", default=False)


@pytest.fixture
def outbound_registry(request: pytest.FixtureRequest) -> Registry:
    """The active outbound registry (Flask's or Django's), reset: breakers closed, counts, budget and stats cleared."""
    registry = active_registry(request)
    if registry is None:
        raise pytest.UsageError(
            "outbound_registry found no outbound registry: define an `app` fixture returning your Flask app "
            "(after init_app), push an app context, configure Django with 'outbound_django' installed, or override "
            "the outbound_registry fixture in your conftest.py"
        )
    registry.reset()
    return registry


@pytest.fixture
def outbound_no_waits() -> Iterator[None]:
    """Retries wait for nothing during the test."""
    with no_waits():
        yield


@pytest.fixture
def outbound_no_cache() -> Iterator[None]:
    """Every service's cache is off during the test."""
    with no_cache():
        yield


@pytest.fixture(autouse=True)
def _outbound_ini_options(request: pytest.FixtureRequest) -> Iterator[None]:
    # Inert unless the ini options ask for something: one config lookup per test.
    if request.config.getini("outbound_reset"):
        registry = active_registry(request)
        if registry is not None:
            registry.reset()
    with contextlib.ExitStack() as stack:
        if request.config.getini("outbound_no_waits"):
            stack.enter_context(no_waits())
        if request.config.getini("outbound_no_cache"):
            stack.enter_context(no_cache())
        yield
