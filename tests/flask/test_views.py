"""``/health/outbound``: status codes, detail levels, the authorize callable, methods and caching headers."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from flask import request, url_for

from outbound_flask import Outbound
from tests.conftest import open_breaker
from tests.flask.conftest import AppFactory, services
from tests.upstream import Upstream

TOKEN = "s3cret-health-token"
# fail_max 1 and no retries: one 503 from the upstream opens the breaker, and it stays open for the test.
TRIPS_ON_FIRST_FAILURE = {"retry": None, "breaker": {"fail_max": 1, "reset_timeout": 60}}


def config(upstream: Upstream, health: dict[str, Any] | None = None, **overrides: dict[str, Any]) -> dict[str, Any]:
    mapping = services(upstream, **overrides)
    if health is not None:
        mapping["health"] = health
    return mapping


def test_ok_is_200_with_no_store(make_app: AppFactory, upstream: Upstream) -> None:
    app = make_app(config(upstream, billing={}))
    response = app.test_client().get("/health/outbound")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}
    assert response.headers["Cache-Control"] == "no-store"
    assert response.mimetype == "application/json"


def test_a_down_non_critical_service_is_degraded_and_still_200(make_app: AppFactory, upstream: Upstream) -> None:
    app = make_app(config(upstream, {"show_details": "always"}, billing=TRIPS_ON_FIRST_FAILURE, search={}))
    open_breaker(app.extensions["outbound"], "billing")

    response = app.test_client().get("/health/outbound")

    assert response.status_code == 200
    assert response.json["status"] == "degraded"
    assert response.json["services"]["billing"]["status"] == "down"
    assert response.json["services"]["search"]["status"] == "ok"


def test_a_down_critical_service_is_503(make_app: AppFactory, upstream: Upstream) -> None:
    app = make_app(config(upstream, billing={**TRIPS_ON_FIRST_FAILURE, "critical": True}))
    open_breaker(app.extensions["outbound"], "billing")

    response = app.test_client().get("/health/outbound")

    assert response.status_code == 503
    assert response.json == {"status": "down"}
    assert response.headers["Cache-Control"] == "no-store"


def test_head_has_the_status_and_headers_without_a_body(make_app: AppFactory, upstream: Upstream) -> None:
    app = make_app(config(upstream, billing={**TRIPS_ON_FIRST_FAILURE, "critical": True}))
    client = app.test_client()
    ok = client.head("/health/outbound")
    assert (ok.status_code, ok.data, ok.headers["Cache-Control"]) == (200, b"", "no-store")

    open_breaker(app.extensions["outbound"], "billing")
    down = client.head("/health/outbound")
    assert (down.status_code, down.data) == (503, b"")


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
def test_only_get_and_head_are_allowed(make_app: AppFactory, method: str) -> None:
    app = make_app({"services": {}})
    response = app.test_client().open("/health/outbound", method=method)
    assert response.status_code == 405
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD"}


@pytest.mark.parametrize(
    ("authorization", "detailed"),
    [
        (None, False),
        (f"Bearer {TOKEN}", True),
        (f"bearer {TOKEN}", True),
        ("Bearer wrong-token", False),
        (f"Bearer {TOKEN}x", False),
        (f"Basic {TOKEN}", False),
        ("Bearer ", False),
    ],
    ids=["anonymous", "token", "lowercase-scheme", "wrong-token", "token-prefix", "other-scheme", "empty"],
)
def test_when_authorized_shows_details_only_for_the_token(
    make_app: AppFactory, upstream: Upstream, authorization: str | None, detailed: bool
) -> None:
    app = make_app(config(upstream, {"token": TOKEN}, billing={}))
    headers = {"Authorization": authorization} if authorization is not None else {}

    response = app.test_client().get("/health/outbound", headers=headers)

    assert response.status_code == 200
    if detailed:
        assert response.json["status"] == "ok"
        assert set(response.json["services"]) == {"billing"}
        assert response.json["services"]["billing"]["breaker"]["state"] == "closed"
    else:
        assert response.json == {"status": "ok"}


def test_when_authorized_without_a_token_configured_shows_nobody_details(
    make_app: AppFactory, upstream: Upstream
) -> None:
    app = make_app(config(upstream, billing={}))
    response = app.test_client().get("/health/outbound", headers={"Authorization": "Bearer "})
    assert response.json == {"status": "ok"}


@pytest.mark.parametrize("authorization", [None, f"Bearer {TOKEN}"])
def test_never_shows_details_even_with_the_token(
    make_app: AppFactory, upstream: Upstream, authorization: str | None
) -> None:
    app = make_app(config(upstream, {"show_details": "never", "token": TOKEN}, billing={}))
    headers = {"Authorization": authorization} if authorization else {}
    assert app.test_client().get("/health/outbound", headers=headers).json == {"status": "ok"}


def test_always_shows_details_to_everyone(make_app: AppFactory, upstream: Upstream) -> None:
    app = make_app(config(upstream, {"show_details": "always"}, billing={}))
    body = app.test_client().get("/health/outbound").json
    assert body["services"]["billing"]["base_url"] == upstream.url


def test_the_app_authorize_callable_grants_details(make_app: AppFactory, upstream: Upstream) -> None:
    def is_admin() -> bool:
        # Runs inside the request: an app would ask Flask-Login's current_user here.
        return request.headers.get("X-Role") == "admin"

    app = make_app(config(upstream, {"token": TOKEN}, billing={}), extension=Outbound(authorize=is_admin))
    client = app.test_client()

    assert "services" in client.get("/health/outbound", headers={"X-Role": "admin"}).json
    assert client.get("/health/outbound", headers={"X-Role": "guest"}).json == {"status": "ok"}
    # The bearer token still works alongside the callable.
    assert "services" in client.get("/health/outbound", headers={"Authorization": f"Bearer {TOKEN}"}).json


@pytest.mark.parametrize("show_details", ["never", "always"])
def test_authorize_is_not_consulted_outside_when_authorized(
    make_app: AppFactory, upstream: Upstream, show_details: str
) -> None:
    calls: list[str] = []

    def authorize() -> bool:
        calls.append(request.path)
        return True

    app = make_app(
        config(upstream, {"show_details": show_details}, billing={}), extension=Outbound(authorize=authorize)
    )
    body = app.test_client().get("/health/outbound").json
    assert ("services" in body) is (show_details == "always")
    assert calls == []


def test_a_failing_authorize_callable_gives_the_summary_not_a_500(
    make_app: AppFactory, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> bool:
        raise LookupError("user store unavailable")

    app = make_app(config(upstream, billing={}), extension=Outbound(authorize=broken))
    with caplog.at_level(logging.ERROR, logger="outbound_flask"):
        response = app.test_client().get("/health/outbound")

    assert (response.status_code, response.json) == (200, {"status": "ok"})
    assert "'authorize' callable raised" in caplog.text
    assert "user store unavailable" in caplog.text  # logged with its traceback, never sent to the client


def test_each_app_uses_its_own_authorize_callable(make_app: AppFactory, upstream: Upstream) -> None:
    open_app = make_app(config(upstream, billing={}), extension=Outbound(authorize=lambda: True))
    closed_app = make_app(config(upstream, billing={}), extension=Outbound(authorize=lambda: False))
    assert "services" in open_app.test_client().get("/health/outbound").json
    assert closed_app.test_client().get("/health/outbound").json == {"status": "ok"}


def test_endpoint_name_for_url_for(make_app: AppFactory) -> None:
    app = make_app({"services": {}})
    with app.test_request_context():
        assert url_for("outbound.health") == "/health/outbound"
