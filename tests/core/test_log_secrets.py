"""No secret from the settings or a call reaches any log record, at any level, from any library.

Everything is logged at DEBUG (outbound's, requests', urllib3's, httpx's and httpcore's records) while calls carry
secrets every way a caller passes them — the base URL's password, secret query parameters, Authorization, Cookie
and API-key headers, a cookie the upstream sets, a token in a redirect's Location — through successes, retries,
errors and redirects, on the requests session, the httpx client and the async client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest

import outbound
from outbound import Registry
from tests.conftest import RegistryFactory
from tests.upstream import Upstream

SECRETS = {
    "password": "PASSWORD-in-base-url",
    "token": "TOKEN-in-query",
    "api_key": "APIKEY-in-query",
    "authorization": "BEARER-in-header",
    "cookie": "COOKIE-in-header",
    "x_api_key": "APIKEY-in-header",
    "set_cookie": "SETCOOKIE-from-upstream",
    "location": "TOKEN-in-location",
}


def _registry(make_registry: RegistryFactory, upstream: Upstream, client: str, transport: str = "httpcore") -> Registry:
    base = upstream.url.replace("http://", f"http://svc:{SECRETS['password']}@")
    return make_registry(
        api={
            "base_url": base,
            "client": client,
            "transport": transport,
            "sensitive_headers": ["X-Api-Key"],
            "retry": {"total": 1, "backoff_factor": 0},
            "breaker": {"fail_max": 100},
        },
        refused={
            "base_url": "http://127.0.0.1:9/",
            "client": client,
            "transport": transport,
            "retry": {"total": 1, "backoff_factor": 0},
        },
    )


def _calls(upstream: Upstream) -> list[tuple[str, str]]:
    secret_query = f"token={SECRETS['token']}&api_key={SECRETS['api_key']}&page=2"
    redirect_to = quote(f"/ok?access_token={SECRETS['location']}", safe="")
    return [
        ("api", f"ok?{secret_query}"),  # success
        ("api", f"status/503?{secret_query}"),  # retried, then returned
        ("api", "set-cookie?session=" + SECRETS["set_cookie"]),  # the upstream sets a cookie
        ("api", f"redirect?to={redirect_to}&{secret_query}"),  # a redirect whose Location has a token
        ("refused", f"ok?{secret_query}"),  # connect error, retried, raised
    ]


HEADERS = {
    "Authorization": f"Bearer {SECRETS['authorization']}",
    "Cookie": f"sid={SECRETS['cookie']}",
    "X-Api-Key": SECRETS["x_api_key"],
}


def _assert_no_secret(records: list[logging.LogRecord]) -> None:
    assert len(records) > 10, "the scenario must produce the libraries' DEBUG records to be a test"
    for record in records:
        text = record.getMessage() + repr(record.__dict__)
        leaked = [name for name, secret in SECRETS.items() if secret in text]
        assert not leaked, f"{record.name} {record.levelname} leaked {leaked}: {record.getMessage()}"


def _run(send: Callable[[str, str], Any], calls: list[tuple[str, str]]) -> None:
    for service, path in calls:
        with contextlib.suppress(outbound.CallError):
            send(service, path)


@pytest.mark.parametrize("client", ["requests", "httpx"])
def test_sync_clients_log_no_secret(
    upstream: Upstream, make_registry: RegistryFactory, client: str, caplog: pytest.LogCaptureFixture
) -> None:
    registry = _registry(make_registry, upstream, client)

    def send(service: str, path: str) -> Any:
        if client == "requests":
            return registry.session(service).get(path, headers=HEADERS)
        return registry.client(service).get(path, headers=HEADERS, follow_redirects=True)

    with caplog.at_level(logging.DEBUG):
        _run(send, _calls(upstream))
    _assert_no_secret(caplog.records)
    assert {"httpx" if client == "httpx" else "urllib3.connectionpool", "outbound.call"} <= {
        r.name for r in caplog.records
    }


def test_the_async_client_logs_no_secret(
    upstream: Upstream, make_registry: RegistryFactory, caplog: pytest.LogCaptureFixture, async_transport: str
) -> None:
    registry = _registry(make_registry, upstream, "httpx", async_transport)

    async def scenario() -> None:
        for service, path in _calls(upstream):
            with contextlib.suppress(outbound.CallError):
                await registry.async_client(service).get(path, headers=HEADERS, follow_redirects=True)

    with caplog.at_level(logging.DEBUG):
        asyncio.run(scenario())
    _assert_no_secret(caplog.records)


def test_errors_and_health_carry_no_secret(upstream: Upstream, make_registry: RegistryFactory) -> None:
    registry = _registry(make_registry, upstream, "requests")
    with pytest.raises(outbound.ConnectError) as raised:
        registry.session("refused").get(f"ok?token={SECRETS['token']}", headers=HEADERS)
    text = str(raised.value) + repr(registry.health())
    assert not [name for name, secret in SECRETS.items() if secret in text]


SECRET_QUERY = "?api_key=APIKEY-in-args&token=TOKEN-in-args&q=PRIVATE-in-args"


@pytest.mark.parametrize("client", ["requests", "httpx"])
def test_no_secret_in_an_errors_args_or_repr(make_registry: RegistryFactory, client: str) -> None:
    # str(error) was always redacted; requests keeps urllib3's MaxRetryError, which holds the whole path and query, in
    # args[0], and repr(error) -- what a log or an error tracker shows -- printed it.
    with socket.socket() as closed:  # a port nobody listens on: the connection is refused
        closed.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{closed.getsockname()[1]}/"
    registry = make_registry(api={"base_url": refused, "client": client, "retry": {"total": 0}})
    get = registry.session("api").get if client == "requests" else registry.client("api").get
    with pytest.raises(outbound.ConnectError) as caught:
        get("invoices" + SECRET_QUERY)
    error = caught.value
    for text in (str(error), repr(error), repr(error.args)):
        assert "in-args" not in text, text
    if client == "requests":
        import urllib3

        # The native shape is kept: what plain requests puts there, with the query gone.
        [reason] = error.args
        assert isinstance(reason, urllib3.exceptions.MaxRetryError)
        assert reason.url.endswith("/invoices")
        assert isinstance(reason.reason, urllib3.exceptions.NewConnectionError)
