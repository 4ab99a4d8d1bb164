"""OutboundHealthCheck in django-health-check's own view: down fails it, degraded does not."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
from django.test import AsyncClient, Client

from outbound import Registry
from tests.conftest import open_breaker
from tests.django.conftest import Configure, service
from tests.upstream import Upstream

if TYPE_CHECKING:  # pytest-django exports the fixture's type only in recent versions
    from django.http import HttpResponse
    from pytest_django import Settings


def check(fmt: str = "json", path: str = "/ht/") -> HttpResponse:
    """django-health-check's HealthCheckView.as_view(checks=[OutboundHealthCheck]), as tests/django/urls.py has it."""
    response: HttpResponse = Client().get(path, {"format": fmt})
    return response


@pytest.fixture
def registry(configure: Configure, upstream: Upstream) -> Registry:
    return configure(billing=service(upstream, critical=True), search=service(upstream))


def test_passes_when_ok(registry: Registry) -> None:
    response = check()
    assert response.status_code == 200
    assert list(response.json().values()) == ["OK"]


def test_passes_when_degraded(registry: Registry, upstream: Upstream) -> None:
    open_breaker(registry, "search")
    assert registry.health()["status"] == "degraded"
    assert check().status_code == 200


def test_fails_when_a_critical_service_is_down(
    registry: Registry, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    open_breaker(registry, "billing")
    response = check()
    assert response.status_code == 500
    assert list(response.json().values()) == ["Unavailable: critical upstream down: billing"]
    assert "Health check" in caplog.text  # logged as a check failure, not as an unexpected exception
    assert "Unexpected exception" not in caplog.text


def test_fails_with_a_generic_message_on_bad_settings(settings: Settings) -> None:
    settings.OUTBOUND = {"services": {"billing": {"base_url": "http://user:secret@billing/?key=secret"}}}
    response = check("text")
    assert response.status_code == 500
    text = response.content.decode()
    assert "invalid OUTBOUND settings" in text
    assert "secret" not in text


def test_listed_by_dotted_path(registry: Registry, upstream: Upstream) -> None:
    assert check(path="/ht-by-path/").status_code == 200
    open_breaker(registry, "billing")
    assert check(path="/ht-by-path/").status_code == 500


def test_under_asgi(registry: Registry, upstream: Upstream) -> None:
    async def status() -> int:
        response = await AsyncClient().get("/ht/", {"format": "json"})
        return response.status_code

    assert asyncio.run(status()) == 200
    open_breaker(registry, "billing")
    assert asyncio.run(status()) == 500
