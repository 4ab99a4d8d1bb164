"""``/health/outbound``: status codes, detail levels, the authorize callable, methods and caching headers."""

from __future__ import annotations

import json
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


# -- the status page (Accept: text/html) -------------------------------------------------------------------------------

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def test_a_browser_gets_the_status_page(make_app: AppFactory, upstream: Upstream) -> None:
    app = make_app(config(upstream, {"token": TOKEN}, billing={"critical": True}, search={"client": "httpx"}))
    response = app.test_client().get("/health/outbound", headers={**BROWSER, "Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Vary"] == "Accept"
    assert "script-src 'sha256-" in response.headers["Content-Security-Policy"]
    page = response.get_data(as_text=True)
    assert page.startswith("<!doctype html>")
    assert '<h2 id="svc-1">billing</h2> <span class="critical">Critical</span>' in page
    assert '<h2 id="svc-2">search</h2>' in page


def test_the_page_without_authorization_shows_the_overall_status_only(make_app: AppFactory, upstream: Upstream) -> None:
    app = make_app(config(upstream, {"token": TOKEN}, billing={}))
    page = app.test_client().get("/health/outbound", headers=BROWSER).get_data(as_text=True)
    assert "Outbound status: ok" in page
    assert "<article" not in page
    assert "billing" not in page


def test_the_page_without_authorization_says_how_to_get_the_details(make_app: AppFactory, upstream: Upstream) -> None:
    token_only = make_app(config(upstream, {"token": TOKEN}, billing={}))
    page = token_only.test_client().get("/health/outbound", headers=BROWSER).get_data(as_text=True)
    assert "To see them, send the header <code>Authorization: Bearer &lt;token&gt;</code>" in page
    assert "sign in" not in page  # no authorize callable: signing in would not help
    assert TOKEN not in page
    checked = make_app(config(upstream, billing={}), extension=Outbound(authorize=lambda: False))
    page = checked.test_client().get("/health/outbound", headers=BROWSER).get_data(as_text=True)
    assert "To see them, sign in as this app requires (its authorize check decides).</p>" in page
    assert "Bearer" not in page  # no health.token: the header would not help


def test_the_authorize_callable_grants_the_details_on_the_page(make_app: AppFactory, upstream: Upstream) -> None:
    app = make_app(config(upstream, billing={}), extension=Outbound(authorize=lambda: True))
    page = app.test_client().get("/health/outbound", headers=BROWSER).get_data(as_text=True)
    assert '<h2 id="svc-1">billing</h2>' in page


def test_the_page_is_503_when_a_critical_service_is_down(make_app: AppFactory, upstream: Upstream) -> None:
    app = make_app(config(upstream, {"show_details": "always"}, billing={**TRIPS_ON_FIRST_FAILURE, "critical": True}))
    open_breaker(app.extensions["outbound"], "billing")
    response = app.test_client().get("/health/outbound", headers=BROWSER)
    assert response.status_code == 503
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    page = response.get_data(as_text=True)
    assert '<span class="badge bad breaker"><span class="dot" aria-hidden="true"></span>open</span>' in page
    assert 'class="countdown" data-retry-in="' in page


@pytest.mark.parametrize(
    ("headers", "query"),
    [({}, ""), ({"Accept": "*/*"}, ""), ({"Accept": "application/json"}, ""), (BROWSER, "?format=json")],
    ids=["no-accept", "anything", "json", "browser-format-json"],
)
def test_json_is_unchanged_for_everything_but_a_browser(
    make_app: AppFactory, upstream: Upstream, headers: dict[str, str], query: str
) -> None:
    app = make_app(config(upstream, {"show_details": "always"}, billing={}))
    response = app.test_client().get("/health/outbound" + query, headers=headers)
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Vary"] == "Accept"
    report = json.loads(response.data)
    assert report == app.extensions["outbound"].health()
    assert response.data == json.dumps(report).encode()  # the core's bytes: key order kept, no sorting


def test_format_html_forces_the_page(make_app: AppFactory, upstream: Upstream) -> None:
    app = make_app(config(upstream, billing={}))
    response = app.test_client().get("/health/outbound?format=html")
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"


def test_head_of_the_page(make_app: AppFactory, upstream: Upstream) -> None:
    app = make_app(config(upstream, billing={}))
    response = app.test_client().head("/health/outbound", headers=BROWSER)
    assert (response.status_code, response.data) == (200, b"")
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
