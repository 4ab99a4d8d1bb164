"""``outbound.expect``: a call's expected statuses and retries set around an SDK's call (no headers, no extensions),
honoured by the clients of services with an ``sdk`` section."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest

import outbound
from tests.conftest import RegistryFactory
from tests.sdks.conftest import FAST_RETRY, service
from tests.sdks.stub import Stub, serve

openai = pytest.importorskip("openai")
hvac = pytest.importorskip("hvac")

MODELS = {"object": "list", "data": [{"id": "gpt-test", "object": "model", "created": 1, "owned_by": "me"}]}
HEALTH = {"initialized": True, "sealed": True, "standby": False, "version": "1.15.0"}


@pytest.fixture
def stub() -> Iterator[Stub]:
    routes = {("GET", "/v1/models"): MODELS, ("GET", "/v1/sys/health"): HEALTH, ("GET", "/v1/secret/data/app"): {}}
    with serve(routes) as running:
        yield running


@pytest.fixture(params=["httpx2", "httpx"])
def client_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _openai(registry: outbound.Registry, url: str, retries: int = 2) -> Any:
    return openai.OpenAI(
        api_key="sk-test", base_url=f"{url}/v1", http_client=registry.client("ai"), max_retries=retries
    )


def _counts(registry: outbound.Registry, name: str = "ai") -> tuple[int, int, int]:
    snapshot = registry[name].policy.stats.snapshot()
    return snapshot.requests, snapshot.retries, snapshot.errors


def test_an_expected_status_is_the_answer_for_both_layers(
    make_registry: RegistryFactory, stub: Stub, client_kind: str
) -> None:
    registry = make_registry(ai=service(stub.url, client_kind))
    stub.fail_with = 503
    client = _openai(registry, stub.url)
    with outbound.expect(statuses=[503], service="ai"), pytest.raises(openai.InternalServerError) as caught:
        client.models.list()
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert stub.count("/v1/models") == 1  # neither outbound nor the SDK retried it
    assert _counts(registry) == (1, 0, 0)  # and it is no failure


def test_without_the_scope_the_status_is_a_retried_failure(make_registry: RegistryFactory, stub: Stub) -> None:
    """The check above can fail: the same call outside the scope."""
    registry = make_registry(ai=service(stub.url, "httpx2"))
    stub.fail_with = 503
    with pytest.raises(openai.InternalServerError):
        _openai(registry, stub.url).models.list()
    assert stub.count("/v1/models") == FAST_RETRY["total"] + 1
    assert _counts(registry) == (1, FAST_RETRY["total"], 1)


def test_a_scope_for_another_service_changes_nothing(make_registry: RegistryFactory, stub: Stub) -> None:
    registry = make_registry(ai=service(stub.url, "httpx2"))
    stub.fail_with = 503
    with outbound.expect(statuses=[503], retries=0, service="other"), pytest.raises(openai.InternalServerError):
        _openai(registry, stub.url).models.list()
    assert stub.count("/v1/models") == FAST_RETRY["total"] + 1


def test_retries_0_leaves_the_retries_to_the_sdk(make_registry: RegistryFactory, stub: Stub, client_kind: str) -> None:
    registry = make_registry(ai=service(stub.url, client_kind))
    stub.fail_with = 503
    with outbound.expect(retries=0), pytest.raises(openai.InternalServerError):
        _openai(registry, stub.url, retries=2).models.list()
    assert stub.count("/v1/models") == 3
    assert _counts(registry)[:2] == (3, 0)  # three calls from the SDK, no retry of outbound's


def test_retries_0_leaves_a_refused_port_to_the_sdk(make_registry: RegistryFactory) -> None:
    """A transport failure of a call outbound was not to retry is raised as it is: the SDK's retries are the layer."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    try:
        registry = make_registry(ai=service(url, "httpx2"))
        with outbound.expect(retries=0), pytest.raises(openai.APIConnectionError) as caught:
            _openai(registry, url, retries=1).models.list()
        assert isinstance(outbound.sdk_error(caught.value), outbound.ConnectError)
        assert _counts(registry)[:2] == (2, 0)
    finally:
        closed.close()


def test_a_requests_session_honours_the_scope(make_registry: RegistryFactory, stub: Stub) -> None:
    """hvac on a managed session: a sealed Vault's 503 is the answer of this one call, not a failure."""
    registry = make_registry(vault=service(stub.url, "requests", breaker={"fail_max": 2}))
    stub.status["/v1/sys/health"] = 503
    client = hvac.Client(url=stub.url, token="t", session=registry.session("vault"))
    for _ in range(3):
        with outbound.expect(statuses=[429, 503], service="vault"):
            assert client.sys.read_health_status(method="GET").status_code == 503
    assert stub.count("/v1/sys/health") == 3
    assert registry["vault"].policy.breaker.state == "closed"
    assert _counts(registry, "vault") == (3, 0, 0)
    stub.status["/v1/secret/data/app"] = 503
    with outbound.expect(retries=0), pytest.raises(hvac.exceptions.VaultDown):
        client.secrets.kv.v2.read_secret_version(path="app", raise_on_deleted_version=True)
    assert _counts(registry, "vault")[:2] == (4, 0)


def test_a_service_without_the_sdk_section_ignores_the_scope(make_registry: RegistryFactory, stub: Stub) -> None:
    registry = make_registry(vault=service(stub.url, "requests", sdk=None))
    stub.status["/v1/sys/health"] = 503
    with outbound.expect(statuses=[503]):
        registry.session("vault").get("v1/sys/health")
    assert stub.count("/v1/sys/health") == FAST_RETRY["total"] + 1


@pytest.mark.parametrize(
    "kwargs",
    [{"statuses": [99]}, {"statuses": [600]}, {"statuses": ["503"]}, {"retries": -1}, {"retries": "2"}, {"service": 1}],
)
def test_mistakes_are_refused_at_once(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"), outbound.expect(**kwargs):
        pass  # pragma: no cover


def test_scopes_nest_and_end() -> None:
    from outbound._expect import current

    with outbound.expect(statuses=[503]):
        with outbound.expect(retries=1, service="ai"):
            inner = current("ai")
            assert inner is not None
            assert (inner.statuses, inner.retries) == (frozenset(), 1)
            assert current("other") is None
        outer = current("ai")
        assert outer is not None
        assert outer.statuses == frozenset({503})
    assert current("ai") is None


def test_the_async_client_honours_the_scope(make_registry: RegistryFactory, stub: Stub) -> None:
    registry = make_registry(ai=service(stub.url, "httpx2"))
    stub.fail_with = 503

    async def call() -> None:
        client = openai.AsyncOpenAI(
            api_key="sk-test", base_url=f"{stub.url}/v1", http_client=registry.async_client("ai"), max_retries=2
        )
        with outbound.expect(statuses=[503]):
            await client.models.list()

    with pytest.raises(openai.InternalServerError):
        asyncio.run(call())
    assert stub.count("/v1/models") == 1
    assert _counts(registry) == (1, 0, 0)
