"""``transport: "aiohttp"``: the async client is still httpx's, on aiohttp's connections, with the same policy.

The behaviour tests that run the async client run it on both transports (the ``async_transport`` fixture); here are
the checks particular to aiohttp: every failure classified as on httpcore, side by side, against the real upstream;
the pool numbers from aiohttp's connector; the settings that reach its session; proxies; respx; trio.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import httpx
import httpx_aiohttp
import pytest
import respx
import trio
import trustme

import outbound
from outbound import Registry
from outbound._backends import aiohttp as aiohttp_backend
from outbound._backends.httpx import transport_options
from tests.conftest import RegistryFactory
from tests.core.conftest import ASYNC_TRANSPORTS
from tests.proxy import ForwardingProxy
from tests.upstream import Upstream

TIMEOUT = {"connect": 0.5, "read": 0.3, "write": 0.3, "pool": 0.2, "total": 1.0}


@pytest.fixture(scope="module")
def certificate_authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_upstream(certificate_authority: trustme.CA) -> Iterator[Upstream]:
    """An HTTPS upstream whose certificate no system CA trusts."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate_authority.issue_cert("127.0.0.1").configure_cert(server_context)
    with Upstream(tls=server_context) as server:
        yield server


def _inner(registry: Registry, name: str) -> Any:
    return registry.async_client(name).outbound_transport.inner


# -- every failure, classified as on httpcore -----------------------------------------------------------------------

# case: (where, path, the outbound error, httpx's class of it, whether the breaker counts it, a deadline's message)
# `where` is the upstream, a refused port, the blackhole's connect timeout, or the untrusted TLS upstream.
FAULTS: dict[str, tuple[str, str, type[Exception] | None, type[Exception] | None, bool, bool]] = {
    "refused": ("refused", "ok", outbound.ConnectError, httpx.ConnectError, True, False),
    "connect timeout": ("connect_timeout", "ok", outbound.ConnectTimeoutError, httpx.ConnectTimeout, True, False),
    "read timeout": ("upstream", "slow?delay=1", outbound.ReadTimeoutError, httpx.ReadTimeout, True, False),
    "write stalled": ("silent", "upload", outbound.WriteTimeoutError, httpx.WriteTimeout, True, False),
    "write stalled past the deadline": ("silent", "upload", outbound.WriteTimeoutError, httpx.WriteTimeout, True, True),
    "silent, then closed": ("upstream", "hold?seconds=0.1", outbound.ReadError, httpx.RemoteProtocolError, True, False),
    "reset mid-body": ("upstream", "reset-mid-body", outbound.ReadError, httpx.ReadError, True, False),
    "truncated": ("upstream", "truncated", outbound.ReadError, httpx.TransportError, True, False),
    "garbage": ("upstream", "garbage", outbound.ReadError, httpx.RemoteProtocolError, True, False),
    "trickled headers": (
        "upstream",
        "trickle-headers?interval=0.1&count=80",
        outbound.ReadTimeoutError,
        httpx.ReadTimeout,
        True,
        True,
    ),
    "trickled body": (
        "upstream",
        "trickle-body?interval=0.1&bytes=80",
        outbound.ReadTimeoutError,
        httpx.ReadTimeout,
        True,
        True,
    ),
    "pool exhausted": ("upstream", "ok", outbound.PoolTimeoutError, httpx.PoolTimeout, False, False),
    "untrusted certificate": ("tls", "ok", outbound.CallError, httpx.ConnectError, False, False),
    "503": ("upstream", "status/503", None, None, True, False),
}


def _base_url(where: str, request: pytest.FixtureRequest) -> str:
    if where == "upstream":
        return str(request.getfixturevalue("upstream").url)
    if where == "tls":
        return str(request.getfixturevalue("tls_upstream").url)
    if where == "refused":
        return "http://127.0.0.1:9/"  # discard: nothing listens on 127.0.0.1
    return str(request.getfixturevalue("blackhole")[where])  # connect_timeout, or silent: connected, never read


@pytest.mark.parametrize("transport", ASYNC_TRANSPORTS)
@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_failure_is_classified_the_same_on_both_transports(
    request: pytest.FixtureRequest, make_registry: RegistryFactory, fault: str, transport: str
) -> None:
    where, path, error_class, native_class, counted, deadline = FAULTS[fault]
    registry = make_registry(
        api={
            "base_url": _base_url(where, request),
            "client": "httpx",
            "transport": transport,
            "timeout": {**TIMEOUT, "write": 5.0} if fault == "write stalled past the deadline" else TIMEOUT,
            "pool": {"max_connections": 1},
            "retry": {"total": 0},
            "breaker": {"fail_max": 100},
        }
    )

    async def call() -> Any:
        client = registry.async_client("api")
        if fault == "pool exhausted":  # the only connection is busy for longer than timeout.pool
            holder = asyncio.create_task(client.get("slow?delay=0.6", timeout=2))
            await asyncio.sleep(0.05)
            try:
                return await client.get(path)
            finally:
                await holder
        if fault.startswith("write stalled"):  # more than the socket buffers hold, to a listener that never reads
            return await client.post(path, content=b"x" * 32_000_000)
        return await client.get(path)

    try:
        result: Any = asyncio.run(call())
    except outbound.CallError as error:
        result = error
    failures = registry["api"].policy.breaker.failures
    if error_class is None:
        assert result.status_code == 503
    else:
        assert isinstance(result, error_class), repr(result)
        assert isinstance(result, native_class)  # type: ignore[arg-type]
        assert isinstance(result, outbound.TransportFailure) is (
            fault not in {"pool exhausted", "untrusted certificate"}
        )
        assert ("deadline expired" in str(result)) is deadline
    assert failures == (1 if counted else 0)


def test_outbounds_own_failures_map_to_httpx_and_bugs_stay_themselves() -> None:
    wrapped = aiohttp.ClientConnectionError("Failed to send bytes")
    wrapped.__cause__ = aiohttp_backend.WriteStalled()
    assert isinstance(aiohttp_backend.native_error(wrapped), httpx.WriteTimeout)
    assert isinstance(aiohttp_backend.native_error(asyncio.TimeoutError()), httpx.ReadTimeout)  # the deadline's
    assert aiohttp_backend.native_error(ValueError("ours")) is None  # a bug of ours stays itself


def test_error_arguments_carry_no_query_string(blackhole: dict[str, str], make_registry: RegistryFactory) -> None:
    registry = make_registry(
        dead={
            "base_url": blackhole["connect_timeout"],
            "client": "httpx",
            "transport": "aiohttp",
            "timeout": {"connect": 0.1},
            "retry": {"total": 0},
        }
    )

    async def call() -> None:
        await registry.async_client("dead").get("x", params={"token": "s3cret"})

    with pytest.raises(outbound.ConnectTimeoutError) as caught:
        asyncio.run(call())
    assert "s3cret" not in repr(caught.value.args)  # aiohttp's message names the whole URL
    assert "s3cret" not in str(caught.value)


# -- the client, its session and its pool -------------------------------------------------------------------------


def test_the_async_client_is_httpx_on_aiohttp_and_the_sync_client_is_unchanged(
    upstream: Upstream, make_registry: RegistryFactory
) -> None:
    registry = make_registry(api={"base_url": upstream.url, "client": "httpx", "transport": "aiohttp"})

    async def call() -> tuple[Any, int]:
        client = registry.async_client("api")
        return client, (await client.post("echo", json={"id": 1})).json()["body_length"]

    client, body_length = asyncio.run(call())
    assert isinstance(client, httpx.AsyncClient)
    assert isinstance(client.outbound_transport.inner, httpx_aiohttp.AiohttpTransport)
    assert body_length == len(b'{"id":1}')
    assert isinstance(registry.client("api").outbound_transport.inner, httpx.HTTPTransport)


def test_the_session_is_built_from_the_service_settings(upstream: Upstream, make_registry: RegistryFactory) -> None:
    registry = make_registry(
        api={
            "base_url": upstream.url,
            "client": "httpx",
            "transport": "aiohttp",
            "pool": {"max_connections": 7, "keepalive_expiry": 3},
        }
    )

    async def call() -> tuple[Any, Any]:
        await registry.async_client("api").get("ok")
        session = _inner(registry, "api").session
        return session, session.connector

    session, connector = asyncio.run(call())
    assert (connector.limit, connector.limit_per_host) == (7, 7)
    assert connector._keepalive_timeout == 3
    assert connector._ssl is transport_options(registry["api"].config, None)["verify"]  # httpx's context, shared
    assert isinstance(session.cookie_jar, aiohttp.DummyCookieJar)
    assert session.trust_env is False
    assert session.closed  # closed with its loop


def test_pool_numbers_come_from_aiohttps_connector(upstream: Upstream, make_registry: RegistryFactory) -> None:
    registry = make_registry(
        api={"base_url": upstream.url, "client": "httpx", "transport": "aiohttp", "pool": {"max_connections": 2}}
    )

    async def scenario() -> tuple[Any, Any]:
        client = registry.async_client("api")
        calls = [asyncio.create_task(client.get("slow", params={"delay": 0.3})) for _ in range(3)]
        for _ in range(100):
            busy = registry["api"].pool()
            if (busy.in_use, busy.waiting) == (2, 1):
                break
            await asyncio.sleep(0.01)
        await asyncio.gather(*calls)
        return busy, registry["api"].pool()

    busy, after = asyncio.run(scenario())
    assert (busy.in_use, busy.idle, busy.waiting) == (2, 0, 1)
    assert (after.in_use, after.idle, after.waiting) == (0, 2, 0)


@pytest.mark.parametrize("transport", ASYNC_TRANSPORTS)
def test_a_saturated_pool_serves_waiting_calls_in_order(
    upstream: Upstream, make_registry: RegistryFactory, transport: str
) -> None:
    # 100 tasks calling in a loop through 10 connections wait 0.5 s each on average. aiohttp alone would hand each
    # freed connection to the task that just finished with it, and the others' waits would pass timeout.pool.
    registry = make_registry(
        api={
            "base_url": upstream.url,
            "client": "httpx",
            "transport": transport,
            "pool": {"max_connections": 10},
            "timeout": {"pool": 1.5},
        }
    )

    async def scenario() -> list[Any]:
        client = registry.async_client("api")
        stop = asyncio.get_running_loop().time() + 2.0

        async def worker() -> Any:
            while asyncio.get_running_loop().time() < stop:
                try:
                    await client.get("slow?delay=0.05")
                except outbound.PoolTimeoutError as error:
                    return error
            return None

        return await asyncio.gather(*(worker() for _ in range(100)))

    assert [error for error in asyncio.run(scenario()) if error is not None] == []
    assert registry["api"].policy.stats.pool_timeouts == 0


def test_a_connection_older_than_max_connection_age_is_retired(
    upstream: Upstream, make_registry: RegistryFactory
) -> None:
    registry = make_registry(
        api={
            "base_url": upstream.url,
            "client": "httpx",
            "transport": "aiohttp",
            "pool": {"max_connection_age": 0.3},
        }
    )

    async def calls() -> None:
        client = registry.async_client("api")
        await client.get("ok")
        await client.get("ok")  # young: reused
        await asyncio.sleep(0.4)
        await client.get("ok")  # too old: a new connection

    asyncio.run(calls())
    assert upstream.connections_total == 2


def test_a_dropped_connection_is_not_resent_behind_the_policys_back(
    upstream: Upstream, make_registry: RegistryFactory
) -> None:
    registry = make_registry(
        api={"base_url": upstream.url, "client": "httpx", "transport": "aiohttp", "retry": {"total": 0}}
    )

    async def call() -> None:
        await registry.async_client("api").get("hold?seconds=0.1")

    with pytest.raises(outbound.ReadError):
        asyncio.run(call())
    assert upstream.hits_by_path["/hold"] == 1  # aiohttp alone would have sent a GET twice


@pytest.mark.parametrize("transport", ASYNC_TRANSPORTS)
def test_a_streamed_body_is_read_by_the_caller_with_errors_that_stay_outbounds(
    upstream: Upstream, make_registry: RegistryFactory, transport: str
) -> None:
    registry = make_registry(
        api={"base_url": upstream.url, "client": "httpx", "transport": transport, "timeout": {"total": 0.3}}
    )

    async def scenario() -> bytes:
        client = registry.async_client("api")
        async with client.stream("GET", "trickle-body?interval=0.05&bytes=10") as streamed:  # past the deadline
            body = b"".join([chunk async for chunk in streamed.aiter_bytes()])
        with pytest.raises(outbound.ReadError) as broken:
            async with client.stream("GET", "reset-mid-body") as streamed:
                await streamed.aread()
        assert isinstance(broken.value, httpx.ReadError)
        return body

    assert asyncio.run(scenario()) == b"x" * 10


@pytest.mark.parametrize("transport", ASYNC_TRANSPORTS)
def test_a_streamed_request_body_is_sent(upstream: Upstream, make_registry: RegistryFactory, transport: str) -> None:
    registry = make_registry(api={"base_url": upstream.url, "client": "httpx", "transport": transport})

    async def parts() -> AsyncIterator[bytes]:
        for part in (b"one ", b"two"):
            yield part

    async def call() -> Any:
        return (await registry.async_client("api").post("echo", content=parts())).json()

    echoed = asyncio.run(call())
    assert echoed["body_length"] == len(b"one two")
    assert echoed["headers"]["transfer-encoding"] == "chunked"


def test_registry_close_closes_a_session_on_a_loop_in_another_thread(
    upstream: Upstream, make_registry: RegistryFactory
) -> None:
    registry = make_registry(api={"base_url": upstream.url, "client": "httpx", "transport": "aiohttp"})
    idle = asyncio.new_event_loop()  # owns a client but is not running when the registry closes

    async def use() -> Any:
        await registry.async_client("api").get("ok")
        return _inner(registry, "api").session

    session = idle.run_until_complete(use())
    registry.close()
    assert session.closed
    assert upstream.wait_for(lambda: upstream.live_connections == 0)
    idle.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
@pytest.mark.parametrize("transport", ASYNC_TRANSPORTS)
def test_a_forked_child_gets_its_own_async_client_and_leaves_the_parents_alone(
    upstream: Upstream, make_registry: RegistryFactory, transport: str
) -> None:
    registry = make_registry(api={"base_url": upstream.url, "client": "httpx", "transport": transport})
    loop = asyncio.new_event_loop()  # the parent's client lives on a loop in another thread, as under uvicorn
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def get() -> int:
        return (await registry.async_client("api").get("ok")).status_code

    assert asyncio.run_coroutine_threadsafe(get(), loop).result(timeout=5) == 200
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running pytest's teardown
        code = 1
        try:
            code = 0 if asyncio.run(get()) == 200 else 3
        finally:
            os.write(write_end, bytes([code]))
            os._exit(0)
    os.close(write_end)
    child_code = os.read(read_end, 1)
    os.close(read_end)
    os.waitpid(pid, 0)
    assert child_code == b"\x00", "the child's request failed"
    assert upstream.connections_total == 2  # the child opened its own
    assert asyncio.run_coroutine_threadsafe(get(), loop).result(timeout=5) == 200
    assert upstream.connections_total == 2  # the parent's connection was left intact, and reused
    registry.close()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
    loop.close()


# -- proxies --------------------------------------------------------------------------------------------------------


@pytest.fixture
def proxy() -> Iterator[ForwardingProxy]:
    with ForwardingProxy(auth=("user", "pass")) as server:
        yield server


def test_a_configured_proxy_with_credentials_forwards_and_tunnels(
    upstream: Upstream,
    tls_upstream: Upstream,
    certificate_authority: trustme.CA,
    proxy: ForwardingProxy,
    make_registry: RegistryFactory,
) -> None:
    trusting = ssl.create_default_context()
    certificate_authority.configure_trust(trusting)
    service = {"client": "httpx", "transport": "aiohttp", "proxy": proxy.url.replace("http://", "http://user:pass@")}
    registry = make_registry(
        plain={"base_url": upstream.url, **service},
        tls={"base_url": tls_upstream.url, "ssl_context": trusting, **service},
    )

    async def call() -> list[int]:
        return [(await registry.async_client(name).get("ok")).status_code for name in ("plain", "plain", "tls")]

    assert asyncio.run(call()) == [200, 200, 200]
    assert (proxy.requests, proxy.tunnels) == (2, 1)  # HTTP forwarded, HTTPS through a CONNECT tunnel
    assert len(proxy.proxy_authorizations) == 3


def test_environment_proxies_get_aiohttp_transports_too(
    upstream: Upstream, make_registry: RegistryFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ForwardingProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        registry = make_registry(
            api={"base_url": upstream.url, "client": "httpx", "transport": "aiohttp"},
            plain={"base_url": upstream.url, "client": "httpx", "transport": "aiohttp", "trust_env": False},
        )

        async def call() -> tuple[int, int, Any]:
            client = registry.async_client("api")
            ok = (await client.get("ok")).status_code
            plain = (await registry.async_client("plain").get("ok")).status_code
            return ok, plain, [mount.inner for mount in client._managed_mounts]

        ok, plain, mounted = asyncio.run(call())
        assert (ok, plain) == (200, 200)
        assert proxy.requests == 1  # the service that ignores the environment went direct
        assert mounted
        assert all(isinstance(inner, aiohttp_backend.ManagedAiohttpTransport) for inner in mounted)


def test_a_socks_proxy_is_refused_with_aiohttp_at_startup() -> None:
    settings = {"base_url": "http://h/", "client": "httpx", "transport": "aiohttp", "proxy": "socks5://127.0.0.1:1080"}
    with pytest.raises(outbound.ConfigError, match="SOCKS proxy is not supported with transport 'aiohttp'") as refused:
        outbound.Registry.from_mapping({"services": {"api": settings}})
    assert (refused.value.service, refused.value.key, refused.value.code) == ("api", "proxy", "unsupported")


def test_a_socks_proxy_from_the_environment_is_refused_when_the_client_is_made(
    make_registry: RegistryFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALL_PROXY", "socks5://127.0.0.1:1080")
    registry = make_registry(api={"base_url": "http://h/", "client": "httpx", "transport": "aiohttp"})

    async def call() -> None:
        registry.async_client("api")

    with pytest.raises(outbound.ConfigError, match="aiohttp has no SOCKS support") as refused:
        asyncio.run(call())
    assert refused.value.service == "api"


# -- respx, trio, aiohttp's private hooks ---------------------------------------------------------------------------


def test_respx_intercepts_without_touching_aiohttp_and_the_policy_still_runs(
    upstream: Upstream, make_registry: RegistryFactory
) -> None:
    registry = make_registry(
        api={"base_url": "https://search.internal/", "client": "httpx", "transport": "aiohttp"},
        real={"base_url": upstream.url, "client": "httpx", "transport": "aiohttp"},
    )

    async def scenario() -> tuple[int, Any, int]:
        with respx.mock(assert_all_called=True) as router:
            router.get("https://search.internal/q").mock(side_effect=[httpx.Response(503), httpx.Response(200)])
            mocked = (await registry.async_client("api").get("q")).status_code  # the 503 retried
        session = _inner(registry, "api").session
        real = (await registry.async_client("real").get("ok")).status_code  # no mock: aiohttp again
        assert _inner(registry, "real").session is not None
        return mocked, session, real

    assert asyncio.run(scenario()) == (200, None, 200)  # the mocked calls never reached aiohttp
    assert registry["api"].policy.stats.retries == 1


def test_trio_is_refused_with_a_clear_error(make_registry: RegistryFactory) -> None:
    registry = make_registry(api={"base_url": "http://h/", "client": "httpx", "transport": "aiohttp"})

    async def scenario() -> None:
        registry.async_client("api")

    with pytest.raises(outbound.ConfigError, match="aiohttp runs on asyncio only") as refused:
        trio.run(scenario)
    assert (refused.value.service, refused.value.key) == ("api", "transport")


def test_the_private_aiohttp_hooks_still_exist() -> None:
    # Without write_bytes, timeout.write would not bound an upload; without _retry_connection, aiohttp would resend
    # an idempotent request on a dropped connection behind the policy's back; without the connector's _acquired and
    # _conns, the pool numbers would read 0. Each is an aiohttp upgrade that needs a look.
    assert callable(getattr(aiohttp.ClientRequest, "write_bytes", None))

    async def attributes() -> tuple[bool, bool]:
        async with aiohttp.ClientSession() as session:
            connector = session.connector
            pool = all(hasattr(connector, name) for name in ("_acquired", "_conns"))
            return hasattr(session, "_retry_connection"), pool

    assert asyncio.run(attributes()) == (True, True)
