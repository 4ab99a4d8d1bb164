"""Every exit path gives back what a call took; identity survives pickling; shared clients keep no cookies."""

from __future__ import annotations

import asyncio
import pickle
import ssl
import threading
from typing import Any

import httpx
import pytest
import requests
import urllib3

import outbound
from outbound._backends import httpx as httpx_backend
from outbound._backends import requests as requests_backend
from tests.conftest import FakeClock, RegistryFactory
from tests.core.conftest import Send, native
from tests.upstream import Upstream


def half_open_registry(upstream: Upstream, kind: str, clock: FakeClock, **retry: Any) -> outbound.Registry:
    registry = outbound.Registry.from_mapping(
        {
            "services": {
                "api": {
                    "base_url": upstream.url,
                    "client": kind,
                    "breaker": {"fail_max": 1, "reset_timeout": 1},
                    "retry": {"total": 0, **retry},
                }
            }
        },
        clock=clock,
    )
    send = registry.session("api").post if kind == "requests" else registry.client("api").post
    send("status/500")
    clock.now += 1  # the next call is the half-open trial
    return registry


def assert_nothing_held(registry: outbound.Registry, upstream: Upstream, kind: str) -> None:
    policy = registry["api"].policy
    assert policy.stats.in_flight == 0
    get = registry.session("api").get if kind == "requests" else registry.client("api").get
    assert get("ok").status_code == 200  # the trial slot was given back: a new trial is admitted
    assert policy.breaker.state == "closed"


@pytest.mark.parametrize(
    "timeout",
    [urllib3.Timeout(read=5), urllib3.Timeout(total=5), urllib3.Timeout(connect=1, read=2), (1, None), 2.5],
)
def test_every_timeout_form_requests_accepts_works(
    upstream: Upstream, make_registry: RegistryFactory, timeout: Any
) -> None:
    registry = make_registry(api={"base_url": upstream.url})
    assert registry.session("api").get("ok", timeout=timeout).status_code == 200


def test_a_bad_timeout_argument_is_refused_before_the_call_takes_a_trial_slot(upstream: Upstream) -> None:
    clock = FakeClock()
    with half_open_registry(upstream, "requests", clock) as registry:
        with pytest.raises(ValueError, match="timeout must be"):
            registry.session("api").get("ok", timeout="5")
        assert_nothing_held(registry, upstream, "requests")


def test_an_interrupted_backoff_ends_the_call_sync(
    upstream: Upstream, make_registry: RegistryFactory, send: Send, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = make_registry(api={"base_url": upstream.url, "client": kind, "retry": {"total": 2}})

    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    # The backoff waits on the policy's closing event (so close() can cut it short).
    monkeypatch.setattr(registry["api"].policy.closing, "wait", interrupted)
    with pytest.raises(KeyboardInterrupt):
        send(registry, "api", "GET", "status/503")
    monkeypatch.undo()
    assert registry["api"].policy.stats.in_flight == 0
    assert registry["api"].policy.stats.requests == 1


def test_an_interrupted_trial_gives_its_slot_back_sync(
    upstream: Upstream, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    with half_open_registry(upstream, kind, clock) as registry:
        if kind == "requests":
            target: Any = requests.adapters.HTTPAdapter
            name = "send"
        else:
            target, name = native(kind).HTTPTransport, "handle_request"

        def interrupted(*args: Any, **kwargs: Any) -> Any:
            raise KeyboardInterrupt

        monkeypatch.setattr(target, name, interrupted)
        with pytest.raises(KeyboardInterrupt):
            (registry.session("api") if kind == "requests" else registry.client("api")).get("ok")
        monkeypatch.undo()
        assert registry["api"].policy.breaker.state == "half-open"
        assert_nothing_held(registry, upstream, kind)


def test_a_task_cancelled_during_backoff_ends_its_call(
    upstream: Upstream, make_registry: RegistryFactory, async_transport: str, library: str
) -> None:
    registry = make_registry(
        api={"base_url": upstream.url, "client": library, "transport": async_transport, "retry": {"backoff_factor": 5}}
    )

    async def scenario() -> None:
        task = asyncio.create_task(registry.async_client("api").get("status/503"))
        assert await asyncio.to_thread(upstream.wait_for, lambda: upstream.hits == 1)
        await asyncio.sleep(0.05)  # now in the backoff sleep
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert registry["api"].policy.stats.in_flight == 0


def test_fork_reset_frees_trial_slots_held_by_parent_threads(upstream: Upstream) -> None:
    clock = FakeClock()
    with half_open_registry(upstream, "requests", clock) as registry:
        policy = registry["api"].policy
        slow = threading.Thread(target=registry.session("api").get, args=("slow",), kwargs={"params": {"delay": 0.3}})
        slow.start()  # a parent thread holds the only trial slot...
        assert upstream.wait_for(lambda: upstream.hits_by_path["/slow"] == 1)
        policy.reset_after_fork()  # ...and does not exist in the child
        assert policy.stats.in_flight == 0
        assert registry.session("api").get("ok").status_code == 200
        assert policy.breaker.state == "closed"
        slow.join()


@pytest.mark.parametrize(
    ("url", "path"),
    [("echo?next=https://evil.example/x", "/api/echo?next=https://evil.example/x"), ("/v2//echo", "/api/v2//echo")],
)
def test_relative_urls_containing_a_scheme_still_join(
    upstream: Upstream, make_registry: RegistryFactory, send: Send, kind: str, url: str, path: str
) -> None:
    registry = make_registry(api={"base_url": upstream.url + "api/", "client": kind})
    assert send(registry, "api", "GET", url).json()["path"] == path


def test_call_errors_survive_pickling(
    upstream: Upstream, make_registry: RegistryFactory, send: Send, kind: str
) -> None:
    upstream.set_mode("refuse")
    registry = make_registry(api={"base_url": upstream.url, "client": kind, "retry": {"total": 0}})
    with pytest.raises(outbound.ConnectError) as caught:
        send(registry, "api", "GET", "x")
    copy = pickle.loads(pickle.dumps(caught.value))  # noqa: S301 (our own bytes, round-tripped)
    assert isinstance(copy, outbound.ConnectError)
    assert isinstance(copy, requests.ConnectionError if kind == "requests" else native(kind).ConnectError)
    assert (str(copy), copy.service) == (str(caught.value), "api")


def test_circuit_open_errors_survive_pickling_with_retry_in(upstream: Upstream, make_registry: RegistryFactory) -> None:
    registry = make_registry(api={"base_url": upstream.url, "retry": {"total": 0}, "breaker": {"fail_max": 1}})
    registry.session("api").get("status/500")
    with pytest.raises(outbound.CircuitOpenError) as caught:
        registry.session("api").get("ok")
    copy = pickle.loads(pickle.dumps(caught.value))  # noqa: S301 (our own bytes, round-tripped)
    assert isinstance(copy, outbound.CircuitOpenError)
    assert isinstance(copy, requests.ConnectionError)
    assert copy.retry_in == pytest.approx(caught.value.retry_in)


def test_shared_clients_never_store_response_cookies(
    upstream: Upstream, make_registry: RegistryFactory, send: Send, kind: str
) -> None:
    registry = make_registry(api={"base_url": upstream.url, "client": kind})
    send(registry, "api", "GET", "set-cookie", params={"session": "alice-secret"})
    headers = send(registry, "api", "GET", "echo").json()["headers"]
    assert "cookie" not in headers  # another caller's request carries nothing of alice's
    explicit = send(registry, "api", "GET", "echo", headers={"Cookie": "mine=1"}).json()["headers"]
    assert explicit["cookie"] == "mine=1"


def test_socks_proxies_keep_their_pools_and_get_the_pool_timeout(make_registry: RegistryFactory) -> None:
    from urllib3.contrib.socks import SOCKSHTTPConnectionPool

    registry = make_registry(api={"base_url": "http://127.0.0.1:1/", "proxy": "socks5h://127.0.0.1:1080"})
    manager = registry.session("api").adapter.proxy_manager_for("socks5h://127.0.0.1:1080")
    pool_class = manager.pool_classes_by_scheme["http"]
    assert issubclass(pool_class, SOCKSHTTPConnectionPool)
    assert issubclass(pool_class, requests_backend._ManagedPoolMixin)


def test_proxy_setting_reaches_both_clients(
    upstream: Upstream, make_registry: RegistryFactory, send: Send, kind: str
) -> None:
    # The test upstream answers proxy-style requests too: the absolute-form target shows the proxy was used.
    registry = make_registry(api={"base_url": "http://upstream.invalid/v1/", "client": kind, "proxy": upstream.url})
    assert send(registry, "api", "GET", "echo").json()["path"] == "http://upstream.invalid/v1/echo"


def test_tls_settings_reach_both_clients(make_registry: RegistryFactory, library: str) -> None:
    registry = make_registry(
        plain={"base_url": "https://127.0.0.1:1/", "verify": False},
        fast={"base_url": "https://127.0.0.1:1/", "client": library, "verify": False},
    )
    assert registry.session("plain").verify is False
    context = registry.client("fast").outbound_transport.inner._pool._ssl_context
    assert context.verify_mode == ssl.CERT_NONE


def test_tls_failures_are_not_retried_or_counted_by_either_backend() -> None:
    tls = httpx.ConnectError("handshake failed")
    tls.__cause__ = ssl.SSLError("certificate verify failed")
    assert httpx_backend._classify(tls) is outbound._outcome.Kind.OTHER_ERROR
    assert httpx_backend._classify(httpx.ConnectError("refused")) is outbound._outcome.Kind.CONNECT_ERROR
    assert requests_backend._classify(requests.exceptions.SSLError("bad")) is outbound._outcome.Kind.OTHER_ERROR


def test_close_finishes_every_service_and_idle_loops(
    upstream: Upstream, make_registry: RegistryFactory, async_transport: str, library: str
) -> None:
    registry = make_registry(
        a={"base_url": upstream.url, "client": library, "transport": async_transport}, b={"base_url": upstream.url}
    )
    idle = asyncio.new_event_loop()  # owns a client but is not running when the registry closes

    async def use() -> None:
        await registry.async_client("a").get("ok")

    idle.run_until_complete(use())
    registry.session("b").get("ok")

    async def close_inside_another_loop() -> None:
        await registry.aclose()

    asyncio.run(close_inside_another_loop())
    assert upstream.wait_for(lambda: upstream.live_connections == 0)
    idle.close()
