"""``Outbound(app, error_answers=True)``: outbound refusals and upstream failures answered as a gateway would, in
sync and async views; every other exception still reaches Flask's own handling."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from flask import Flask, request

import outbound
from outbound_flask import Outbound
from tests.conftest import open_breaker
from tests.flask.conftest import AppFactory
from tests.upstream import Upstream

FAIL_FAST = {"retry": {"total": 0}, "breaker": {"fail_max": 1, "reset_timeout": 60}}


def closed_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/"


def app_with_views(make_app: AppFactory, upstream: Upstream, extension: Outbound, tls_url: str) -> Flask:
    app = make_app(
        {
            "services": {
                "billing": {"base_url": upstream.url, **FAIL_FAST},
                "search": {"base_url": upstream.url, "client": "httpx", **FAIL_FAST},
                "refused": {"base_url": closed_url(), **FAIL_FAST},
                "slow": {"base_url": upstream.url, "client": "httpx", "timeout": {"read": 0.1}, **FAIL_FAST},
                "tls": {"base_url": tls_url, **FAIL_FAST},
            }
        },
        extension=extension,
    )

    @app.get("/sync/<name>")
    def sync_view(name: str) -> dict[str, Any]:
        return {"status": extension.session(name).get(request.args.get("path", "ok")).status_code}

    @app.get("/async/<name>")
    async def async_view(name: str) -> dict[str, Any]:
        response = await extension.async_client(name).get(request.args.get("path", "ok"))
        return {"status": response.status_code}

    return app


@pytest.fixture
def app(make_app: AppFactory, upstream: Upstream, untrusted_tls: str) -> Flask:
    return app_with_views(make_app, upstream, Outbound(error_answers=True), untrusted_tls)


@pytest.mark.parametrize(("url", "name"), [("/sync/billing", "billing"), ("/async/search", "search")])
def test_an_open_breaker_is_answered_503_with_retry_after(app: Flask, url: str, name: str) -> None:
    with app.app_context():
        open_breaker(app.extensions["outbound"], name)
    response = app.test_client().get(url)
    assert response.status_code == 503
    assert response.content_type == "application/json"
    assert response.headers["Retry-After"] == "60"
    assert response.json == {"error": "upstream_unavailable", "service": name, "reason": "circuit_open", "retry_in": 60}


def test_failures_are_answered_502_and_timeouts_504(app: Flask) -> None:
    client = app.test_client()
    refused = client.get("/sync/refused")
    assert (refused.status_code, refused.json) == (
        502,
        {"error": "upstream_error", "service": "refused", "reason": "connect_error", "retry_in": None},
    )
    assert "Retry-After" not in refused.headers
    timed_out = client.get("/async/slow", query_string={"path": "slow?delay=0.5"})
    assert (timed_out.status_code, timed_out.json["reason"]) == (504, "read_timeout")


def test_other_errors_reach_flasks_own_handling(app: Flask) -> None:
    # TESTING propagates unhandled exceptions: the certificate failure was not turned into an answer.
    with pytest.raises(outbound.CallError) as caught:
        app.test_client().get("/sync/tls")
    assert outbound.error_answer(caught.value) is None


def test_an_apps_own_handler_for_an_outbound_class_wins(app: Flask) -> None:
    @app.errorhandler(outbound.CircuitOpenError)
    def busy(error: outbound.CircuitOpenError) -> tuple[str, int]:
        return "come back later", 429

    with app.app_context():
        open_breaker(app.extensions["outbound"], "billing")
    response = app.test_client().get("/sync/billing")
    assert (response.status_code, response.text) == (429, "come back later")


def test_off_by_default(make_app: AppFactory, upstream: Upstream, untrusted_tls: str) -> None:
    app = app_with_views(make_app, upstream, Outbound(), untrusted_tls)
    with app.app_context():
        open_breaker(app.extensions["outbound"], "billing")
    with pytest.raises(outbound.CircuitOpenError):
        app.test_client().get("/sync/billing")
