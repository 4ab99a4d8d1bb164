"""/health/outbound: status codes, detail levels, methods, caching, and the same answers under ASGI."""

from __future__ import annotations

import asyncio
import json
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


def test_invalid_settings_are_a_json_503_without_the_settings(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cret-value-of-the-settings"
    settings.OUTBOUND = {
        "services": {"billing": {"base_url": f"ftp://user:{secret}@billing/", "headers": {"X-Api-Key": secret}}},
        "health": {"token": HEALTH_TOKEN},
    }
    client = Client(raise_request_exception=False)
    for headers in ({}, BROWSER, bearer(HEALTH_TOKEN)):
        response = client.get(URL, headers=headers)
        assert response.status_code == 503
        assert response["Content-Type"] == "application/json"
        assert "no-store" in response["Cache-Control"]
        assert response.json() == {"status": "down", "error": "invalid_settings"}
        assert secret not in response.content.decode()
    assert "django.request" not in caplog.text  # an answer to a balancer's poll, not a server error to page about


# -- the status page (Accept: text/html) -------------------------------------------------------------------------------

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def varies_on(response: HttpResponse) -> set[str]:
    return {value.strip().lower() for value in response.get("Vary", "").split(",")}


def test_a_browser_gets_the_status_page(healthy: Registry) -> None:
    response = Client().get(URL, headers={**BROWSER, **bearer(HEALTH_TOKEN)})
    assert response.status_code == 200
    assert response["Content-Type"] == "text/html; charset=utf-8"
    assert "no-store" in response["Cache-Control"]
    assert "accept" in varies_on(response)
    assert "script-src 'sha256-" in response["Content-Security-Policy"]
    page = response.content.decode()
    assert page.startswith("<!doctype html>")
    assert '<h2 id="svc-1">billing</h2>' in page
    assert '<h2 id="svc-2">search</h2>' in page


def test_the_page_without_authorization_shows_the_overall_status_only(healthy: Registry) -> None:
    page = Client().get(URL, headers=BROWSER).content.decode()
    assert "Outbound status: ok" in page
    assert "<article" not in page
    assert "billing" not in page


def test_the_page_without_authorization_says_how_to_get_the_details(healthy: Registry, settings: Settings) -> None:
    page = Client().get(URL, headers=BROWSER).content.decode()
    assert (
        "To see them, sign in to this site as a staff user, or send the header "
        "<code>Authorization: Bearer &lt;token&gt;</code>"
    ) in page
    assert HEALTH_TOKEN not in page
    settings.MIDDLEWARE = []  # no AuthenticationMiddleware: no login can authorize, the token still can
    page = Client().get(URL, headers=BROWSER).content.decode()
    assert "staff" not in page
    assert "To see them, send the header <code>Authorization: Bearer &lt;token&gt;</code>" in page


@pytest.mark.django_db
def test_a_staff_user_sees_the_details_on_the_page(healthy: Registry) -> None:
    client = Client()
    client.force_login(User.objects.create_user("admin", is_staff=True))
    assert '<h2 id="svc-1">billing</h2>' in client.get(URL, headers=BROWSER).content.decode()


def test_the_page_is_503_when_a_critical_service_is_down(healthy: Registry, upstream: Upstream) -> None:
    open_breaker(healthy, "billing")
    response = Client().get(URL, headers={**BROWSER, **bearer(HEALTH_TOKEN)})
    assert response.status_code == 503
    assert response["Content-Type"] == "text/html; charset=utf-8"
    assert '<span class="badge bad breaker"><span class="dot" aria-hidden="true"></span>open</span>' in (
        response.content.decode()
    )


def test_json_is_unchanged_for_everything_but_a_browser(healthy: Registry) -> None:
    expected = json.dumps(healthy.health(details=False)).encode()
    for headers, query in [
        ({}, ""),
        ({"Accept": "*/*"}, ""),
        ({"Accept": "application/json"}, ""),
        (BROWSER, "?format=json"),
    ]:
        response = Client().get(URL + query, headers=headers)
        assert response["Content-Type"] == "application/json"
        assert response.content == expected
        assert "accept" in varies_on(response)


def test_format_html_forces_the_page(healthy: Registry) -> None:
    response = Client().get(URL + "?format=html")
    assert response["Content-Type"] == "text/html; charset=utf-8"


def test_head_of_the_page(healthy: Registry) -> None:
    response = Client().head(URL, headers=BROWSER)
    assert (response.status_code, response.content) == (200, b"")
    assert response["Content-Type"] == "text/html; charset=utf-8"


def test_the_page_under_asgi(healthy: Registry) -> None:
    async def get() -> HttpResponse:
        response: HttpResponse = await AsyncClient().get(URL, headers={**BROWSER, **bearer(HEALTH_TOKEN)})
        return response

    response = asyncio.run(get())
    assert response.status_code == 200
    assert response["Content-Type"] == "text/html; charset=utf-8"
    assert '<h2 id="svc-2">search</h2>' in response.content.decode()
