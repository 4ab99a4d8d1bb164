"""/health/outbound: status codes, detail levels, methods, caching, and the same answers under ASGI."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest
from django.contrib.auth.models import User
from django.http import HttpResponse
from django.test import AsyncClient, Client
from django.urls import reverse

from outbound import Registry
from tests.conftest import open_breaker
from tests.django.conftest import Configure, service
from tests.django.settings import HEALTH_TOKEN
from tests.upstream import Upstream

if TYPE_CHECKING:  # pytest-django exports the fixture's type only in recent versions
    from pytest_django import Settings

URL = "/health/outbound"


@pytest.fixture
def healthy(configure: Configure, upstream: Upstream) -> Registry:
    return configure(
        billing=service(upstream, critical=True),
        search=service(upstream, client="httpx"),
        health={"token": HEALTH_TOKEN},
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_url_name() -> None:
    assert reverse("outbound-health") == URL


def test_healthy_report(healthy: Registry) -> None:
    response = Client().get(URL, headers=bearer(HEALTH_TOKEN))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["services"]) == {"billing", "search"}
    assert body["services"]["billing"]["critical"] is True


def test_no_store(healthy: Registry) -> None:
    response = Client().get(URL)
    assert "no-store" in response["Cache-Control"]


def test_degraded_when_a_non_critical_service_is_down(healthy: Registry, upstream: Upstream) -> None:
    open_breaker(healthy, "search")
    response = Client().get(URL, headers=bearer(HEALTH_TOKEN))
    assert response.status_code == 200  # an unhealthy dependency must not pull this instance out of rotation
    body = response.json()
    assert body["status"] == "degraded"
    assert body["services"]["search"]["status"] == "down"


def test_503_when_a_critical_service_is_down(healthy: Registry, upstream: Upstream) -> None:
    open_breaker(healthy, "billing")
    response = Client().get(URL)
    assert response.status_code == 503
    assert response.json() == {"status": "down"}
    assert "no-store" in response["Cache-Control"]


@pytest.mark.parametrize(
    ("headers", "details"),
    [
        pytest.param({}, False, id="anonymous"),
        pytest.param(bearer(HEALTH_TOKEN), True, id="token"),
        pytest.param({"Authorization": f"bearer {HEALTH_TOKEN}"}, True, id="token-scheme-case"),
        pytest.param(bearer("wrong-token-0123456789abcdef0123"), False, id="wrong-token"),
        pytest.param(bearer(HEALTH_TOKEN[:-1]), False, id="token-prefix"),
        pytest.param({"Authorization": f"Basic {HEALTH_TOKEN}"}, False, id="other-scheme"),
        pytest.param({"Authorization": "Bearer "}, False, id="empty-token"),
    ],
)
def test_when_authorized_by_token(healthy: Registry, headers: dict[str, str], details: bool) -> None:
    body = Client().get(URL, headers=headers).json()
    assert ("services" in body) is details
    assert body["status"] == "ok"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("user_flags", "details"),
    [
        pytest.param({"is_staff": True}, True, id="staff"),
        pytest.param({"is_staff": False}, False, id="not-staff"),
        pytest.param({"is_staff": True, "is_active": False}, False, id="inactive-staff"),
    ],
)
def test_when_authorized_by_user(healthy: Registry, user_flags: dict[str, Any], details: bool) -> None:
    user = User.objects.create_user("someone", **user_flags)
    client = Client()
    client.force_login(user)
    body = client.get(URL).json()
    assert ("services" in body) is details


def test_when_authorized_without_a_token_configured(configure: Configure, upstream: Upstream) -> None:
    configure(billing=service(upstream))
    assert Client().get(URL, headers=bearer("anything")).json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("show_details", "headers", "details"),
    [
        pytest.param("never", bearer(HEALTH_TOKEN), False, id="never-even-with-token"),
        pytest.param("always", {}, True, id="always-even-anonymous"),
    ],
)
def test_show_details_levels(
    configure: Configure, upstream: Upstream, show_details: str, headers: dict[str, str], details: bool
) -> None:
    configure(billing=service(upstream), health={"show_details": show_details, "token": HEALTH_TOKEN})
    body = Client().get(URL, headers=headers).json()
    assert ("services" in body) is details


def test_details_never_leak_secrets(configure: Configure, upstream: Upstream) -> None:
    base = upstream.url.replace("http://", "http://user:hunter2@")
    configure(billing=service(upstream, base_url=base), health={"show_details": "always"})
    text = Client().get(URL).content.decode()
    assert "hunter2" not in text
    assert "user:" not in text


def test_head(healthy: Registry, upstream: Upstream) -> None:
    response = Client().head(URL)
    assert response.status_code == 200
    assert response.content == b""
    open_breaker(healthy, "billing")
    assert Client().head(URL).status_code == 503


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete", "options"])
def test_only_get_and_head(healthy: Registry, method: str) -> None:
    response: HttpResponse = getattr(Client(), method)(URL)
    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD"
    assert "no-store" in response["Cache-Control"]


def test_under_asgi(healthy: Registry, upstream: Upstream) -> None:
    async def requests() -> list[tuple[int, Any, str]]:
        client = AsyncClient()
        answers = []
        for headers in ({}, bearer(HEALTH_TOKEN)):
            response = await client.get(URL, headers=headers)
            answers.append((response.status_code, response.json(), response["Cache-Control"]))
        post = await client.post(URL)
        head = await client.head(URL)
        answers.append((post.status_code, None, post["Allow"]))
        answers.append((head.status_code, head.content, ""))
        return answers

    anonymous, detailed, post, head = asyncio.run(requests())
    assert anonymous[:2] == (200, {"status": "ok"})
    assert "no-store" in anonymous[2]
    assert detailed[0] == 200
    assert set(detailed[1]["services"]) == {"billing", "search"}
    assert post == (405, None, "GET, HEAD")
    assert head == (200, b"", "")

    open_breaker(healthy, "billing")
    down = asyncio.run(requests())[0]
    assert down[:2] == (503, {"status": "down"})


def test_invalid_settings_are_an_error(settings: Settings) -> None:
    settings.OUTBOUND = {"services": {"billing": {"base_url": "ftp://billing/"}}}
    client = Client(raise_request_exception=False)
    assert client.get(URL).status_code == 500
