"""Fixtures for the Django tests: set ``settings.OUTBOUND`` per test (restored, and its registry closed, after)."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trustme

from outbound import Registry
from outbound_django import get_registry
from tests.upstream import Upstream

if TYPE_CHECKING:  # pytest-django exports the fixture's type only in recent versions
    from pytest_django import Settings

Configure = Callable[..., Registry]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def configure(settings: Settings) -> Configure:
    """Set ``settings.OUTBOUND`` and return the registry the app rebuilt from it.

    ``configure(billing={"base_url": ...}, health={...})``; pytest-django restores the setting after the test, which
    makes the app close this registry.
    """

    def configure(*, health: dict[str, Any] | None = None, **services: Any) -> Registry:
        mapping: dict[str, Any] = {"services": services}
        if health is not None:
            mapping["health"] = health
        settings.OUTBOUND = mapping
        return get_registry()

    return configure


@pytest.fixture
def untrusted_tls() -> Iterator[str]:
    """The URL of an HTTPS upstream whose certificate no client trusts: a call fails with a plain ``CallError``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(context)
    with Upstream(tls=context) as server:
        yield server.url


def service(upstream: Upstream, **overrides: Any) -> dict[str, Any]:
    """A service on the test upstream that fails fast: no retries, and a breaker that opens on the first failure
    and stays open for the whole test."""
    settings: dict[str, Any] = {
        "base_url": upstream.url,
        "retry": {"total": 0},
        "breaker": {"fail_max": 1, "reset_timeout": 60.0},
        "timeout": {"connect": 2.0, "read": 5.0, "total": 10.0},
    }
    settings.update(overrides)
    return settings


def django_admin(settings_module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m django ARGS`` in a fresh process with ``settings_module``, as a user runs ``manage.py``."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": settings_module, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "django", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
