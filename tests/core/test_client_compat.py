"""Managed clients behave like the real ones where requests' and httpx's own test suites expect them to.

Proxies (setting, per call, environment) on both backends, the ``with`` idiom on a shared client, trio, pickling,
exception ``args``, per-call timeouts longer than the deadline, ``ssl.SSLContext`` and test transports, streamed
bodies' errors, and an async client used from the wrong event loop.
"""

from __future__ import annotations

import asyncio
import pickle
import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
import trio
import trustme
import urllib3

import outbound
from outbound import Registry
from tests.conftest import RegistryFactory
from tests.core.conftest import native
from tests.proxy import ForwardingProxy
from tests.upstream import Upstream

# -- proxies -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("client", ["requests", "httpx"])
def test_every_call_through_a_configured_proxy_works(
    upstream: Upstream, proxy: ForwardingProxy, make_registry: RegistryFactory, client: str
) -> None:
    registry = make_registry(api={"base_url": upstream.url, "client": client, "proxy": proxy.url})
    get = registry.session("api").get if client == "requests" else registry.client("api").get
    assert [get("ok").status_code for _ in range(3)] == [200, 200, 200]
    assert proxy.requests == 3
    assert registry["api"].policy.stats.requests == 3


def test_per_call_proxies_work_on_every_call(
    upstream: Upstream, proxy: ForwardingProxy, make_registry: RegistryFactory
) -> None:
    registry = make_registry(api={"base_url": upstream.url})
    session = registry.session("api")
    assert [session.get("ok", proxies={"http": proxy.url}).status_code for _ in range(3)] == [200, 200, 200]
    assert proxy.requests == 3


@pytest.mark.parametrize("client", ["requests", "httpx"])
def test_environment_proxies_are_honoured_by_both_backends_and_managed(
    upstream: Upstream,
    proxy: ForwardingProxy,
    make_registry: RegistryFactory,
    monkeypatch: pytest.MonkeyPatch,
    client: str,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    registry = make_registry(
        api={"base_url": upstream.url, "client": client, "retry": {"total": 1, "backoff_factor": 0}}
    )
    get = registry.session("api").get if client == "requests" else registry.client("api").get
    assert get("ok").status_code == 200
    assert get("status/503").status_code == 503
    assert proxy.requests == 3  # through the proxy, retry included: the policy runs around the proxied transport
    assert registry["api"].policy.stats.retries == 1


@pytest.mark.parametrize("client", ["requests", "httpx"])
def test_trust_env_false_ignores_environment_proxies(
    upstream: Upstream,
    proxy: ForwardingProxy,
    make_registry: RegistryFactory,
    monkeypatch: pytest.MonkeyPatch,
    client: str,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    registry = make_registry(api={"base_url": upstream.url, "client": client, "trust_env": False})
    get = registry.session("api").get if client == "requests" else registry.client("api").get
    assert get("ok").status_code == 200
    assert proxy.requests == 0


# -- lifecycle idioms ----------------------------------------------------------------------------------------------


def test_the_with_idiom_never_closes_a_shared_client(
    upstream: Upstream, make_registry: RegistryFactory, async_transport: str, library: str
) -> None:
    registry = make_registry(
        r={"base_url": upstream.url}, h={"base_url": upstream.url, "client": library, "transport": async_transport}
    )
    with registry.session("r") as session:
        session.get("ok")
    with registry.client("h") as client:
        client.get("ok")
    with registry.client("h") as client:  # httpx alone refuses to open a client twice
        client.get("ok")

    async def scenario() -> int:
        async with registry.async_client("h") as client:
            await client.get("ok")
        return (await registry.async_client("h").get("ok")).status_code

    assert asyncio.run(scenario()) == 200
    registry.session("r").close()
    registry.client("h").close()
    assert registry.session("r").get("ok").status_code == 200
    assert registry.client("h").get("ok").status_code == 200
    registry.close()  # the registry's close is the real one
    with pytest.raises(outbound.RegistryClosedError):
        registry.session("r").get("ok")


def test_a_managed_session_refuses_to_be_pickled_and_says_why(make_registry: RegistryFactory) -> None:
    registry = make_registry(r={"base_url": "http://127.0.0.1:1/"})
    with pytest.raises(TypeError, match="cannot be pickled: it belongs to this process's outbound registry"):
        pickle.dumps(registry.session("r"))


# -- trio ---------------------------------------------------------------------------------------------------------


# httpcore only: aiohttp runs on asyncio alone, and under trio async_client() refuses it (test_aiohttp.py).
@pytest.mark.parametrize("async_transport", ["httpcore"])
def test_async_clients_work_under_trio_with_retries_and_are_closed_with_the_run(
    upstream: Upstream, make_registry: RegistryFactory, async_transport: str, library: str
) -> None:
    registry = make_registry(
        h={
            "base_url": upstream.url,
            "client": library,
            "transport": async_transport,
            "retry": {"total": 1, "backoff_factor": 0.01},
        }
    )

    async def scenario() -> tuple[int, int]:
        client = registry.async_client("h")
        assert registry.async_client("h") is client  # one per trio run, as one per asyncio loop
        ok = (await client.get("ok")).status_code
        retried = (await client.get("status/503")).status_code  # backoff sleeps through anyio, not asyncio
        return ok, retried

    assert trio.run(scenario) == (200, 503)
    assert registry["h"].policy.stats.retries == 1
    assert registry["h"]._async_clients == {}  # closed when the run finalized its async generators
    assert upstream.wait_for(lambda: upstream.live_connections == 0)


# -- errors ---------------------------------------------------------------------------------------------------------


def test_exception_args_keep_the_native_shape(upstream: Upstream, make_registry: RegistryFactory, library: str) -> None:
    httpx = native(library)
    registry = make_registry(
        r={"base_url": upstream.url, "timeout": {"read": 0.2}, "retry": None},
        h={"base_url": upstream.url, "client": library, "timeout": {"read": 0.2}, "retry": None},
    )
    with pytest.raises(requests.ReadTimeout) as plain_requests:
        requests.get(f"{upstream.url}slow?delay=0.5", timeout=(1, 0.2))
    with pytest.raises(requests.ReadTimeout) as managed:
        registry.session("r").get("slow?delay=0.5")
    assert isinstance(plain_requests.value.args[0], urllib3.exceptions.ReadTimeoutError)
    assert isinstance(managed.value.args[0], urllib3.exceptions.ReadTimeoutError)
    assert "r: read timeout on GET" in str(managed.value)  # the message stays outbound's, redacted
    with pytest.raises(httpx.ReadTimeout) as managed_httpx:
        registry.client("h").get("slow?delay=0.5")
    assert managed_httpx.value.args == ("timed out",)
    assert managed_httpx.value.request.url.path == "/slow"


@pytest.mark.parametrize("path", ["reset-mid-body", "truncated", "trickle-body?interval=0.4&bytes=5"])
def test_a_streamed_body_that_breaks_raises_outbounds_error_on_requests_too(
    upstream: Upstream, make_registry: RegistryFactory, path: str
) -> None:
    registry = make_registry(r={"base_url": upstream.url, "timeout": {"read": 0.2, "total": None}})
    response = registry.session("r").get(path, stream=True)
    with pytest.raises(outbound.TransportFailure) as broken:
        b"".join(response.iter_content(64))
    assert isinstance(broken.value, requests.RequestException)  # ChunkedEncodingError / ConnectionError too
    assert broken.value.service == "r"
    assert "?" not in str(broken.value)


def test_an_async_client_used_from_another_event_loop_says_what_to_do(
    upstream: Upstream, make_registry: RegistryFactory, async_transport: str, library: str
) -> None:
    registry = make_registry(h={"base_url": upstream.url, "client": library, "transport": async_transport})

    async def keep() -> Any:
        return registry.async_client("h")

    kept = asyncio.run(keep())

    async def reuse() -> Any:
        return await kept.get("ok")

    with pytest.raises(outbound.EventLoopMismatchError, match=r"call async_client\('h'\) inside the coroutine"):
        asyncio.run(reuse())


# -- timeouts -------------------------------------------------------------------------------------------------------


def test_a_per_call_timeout_longer_than_the_deadline_is_honoured(
    upstream: Upstream, make_registry: RegistryFactory, library: str
) -> None:
    registry = make_registry(
        r={"base_url": upstream.url, "timeout": {"read": 0.3, "total": 0.4}},
        h={"base_url": upstream.url, "client": library, "timeout": {"read": 0.3, "total": 0.4}},
    )
    assert registry.session("r").get("slow?delay=0.8", timeout=2).status_code == 200
    assert registry.client("h").get("slow?delay=0.8", timeout=2).status_code == 200
    assert registry.client("h").get("slow?delay=0.8", timeout=None).status_code == 200  # no limit: no deadline
    with pytest.raises(outbound.ReadTimeoutError):
        registry.session("r").get("slow?delay=0.8")  # the service's own limits still apply otherwise


# -- TLS and transports ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate_authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_upstream(certificate_authority: trustme.CA) -> Iterator[Upstream]:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate_authority.issue_cert("127.0.0.1").configure_cert(server_context)
    with Upstream(tls=server_context) as server:
        yield server


@pytest.mark.parametrize("client", ["requests", "httpx"])
def test_an_ssl_context_replaces_verify_and_cert(
    tls_upstream: Upstream, certificate_authority: trustme.CA, make_registry: RegistryFactory, client: str
) -> None:
    trusting = ssl.create_default_context()
    certificate_authority.configure_trust(trusting)
    registry = make_registry(
        trusted={"base_url": tls_upstream.url, "client": client, "ssl_context": trusting},
        factory={"base_url": tls_upstream.url, "client": client, "ssl_context": lambda: trusting},
        default={"base_url": tls_upstream.url, "client": client, "retry": {"total": 0}},
    )
    for name in ("trusted", "factory"):
        get = registry.session(name).get if client == "requests" else registry.client(name).get
        assert get("ok").status_code == 200
    get = registry.session("default").get if client == "requests" else registry.client("default").get
    with pytest.raises(outbound.CallError):  # the system's CAs do not know this one: refused, not retried
        get("ok")
    assert registry["default"].policy.breaker.failures == 0


@pytest.mark.parametrize("client", ["requests", "httpx"])
def test_a_services_ca_bundle_wins_over_the_environments(
    tls_upstream: Upstream,
    certificate_authority: trustme.CA,
    make_registry: RegistryFactory,
    client: str,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace a session's own `verify` (psf/requests#3829); a
    # service's `verify` is a setting for that upstream, as its `proxy` is, and wins (per-call verify= still wins).
    bundle = tmp_path / "ca.pem"
    certificate_authority.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi_or_system_bundle())
    monkeypatch.setenv("CURL_CA_BUNDLE", certifi_or_system_bundle())
    registry = make_registry(api={"base_url": tls_upstream.url, "client": client, "verify": str(bundle)})
    get = registry.session("api").get if client == "requests" else registry.client("api").get
    assert get("ok").status_code == 200
    if client == "requests":
        with pytest.raises(outbound.CallError):  # a per-call verify= still wins over the service's
            registry.session("api").get("ok", verify=certifi_or_system_bundle())


def certifi_or_system_bundle() -> str:
    """A CA bundle that does not know the test authority."""
    import certifi

    return str(certifi.where())


def test_an_ssl_context_and_verify_together_are_a_settings_mistake() -> None:
    with pytest.raises(outbound.ConfigError, match="replaces verify and cert"):
        Registry.from_mapping(
            {
                "services": {
                    "s": {"base_url": "https://h/", "ssl_context": ssl.create_default_context(), "verify": False}
                }
            }
        )


def test_a_test_transport_runs_inside_the_policy(
    make_registry: RegistryFactory, async_transport: str, library: str
) -> None:
    httpx = native(library)
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(503 if len(seen) == 1 else 200, text="mocked")

    service = {"base_url": "http://api.test/v1/", "client": library, "transport": async_transport}
    registry = Registry.from_mapping(
        {"services": {"h": {**service, "retry": {"backoff_factor": 0}}}},
        transports={"h": httpx.MockTransport(handler)},
    )
    with registry:
        assert registry.client("h").get("items").text == "mocked"  # retried past the mocked 503

        async def scenario() -> int:
            return (await registry.async_client("h").get("items")).status_code

        assert asyncio.run(scenario()) == 200
    assert seen == ["/v1/items", "/v1/items", "/v1/items"]
    assert registry["h"].policy.stats.retries == 1


def test_a_transport_for_a_service_that_cannot_use_it_is_refused() -> None:
    mapping = {"services": {"r": {"base_url": "http://h/"}}}
    with pytest.raises(outbound.ServiceLookupError, match="only be given to a configured 'httpx' or 'httpx2' service"):
        Registry.from_mapping(mapping, transports={"r": httpx.MockTransport(lambda request: httpx.Response(200))})


@pytest.mark.parametrize("client", ["requests", "httpx"])
def test_the_services_proxy_wins_over_environment_proxies(
    upstream: Upstream,
    proxy: ForwardingProxy,
    make_registry: RegistryFactory,
    monkeypatch: pytest.MonkeyPatch,
    client: str,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    registry = make_registry(api={"base_url": upstream.url, "client": client, "proxy": proxy.url})
    get = registry.session("api").get if client == "requests" else registry.client("api").get
    assert get("ok").status_code == 200
    assert proxy.requests == 1


@pytest.mark.parametrize("client", ["requests", "httpx"])
def test_no_proxy_hosts_go_direct_on_both_backends(
    upstream: Upstream, make_registry: RegistryFactory, monkeypatch: pytest.MonkeyPatch, client: str
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    registry = make_registry(api={"base_url": upstream.url, "client": client, "retry": None})
    get = registry.session("api").get if client == "requests" else registry.client("api").get
    assert get("ok").status_code == 200


def test_a_test_transport_is_used_even_with_environment_proxies(monkeypatch: pytest.MonkeyPatch, library: str) -> None:
    httpx = native(library)
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    registry = Registry.from_mapping(
        {"services": {"h": {"base_url": "http://api.test/", "client": library, "probe": "health"}}},
        transports={"h": httpx.MockTransport(lambda request: httpx.Response(204))},
    )
    with registry:
        assert registry.client("h").get("x").status_code == 204
        [probe] = registry.probe()  # a probe goes through the same transport, not the network
        assert probe.status == 204


@pytest.mark.parametrize("client", ["requests", "httpx"])
def test_credentials_from_base_url_go_to_its_origin_only(
    upstream: Upstream, make_registry: RegistryFactory, client: str
) -> None:
    with Upstream() as elsewhere:
        registry = make_registry(api={"base_url": upstream.url.replace("http://", "http://svc:pw@"), "client": client})
        get = registry.session("api").get if client == "requests" else registry.client("api").get
        get("echo")
        get(f"{elsewhere.url}echo")  # an absolute URL to another host, through the same client
        [own] = upstream.recent("/echo")
        [other] = elsewhere.recent("/echo")
    assert own["headers"]["authorization"].startswith("Basic ")
    assert "authorization" not in other["headers"]
