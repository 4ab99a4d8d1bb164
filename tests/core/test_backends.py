"""Both sync backends against the real test upstream: joining, timeouts, pools, retries, errors."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
import requests

import outbound
from tests.conftest import RegistryFactory
from tests.core.conftest import Send, native
from tests.upstream import Upstream

FAST = {"backoff_factor": 0, "backoff_jitter": 0}


def test_relative_urls_join_base_url_and_headers_apply(
    upstream: Upstream, make_registry: RegistryFactory, send: Send, kind: str
) -> None:
    registry = make_registry(api={"base_url": upstream.url + "v1", "client": kind, "headers": {"X-Team": "shop"}})
    for path in ("echo", "/echo"):
        echoed = send(registry, "api", "GET", path, params={"q": "1"}).json()
        assert echoed["path"] == "/v1/echo?q=1"
        assert echoed["headers"]["x-team"] == "shop"
    absolute = send(registry, "api", "GET", upstream.url + "echo").json()
    assert absolute["path"] == "/echo"


def test_connect_timeout_fires_and_is_retried_even_for_post(
    blackhole: dict[str, str], make_registry: RegistryFactory, send: Send, kind: str
) -> None:
    registry = make_registry(
        dead={"base_url": blackhole["connect_timeout"], "client": kind, "timeout": {"connect": 0.1}, "retry": FAST}
    )
    with pytest.raises(outbound.ConnectTimeoutError) as caught:
        send(registry, "dead", "POST", "x", json={"order": 1})
    expected = requests.ConnectTimeout if kind == "requests" else native(kind).ConnectTimeout
    assert isinstance(caught.value, expected)
    assert registry["dead"].policy.stats.retries == 2


def test_read_timeout_fires_and_is_retried_only_for_idempotent_methods(
    upstream: Upstream, make_registry: RegistryFactory, send: Send, kind: str
) -> None:
    registry = make_registry(slow={"base_url": upstream.url, "client": kind, "timeout": {"read": 0.1}, "retry": FAST})
    with pytest.raises(outbound.ReadTimeoutError) as caught:
        send(registry, "slow", "GET", "slow", params={"delay": 0.5})
    assert isinstance(caught.value, requests.ReadTimeout if kind == "requests" else native(kind).ReadTimeout)
    assert upstream.hits_by_path["/slow"] == 3
    with pytest.raises(outbound.ReadTimeoutError):
        send(registry, "slow", "POST", "slow", params={"delay": 0.5})
    assert upstream.hits_by_path["/slow"] == 4


def test_write_timeout_fires_on_httpx(blackhole: dict[str, str], make_registry: RegistryFactory, library: str) -> None:
    registry = make_registry(sink={"base_url": blackhole["silent"], "client": library, "timeout": {"write": 0.2}})
    with pytest.raises(outbound.WriteTimeoutError) as caught:
        registry.client("sink").post("upload", content=b"x" * 64_000_000)
    assert isinstance(caught.value, native(library).WriteTimeout)


def test_total_deadline_bounds_the_whole_call_across_retries(
    upstream: Upstream, make_registry: RegistryFactory, send: Send, kind: str
) -> None:
    registry = make_registry(
        slow={"base_url": upstream.url, "client": kind, "timeout": {"read": 5, "total": 0.3}, "retry": {"total": 5}}
    )
    with pytest.raises(outbound.ReadTimeoutError):
        send(registry, "slow", "GET", "slow", params={"delay": 2})
    assert upstream.hits_by_path["/slow"] == 1  # the first attempt used up the deadline: no retry


def test_pool_timeout_when_every_connection_is_busy_is_ours_not_the_upstreams(
    upstream: Upstream, make_registry: RegistryFactory, send: Send, kind: str
) -> None:
    registry = make_registry(
        small={
            "base_url": upstream.url,
            "client": kind,
            "pool": {"max_connections": 1},
            "timeout": {"pool": 0.1},
            "breaker": {"fail_max": 1},
        }
    )
    holder = threading.Thread(target=send, args=(registry, "small", "GET", "slow"), kwargs={"params": {"delay": 0.6}})
    holder.start()
    assert upstream.wait_for(lambda: upstream.hits_by_path["/slow"] == 1)
    health = registry.health()["services"]["small"]
    assert health["pool"]["in_use"] == 1
    with pytest.raises(outbound.PoolTimeoutError) as caught:
        send(registry, "small", "GET", "ok")
    assert isinstance(caught.value, requests.ConnectionError if kind == "requests" else native(kind).PoolTimeout)
    holder.join()
    health = registry.health()["services"]["small"]
    assert health["stats"]["pool_timeouts"] == 1
    assert health["breaker"] == {
        "state": "closed",
        "mode": "consecutive",
        "failures": 0,
        "opened_at": None,
        "retry_in": None,
    }
    assert upstream.hits_by_path["/ok"] == 0


def test_pool_limit_bounds_connections_and_reuses_them(
    upstream: Upstream, make_registry: RegistryFactory, send: Send, kind: str
) -> None:
    registry = make_registry(api={"base_url": upstream.url, "client": kind, "pool": {"max_connections": 4}})
    threads = [
        threading.Thread(target=send, args=(registry, "api", "GET", "slow"), kwargs={"params": {"delay": 0.1}})
        for _ in range(12)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert upstream.hits == 12
    assert upstream.connections_total == 4
    assert registry.health()["services"]["api"]["pool"]["idle"] == 4


def test_statuses_are_retried_per_method_and_the_last_response_returned(
    upstream: Upstream, make_registry: RegistryFactory, send: Send, kind: str
) -> None:
    registry = make_registry(
        api={"base_url": upstream.url, "client": kind, "retry": {"total": 3, **FAST}, "breaker": {"fail_max": 100}}
    )
    assert send(registry, "api", "GET", "status/503").status_code == 503
    assert upstream.hits_by_path["/status/503"] == 4
    assert send(registry, "api", "POST", "status/503").status_code == 503
    assert upstream.hits_by_path["/status/503"] == 5
    assert send(registry, "api", "GET", "fail-then-ok", params={"fails": 2, "key": kind}).status_code == 200
    assert upstream.hits_by_path["/fail-then-ok"] == 3


def test_reset_mid_body_is_a_read_error_retried_for_get_only(
    upstream: Upstream, make_registry: RegistryFactory, send: Send, kind: str
) -> None:
    registry = make_registry(api={"base_url": upstream.url, "client": kind, "retry": FAST})
    with pytest.raises(outbound.ReadError) as caught:
        send(registry, "api", "GET", "reset-mid-body")
    assert isinstance(caught.value, requests.RequestException if kind == "requests" else native(kind).TransportError)
    assert upstream.hits_by_path["/reset-mid-body"] == 3
    with pytest.raises(outbound.ReadError):
        send(registry, "api", "POST", "reset-mid-body")
    assert upstream.hits_by_path["/reset-mid-body"] == 4


def test_retry_after_is_honoured_and_capped(
    upstream: Upstream, make_registry: RegistryFactory, send: Send, kind: str
) -> None:
    registry = make_registry(
        api={"base_url": upstream.url, "client": kind, "retry": {"total": 1, "retry_after_max": 2}, "pause": None}
    )
    started = time.monotonic()
    assert send(registry, "api", "GET", "status/503", params={"retry_after": 1}).status_code == 503
    assert upstream.hits_by_path["/status/503"] == 2
    assert time.monotonic() - started >= 0.95  # it waited as asked (a lower bound: never flaky)
    assert send(registry, "api", "GET", "status/429", params={"retry_after": 60}).status_code == 429
    assert upstream.hits_by_path["/status/429"] == 1  # asked for longer than retry_after_max: answered at once


def test_budget_bounds_amplification_against_an_always_failing_upstream(
    upstream: Upstream, make_registry: RegistryFactory, send: Send, kind: str
) -> None:
    retry = {"total": 3, **FAST, "budget": {"ratio": 0.2, "min_per_second": 0}}
    registry = make_registry(
        budgeted={"base_url": upstream.url, "client": kind, "retry": retry, "breaker": {"fail_max": 10_000}},
        unbudgeted={
            "base_url": upstream.url + "other/",
            "client": kind,
            "retry": {**retry, "budget": None},
            "breaker": {"fail_max": 10_000},
        },
    )
    for _ in range(50):
        send(registry, "budgeted", "GET", "status/503")
        send(registry, "unbudgeted", "GET", "status/503")
    assert upstream.hits_by_path["/status/503"] <= 50 * 1.2
    assert upstream.hits_by_path["/other/status/503"] == 50 * 4


def test_errors_keep_both_identities_and_leak_no_secrets(
    upstream: Upstream, make_registry: RegistryFactory, send: Send, kind: str
) -> None:
    upstream.set_mode("refuse")
    url = upstream.url.replace("http://", "http://admin:hunter2@")
    registry = make_registry(api={"base_url": url, "client": kind, "retry": {"total": 0}})
    with pytest.raises(outbound.ConnectError) as caught:
        send(registry, "api", "GET", "accounts", params={"api_key": "s3cret"})
    error = caught.value
    assert isinstance(error, outbound.OutboundError)
    assert isinstance(error, requests.ConnectionError if kind == "requests" else native(kind).ConnectError)
    assert error.service == "api"
    for secret in ("hunter2", "s3cret", "api_key", "admin"):
        assert secret not in str(error)
    assert "/accounts" in str(error)
    if kind == "requests":
        assert isinstance(error, requests.RequestException)
        assert error.request is not None
    else:
        assert isinstance(error, native(kind).TransportError)
        assert error.request.url.path == "/accounts"
    last_error = registry.health()["services"]["api"]["last_error"]
    assert "s3cret" not in last_error["message"]
    assert "hunter2" not in last_error["message"]


def test_http2_uses_the_h2_transport(make_registry: RegistryFactory, upstream: Upstream, library: str) -> None:
    registry = make_registry(api={"base_url": upstream.url, "client": library, "http2": True})
    # Our upstream speaks HTTP/1.1 only; over plain http httpx negotiates 1.1 even with http2 on.
    assert registry.client("api").get("ok").http_version == "HTTP/1.1"
    assert registry.client("api").outbound_transport.inner._pool._http2 is True


def test_wrong_accessor_and_unknown_names_say_what_to_call(make_registry: RegistryFactory, library: str) -> None:
    registry = make_registry(
        billing={"base_url": "http://127.0.0.1:1/"}, search={"base_url": "http://127.0.0.1:1/", "client": library}
    )
    with pytest.raises(
        outbound.ServiceLookupError, match=rf"uses client '{library}': call client\('search'\) or async_client"
    ):
        registry.session("search")
    with pytest.raises(outbound.ServiceLookupError, match=r"call session\('billing'\)"):
        registry.client("billing")
    with pytest.raises(LookupError, match=r"did you mean 'billing'\? configured services: billing, search"):
        registry.session("biling")
    with pytest.raises(RuntimeError, match="inside a coroutine"):
        registry.async_client("search")
    assert registry.services == ("billing", "search")
    assert registry["billing"].config.client == "requests"


def test_httpx_call_refused_by_an_open_breaker_still_carries_its_request(
    upstream: Upstream, make_registry: RegistryFactory, async_transport: str, library: str
) -> None:
    httpx = native(library)
    # client.get() is refused before httpx builds the request (the cheap path); .request is then built on demand,
    # so code that logs ``exc.request.url`` keeps working.
    registry = make_registry(
        api={
            "base_url": upstream.url,
            "client": library,
            "transport": async_transport,
            "retry": {"total": 0},
            "breaker": {"fail_max": 1},
        }
    )
    registry.client("api").get("status/503")
    hits = upstream.hits
    with pytest.raises(httpx.TransportError) as caught:
        registry.client("api").post("orders", params={"page": "2"}, json={"id": 1}, follow_redirects=True)
    error = caught.value
    assert isinstance(error, outbound.CircuitOpenError)
    assert error.request.method == "POST"
    assert str(error.request.url) == upstream.url + "orders?page=2"
    assert error.request.content == b'{"id":1}'

    async def refused_async() -> httpx.Request:
        with pytest.raises(outbound.CircuitOpenError) as refused:
            await registry.async_client("api").get("items")
        assert isinstance(refused.value, httpx.TransportError)
        return refused.value.request

    assert asyncio.run(refused_async()).url.path == "/items"
    # Requests built by hand and streams are still refused (by the transport's gate).
    with pytest.raises(outbound.CircuitOpenError), registry.client("api").stream("GET", "ok"):
        pass
    assert upstream.hits == hits
