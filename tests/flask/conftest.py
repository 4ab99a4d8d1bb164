"""Fixtures for the Flask tests: apps with the extension set up, whose registries are always closed."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme
from flask import Flask

from outbound import Registry
from outbound_flask import Outbound
from tests.upstream import Upstream

AppFactory = Callable[..., Flask]


@pytest.fixture
def make_app() -> Iterator[AppFactory]:
    """Build a Flask app with ``OUTBOUND = config`` and ``init_app`` called; every registry is closed after the test.

    ``make_app({"services": {...}}, extension=Outbound(authorize=...))``
    """
    apps: list[Flask] = []

    def make(config: dict[str, Any] | None = None, *, extension: Outbound | None = None) -> Flask:
        app = Flask(__name__)
        app.config["TESTING"] = True
        if config is not None:
            app.config["OUTBOUND"] = config
        apps.append(app)
        (extension or Outbound()).init_app(app)
        return app

    yield make
    for app in apps:
        registry = app.extensions.get("outbound")
        if isinstance(registry, Registry):
            registry.close()


def services(upstream: Upstream, **overrides: dict[str, Any]) -> dict[str, Any]:
    """An ``OUTBOUND`` mapping whose services all point at the test upstream: ``services(upstream, billing={...})``."""
    return {"services": {name: {"base_url": upstream.url, **settings} for name, settings in overrides.items()}}


@pytest.fixture
def untrusted_tls() -> Iterator[str]:
    """The URL of an HTTPS upstream whose certificate no client trusts: a call fails with a plain ``CallError``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(context)
    with Upstream(tls=context) as server:
        yield server.url
