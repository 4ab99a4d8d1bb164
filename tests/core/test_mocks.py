"""responses and respx still intercept calls made through managed clients, and the policy still runs.

respx mocks httpx2 too, through httpcore2 (``respx.mock(using="httpcore2")``, the mocker pytest-httpx2 registers;
its ``httpx2_mock`` fixture is the same router): the routes and their responses are respx's, as for httpx.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
import requests
import responses
import respx

import outbound
from tests.conftest import RegistryFactory


def respx_mock(library: str, **options: object) -> respx.MockRouter:
    """respx's router for ``library``'s clients: it patches httpcore, or httpcore2 for httpx2."""
    if library == "httpx2":
        import pytest_httpx2  # noqa: F401 (registers respx's mocker for httpcore2)
    return respx.mock(using="httpcore2" if library == "httpx2" else "httpcore", **options)  # type: ignore[arg-type]


@responses.activate
def test_responses_intercepts_the_session(make_registry: RegistryFactory) -> None:
    registry = make_registry(billing={"base_url": "https://billing.internal/api/", "breaker": {"fail_max": 2}})
    responses.add(responses.GET, "https://billing.internal/api/invoices/42", json={"id": 42})
    responses.add(responses.POST, "https://billing.internal/api/charge", status=503)
    assert registry.session("billing").get("invoices/42").json() == {"id": 42}
    assert registry.session("billing").post("charge").status_code == 503
    assert registry.session("billing").post("charge").status_code == 503
    assert registry["billing"].policy.breaker.state == "open"  # the policy saw the mocked responses


def test_respx_intercepts_sync_and_async_clients(
    make_registry: RegistryFactory, async_transport: str, library: str
) -> None:
    registry = make_registry(
        search={"base_url": "https://search.internal/", "client": library, "transport": async_transport}
    )
    with respx_mock(library, assert_all_called=True) as router:
        route = router.get("https://search.internal/q").mock(
            side_effect=[httpx.Response(503), httpx.Response(200, json={"hits": 3})]
        )
        assert registry.client("search").get("q").json() == {"hits": 3}  # 503 retried, then served
        assert route.call_count == 2

        async def call() -> int:
            return (await registry.async_client("search").get("q")).status_code

        route.side_effect = None
        route.return_value = httpx.Response(200)
        assert asyncio.run(call()) == 200
    assert registry["search"].policy.stats.retries == 1


@responses.activate
def test_a_request_responses_refuses_is_the_mocks_verdict_not_the_upstreams(make_registry: RegistryFactory) -> None:
    registry = make_registry(billing={"base_url": "https://billing.internal/api/", "breaker": {"fail_max": 1}})
    responses.add(responses.GET, "https://billing.internal/api/invoices/42", json={"id": 42})
    with pytest.raises(outbound.CallError) as refused:
        registry.session("billing").get("invoices/43", params={"token": "s3cret"})
    assert isinstance(refused.value, requests.ConnectionError)  # what responses raises, as before
    assert "doesn't match any registered mock" in str(refused.value)  # its explanation, in outbound's message
    assert "s3cret" not in str(refused.value)
    assert len(responses.calls) == 1  # not retried
    assert registry["billing"].policy.breaker.state == "closed"  # not counted against the upstream
    assert registry["billing"].policy.breaker.failures == 0


def test_a_request_respx_refuses_is_the_mocks_verdict_not_the_upstreams(
    make_registry: RegistryFactory, async_transport: str, library: str
) -> None:
    registry = make_registry(
        search={
            "base_url": "https://search.internal/",
            "client": library,
            "transport": async_transport,
            "breaker": {"fail_max": 1},
        }
    )
    with respx_mock(library, assert_all_called=False) as router:
        router.get("https://search.internal/q").mock(return_value=httpx.Response(200))
        with pytest.raises(outbound.CallError) as refused:
            registry.client("search").get("other")

        async def call() -> None:
            await registry.async_client("search").get("other")

        with pytest.raises(outbound.CallError):
            asyncio.run(call())
        assert len(router.calls) == 0  # not retried: the refusal never reached a route
    assert "not mocked" in str(refused.value)
    assert registry["search"].policy.breaker.failures == 0
    assert registry["search"].policy.stats.retries == 0
