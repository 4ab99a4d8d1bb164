"""stripe (16.x) given a managed session (``stripe.RequestsClient(session=registry.session("stripe"))``), against a
local stub of its API: the basics, a refusal that fails fast with the truth, one retry layer, its timeout capped."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

import outbound
from tests.conftest import RegistryFactory
from tests.sdks.conftest import FAST_RETRY, service
from tests.sdks.stub import Stub, serve

stripe = pytest.importorskip("stripe")

CUSTOMER = {"id": "cus_1", "object": "customer", "email": "a@example.com"}


@pytest.fixture
def stub() -> Iterator[Stub]:
    routes = {("GET", "/v1/customers/cus_1"): CUSTOMER, ("POST", "/v1/customers"): CUSTOMER}
    with serve(routes) as running:
        yield running


def _stripe(registry: outbound.Registry, stub: Stub, retries: int = 2) -> Any:
    http_client = stripe.RequestsClient(session=registry.session("stripe"))
    return stripe.StripeClient(
        "sk_test_1",
        http_client=http_client,
        base_addresses={"api": stub.url},
        max_network_retries=retries,
    )


def _refused(registry: outbound.Registry) -> int:
    snapshot = registry["stripe"].policy.stats.snapshot()
    return snapshot.short_circuited + sum(snapshot.rejected.values())


def test_a_customer_goes_through_the_managed_session(make_registry: RegistryFactory, stub: Stub) -> None:
    registry = make_registry(stripe=service(stub.url, "requests"))
    client = _stripe(registry, stub)
    assert client.v1.customers.retrieve("cus_1").email == "a@example.com"
    assert client.v1.customers.create(params={"email": "a@example.com"}).id == "cus_1"
    assert stub.count("/v1/customers/cus_1") == 1
    assert stub.count("/v1/customers") == 1


def test_a_refusal_is_answered_at_once_and_names_itself(make_registry: RegistryFactory, stub: Stub) -> None:
    registry = make_registry(stripe=service(stub.url, "requests"))
    registry.isolate("stripe")
    with pytest.raises(stripe.APIError) as caught:
        _stripe(registry, stub).v1.customers.retrieve("cus_1")
    assert caught.value.http_status == 503
    assert caught.value.headers["x-outbound-refusal"] == "circuit_open"
    assert caught.value.json_body["outbound"]["reason"] == "circuit_open"
    assert "circuit_open" in str(caught.value)
    assert stub.count("/v1/customers/cus_1") == 0
    assert _refused(registry) == 1


def test_a_rate_limit_refusal_is_the_sdks_rate_limit_error(make_registry: RegistryFactory, stub: Stub) -> None:
    registry = make_registry(stripe=service(stub.url, "requests", rate_limit={"rate": "1/minute"}))
    client = _stripe(registry, stub)
    client.v1.customers.retrieve("cus_1")
    with pytest.raises(stripe.RateLimitError):
        client.v1.customers.retrieve("cus_1")
    assert stub.count("/v1/customers/cus_1") == 1


def test_without_the_sdk_section_the_sdk_retries_the_refusal(make_registry: RegistryFactory, stub: Stub) -> None:
    registry = make_registry(stripe=service(stub.url, "requests", sdk=None))
    registry.isolate("stripe")
    with pytest.raises(stripe.APIConnectionError):
        _stripe(registry, stub, retries=1).v1.customers.retrieve("cus_1")
    assert _refused(registry) == 2


def test_one_retry_layer_against_a_failing_upstream(make_registry: RegistryFactory, stub: Stub) -> None:
    registry = make_registry(stripe=service(stub.url, "requests"))
    stub.fail_with = 503
    with pytest.raises(stripe.APIError):
        _stripe(registry, stub).v1.customers.retrieve("cus_1")
    assert stub.count("/v1/customers/cus_1") == FAST_RETRY["total"] + 1


def test_stripes_timeout_is_capped(make_registry: RegistryFactory, stub: Stub) -> None:
    registry = make_registry(stripe=service(stub.url, "requests", sdk={"timeout_max": 5}))
    seen: list[Any] = []
    adapter = registry.session("stripe").adapter
    original = adapter.attempt

    def spy(call: Any, send: Any) -> Any:
        seen.append(send.read)
        return original(call, send)

    adapter.attempt = spy  # type: ignore[method-assign]
    _stripe(registry, stub).v1.customers.retrieve("cus_1")  # stripe asks for 80 s
    assert seen == [5.0]


class ManagedHTTPXClient(stripe.HTTPXClient):
    """The docs' recipe for stripe's ``*_async`` methods: stripe's HTTPXClient on a service's managed clients (the
    sync one, and the running event loop's async one)."""

    def __init__(self, registry: outbound.Registry, service: str, **kwargs: Any) -> None:
        self._registry, self._service = registry, service
        super().__init__(allow_sync_methods=False, **kwargs)

    # stripe sets both in __init__ (its own clients): ignored, the managed ones are read on every call instead.
    _client = property(lambda self: self._registry.client(self._service), lambda self, value: None)
    _client_async = property(lambda self: self._registry.async_client(self._service), lambda self, value: None)


def _stripe_httpx(registry: outbound.Registry, stub: Stub) -> Any:
    return stripe.StripeClient(
        "sk_test_1",
        http_client=ManagedHTTPXClient(registry, "stripe"),
        base_addresses={"api": stub.url},
        max_network_retries=2,
    )


def test_async_methods_go_through_the_managed_async_client(make_registry: RegistryFactory, stub: Stub) -> None:
    registry = make_registry(stripe=service(stub.url, "httpx"))
    client = _stripe_httpx(registry, stub)

    async def both() -> tuple[Any, Any]:
        return await client.v1.customers.retrieve_async("cus_1"), client.v1.customers.retrieve("cus_1")

    for _ in range(2):  # two event loops: each gets its own managed AsyncClient
        async_customer, sync_customer = asyncio.run(both())
        assert async_customer.email == sync_customer.email == "a@example.com"
    assert stub.count("/v1/customers/cus_1") == 4
    assert registry["stripe"].policy.stats.snapshot().requests == 4


def test_an_async_refusal_is_answered_at_once(make_registry: RegistryFactory, stub: Stub) -> None:
    registry = make_registry(stripe=service(stub.url, "httpx"))
    registry.isolate("stripe")
    client = _stripe_httpx(registry, stub)
    with pytest.raises(stripe.APIError) as caught:
        asyncio.run(client.v1.customers.retrieve_async("cus_1"))
    assert caught.value.headers["x-outbound-refusal"] == "circuit_open"
    assert _refused(registry) == 1
