"""``UpstreamErrorMiddleware``: outbound refusals and upstream failures answered as a gateway would, in sync and async
views, under Django's WSGI and ASGI handlers (the test clients). This module is the tests' URLconf."""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Any

import pytest
from django.http import HttpRequest, JsonResponse
from django.test import AsyncClient, Client
from django.urls import path

import outbound
from outbound_django import async_client, get_registry, session
from tests.conftest import open_breaker
from tests.django.conftest import Configure, service
from tests.upstream import Upstream

if TYPE_CHECKING:
    from pytest_django import Settings

MIDDLEWARE = "outbound_django.middleware.UpstreamErrorMiddleware"


def sync_view(request: HttpRequest, name: str) -> JsonResponse:
    response = session(name).get(request.GET.get("path", "ok"))
    return JsonResponse({"status": response.status_code})


async def async_view(request: HttpRequest, name: str) -> JsonResponse:
    response = await async_client(name).get(request.GET.get("path", "ok"))
    return JsonResponse({"status": response.status_code})


urlpatterns = [path("sync/<name>", sync_view), path("async/<name>", async_view)]


@pytest.fixture
def app(settings: Settings, configure: Configure, upstream: Upstream, untrusted_tls: str) -> None:
    settings.ROOT_URLCONF = __name__
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, MIDDLEWARE]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    configure(
        billing=service(upstream),
        search=service(upstream, client="httpx"),
        refused=service(upstream, base_url=closed),
        slow=service(upstream, client="httpx", timeout={"read": 0.1}),
        tls=service(upstream, base_url=untrusted_tls),
    )


def over_asgi(url: str) -> Any:
    return asyncio.run(AsyncClient().get(url))


@pytest.mark.usefixtures("app")
@pytest.mark.parametrize(
    ("url", "name"),
    [
        pytest.param("/sync/billing", "billing", id="sync-view-wsgi"),
        pytest.param("/async/search", "search", id="async-view-wsgi"),
        pytest.param("asgi:/sync/billing", "billing", id="sync-view-asgi"),
        pytest.param("asgi:/async/search", "search", id="async-view-asgi"),
    ],
)
def test_an_open_breaker_is_answered_503_with_retry_after(url: str, name: str) -> None:
    open_breaker(get_registry(), name)
    response = over_asgi(url.removeprefix("asgi:")) if url.startswith("asgi:") else Client().get(url)
    assert response.status_code == 503
    assert response["Content-Type"] == "application/json"
    assert response["Retry-After"] == "60"  # the breaker's reset_timeout, rounded up
    assert response.json() == {
        "error": "upstream_unavailable",
        "service": name,
        "reason": "circuit_open",
        "retry_in": 60,
    }


@pytest.mark.usefixtures("app")
def test_failures_are_answered_502_and_timeouts_504() -> None:
    refused = Client().get("/sync/refused")
    assert (refused.status_code, refused.json()["reason"]) == (502, "connect_error")
    assert not refused.has_header("Retry-After")
    timed_out = over_asgi("/async/slow?path=slow%3Fdelay%3D0.5")
    assert (timed_out.status_code, timed_out.json()) == (
        504,
        {"error": "upstream_timeout", "service": "slow", "reason": "read_timeout", "retry_in": None},
    )


@pytest.mark.usefixtures("app")
def test_other_errors_reach_djangos_own_handling() -> None:
    # A certificate nobody trusts says nothing about the upstream's availability: the view's exception stays one
    # (the test client raises it; a server answers its 500 page and logs the traceback).
    with pytest.raises(outbound.CallError) as caught:
        Client().get("/sync/tls")
    assert outbound.error_answer(caught.value) is None


def test_without_the_middleware_the_error_escapes(settings: Settings, configure: Configure, upstream: Upstream) -> None:
    settings.ROOT_URLCONF = __name__
    configure(billing=service(upstream))
    open_breaker(get_registry(), "billing")
    with pytest.raises(outbound.CircuitOpenError):
        Client().get("/sync/billing")
