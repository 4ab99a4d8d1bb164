"""Transport failures and pool timeouts through the SDKs that retry (openai, anthropic, stripe): what outbound gave
up on is answered as a final response, so one SDK call reaches the upstream at most ``retry.total + 1`` times.

A refused port (a bound socket that never listens) and a stub path that answers nothing (a read timeout); attempts
are counted by the service's stats (``requests`` is one per call the SDK made, ``retries`` outbound's own) and, where
the request arrives, by the stub.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import outbound
from tests.conftest import RegistryFactory
from tests.sdks.conftest import FAST_RETRY, service
from tests.sdks.stub import Stub, serve

CUSTOMER = {"id": "cus_1", "object": "customer", "email": "a@example.com"}
OPENAI_MODELS = {"object": "list", "data": [{"id": "gpt-test", "object": "model", "created": 1, "owned_by": "me"}]}
ANTHROPIC_MODELS = {
    "data": [{"id": "claude-test", "type": "model", "created_at": "2026-01-01T00:00:00Z", "display_name": "Test"}],
    "has_more": False,
    "first_id": "claude-test",
    "last_id": "claude-test",
}


@dataclass(frozen=True)
class Sdk:
    """One SDK on one client kind: how to build it on a service's client and make one GET through it."""

    name: str
    kind: str
    path: str  # the GET's path at the stub
    build: Callable[[outbound.Registry, str, int], Any]  # (registry, url, the SDK's retries) -> SDK client
    get: Callable[[Any], Any]
    status_error: Callable[[], type[Exception]]
    connection_error: Callable[[], type[Exception]]
    status_and_headers: Callable[[Any], tuple[int, Any]]


def _openai(registry: outbound.Registry, url: str, retries: int) -> Any:
    import openai

    return openai.OpenAI(
        api_key="sk-test", base_url=f"{url}/v1", http_client=registry.client("sdk"), max_retries=retries
    )


def _anthropic(registry: outbound.Registry, url: str, retries: int) -> Any:
    import anthropic

    return anthropic.Anthropic(api_key="sk-ant", base_url=url, http_client=registry.client("sdk"), max_retries=retries)


def _stripe(registry: outbound.Registry, url: str, retries: int) -> Any:
    import stripe

    http_client = stripe.RequestsClient(session=registry.session("sdk"))
    return stripe.StripeClient(
        "sk_test_1", http_client=http_client, base_addresses={"api": url}, max_network_retries=retries
    )


def _module(name: str) -> Any:
    return pytest.importorskip(name)


def _stainless(exc: Any) -> tuple[int, Any]:
    return exc.status_code, exc.response.headers


SDKS = [
    Sdk(
        "openai",
        kind,
        "/v1/models",
        _openai,
        lambda client: client.models.list(),
        lambda: _module("openai").APIStatusError,
        lambda: _module("openai").APIConnectionError,
        _stainless,
    )
    for kind in ("httpx2", "httpx")
] + [
    Sdk(
        "anthropic",
        "httpx2",
        "/v1/models",
        _anthropic,
        lambda client: client.models.list(),
        lambda: _module("anthropic").APIStatusError,
        lambda: _module("anthropic").APIConnectionError,
        _stainless,
    ),
    Sdk(
        "stripe",
        "requests",
        "/v1/customers/cus_1",
        _stripe,
        lambda client: client.v1.customers.retrieve("cus_1"),
        lambda: _module("stripe").APIError,
        lambda: _module("stripe").APIConnectionError,
        lambda exc: (exc.http_status, exc.headers),
    ),
]


@pytest.fixture(params=SDKS, ids=lambda sdk: f"{sdk.name}-{sdk.kind}")
def sdk(request: pytest.FixtureRequest) -> Sdk:
    found: Sdk = request.param
    pytest.importorskip(found.name)
    return found


@pytest.fixture
def stub() -> Iterator[Stub]:
    routes = {
        ("GET", "/v1/customers/cus_1"): CUSTOMER,
        ("GET", "/v1/models"): OPENAI_MODELS,
    }
    with serve(routes) as running:
        yield running


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A port of 127.0.0.1 with a socket bound but never listening: every connection is refused at once."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{closed.getsockname()[1]}"
    finally:
        closed.close()


def _attempts(registry: outbound.Registry) -> tuple[int, int]:
    """(calls the SDK made, every attempt outbound sent for them)."""
    snapshot = registry["sdk"].policy.stats.snapshot()
    return snapshot.requests, snapshot.requests + snapshot.retries


def test_a_refused_port_is_answered_once_outbound_gave_up(
    make_registry: RegistryFactory, sdk: Sdk, refused_url: str
) -> None:
    registry = make_registry(sdk=service(refused_url, sdk.kind))
    with pytest.raises(sdk.status_error()) as caught:
        sdk.get(sdk.build(registry, refused_url, 2))  # the SDK's default two retries
    status, headers = sdk.status_and_headers(caught.value)
    assert status == 502
    assert headers["x-outbound-failure"] == "connect_error"
    assert "x-outbound-refusal" not in headers
    # One SDK call, retry.total + 1 connection attempts: the SDK did not retry what outbound gave up on.
    assert _attempts(registry) == (1, FAST_RETRY["total"] + 1)
    if sdk.name != "stripe":  # stripe keeps only the status, headers and body of a response
        assert isinstance(outbound.sdk_error(caught.value), outbound.ConnectError)


def test_without_final_responses_the_sdk_retries_a_refused_port(
    make_registry: RegistryFactory, sdk: Sdk, refused_url: str
) -> None:
    """What the answer prevents (the check above can fail): the layers multiply, 2 x 3 connection attempts."""
    registry = make_registry(sdk=service(refused_url, sdk.kind, sdk={"final_responses": False}))
    with pytest.raises(sdk.connection_error()):
        sdk.get(sdk.build(registry, refused_url, 1))
    assert _attempts(registry) == (2, 2 * (FAST_RETRY["total"] + 1))


def test_a_read_timeout_is_answered_once_outbound_gave_up(make_registry: RegistryFactory, sdk: Sdk, stub: Stub) -> None:
    # stripe asks for 80 s with every call, which would replace the service's read: timeout_max holds it to 0.3 s.
    registry = make_registry(sdk=service(stub.url, sdk.kind, timeout={"read": 0.3}, sdk={"timeout_max": 0.3}))
    if sdk.name == "anthropic":
        stub.routes[("GET", "/v1/models")] = ANTHROPIC_MODELS
    stub.hold[sdk.path] = 5.0
    with pytest.raises(sdk.status_error()) as caught:
        sdk.get(sdk.build(registry, stub.url, 2))
    status, headers = sdk.status_and_headers(caught.value)
    assert status == 504
    assert headers["x-outbound-failure"] == "read_timeout"
    assert stub.count(sdk.path) == FAST_RETRY["total"] + 1
    assert _attempts(registry) == (1, FAST_RETRY["total"] + 1)
    if sdk.name != "stripe":
        assert isinstance(outbound.sdk_error(caught.value), outbound.ReadTimeoutError)
    else:
        assert caught.value.json_body["outbound"]["reason"] == "read_timeout"


@pytest.mark.parametrize("answer_refusals", [True, False])
def test_a_pool_timeout_is_answered_as_the_refusals_are(
    make_registry: RegistryFactory, sdk: Sdk, stub: Stub, answer_refusals: bool
) -> None:
    """Every connection busy (one, held by another call): the SDK's call finds none within ``timeout.pool``. Answered,
    it is not retried; raised (``answer_refusals`` off), the SDK retries it (the check can fail)."""
    registry = make_registry(
        sdk=service(
            stub.url,
            sdk.kind,
            pool={"max_connections": 1},
            timeout={"pool": 0.1, "read": 10, "total": 20},
            sdk={"answer_refusals": answer_refusals},
        )
    )
    stub.hold["/held"] = 10.0  # until the stub stops
    holder = threading.Thread(target=_hold, args=(registry, sdk.name), daemon=True)
    holder.start()
    try:
        assert _wait(lambda: stub.count("/held") == 1)
        expected = sdk.status_error() if answer_refusals else sdk.connection_error()
        with pytest.raises(expected) as caught:
            sdk.get(sdk.build(registry, stub.url, 1))
        pool_timeouts = registry["sdk"].policy.stats.snapshot().pool_timeouts
        if answer_refusals:
            status, headers = sdk.status_and_headers(caught.value)
            assert (status, headers["x-outbound-refusal"]) == (503, "pool_timeout")
            assert pool_timeouts == 1
            if sdk.name != "stripe":
                assert isinstance(outbound.sdk_error(caught.value), outbound.PoolTimeoutError)
        else:
            assert pool_timeouts == 2  # the SDK's retry
        assert stub.count(sdk.path) == 0
    finally:
        stub.stopping.set()  # the held call ends
        holder.join(timeout=10)


def _hold(registry: outbound.Registry, name: str) -> None:
    with contextlib.suppress(Exception):  # ends with the stub, as an error
        if name == "stripe":
            # stripe passes verify=<its CA bundle>, and requests keeps one pool per (host, verify): the same here.
            registry.session("sdk").get("held", verify=_module("stripe").ca_bundle_path)
        else:
            registry.client("sdk").get("held")


def _wait(condition: Callable[[], bool]) -> bool:
    done = threading.Event()
    for _ in range(100):  # at most 5 s
        if condition():
            return True
        done.wait(0.05)
    return condition()


def test_the_async_client_answers_a_refused_port_too(make_registry: RegistryFactory, refused_url: str) -> None:
    openai = pytest.importorskip("openai")
    registry = make_registry(sdk=service(refused_url, "httpx2"))

    async def call() -> None:
        client = openai.AsyncOpenAI(
            api_key="sk-test", base_url=f"{refused_url}/v1", http_client=registry.async_client("sdk"), max_retries=2
        )
        await client.models.list()

    with pytest.raises(openai.InternalServerError) as caught:
        asyncio.run(call())
    assert caught.value.response.headers["x-outbound-failure"] == "connect_error"
    assert isinstance(outbound.sdk_error(caught.value), outbound.ConnectError)
    assert _attempts(registry) == (1, FAST_RETRY["total"] + 1)


def test_a_service_that_never_retries_leaves_failures_to_the_sdk(
    make_registry: RegistryFactory, refused_url: str
) -> None:
    """``retry.total: 0``: outbound makes one attempt, so the SDK's retries are the one layer: raised, not answered."""
    openai = pytest.importorskip("openai")
    registry = make_registry(sdk=service(refused_url, "httpx2", retry={**FAST_RETRY, "total": 0}))
    with pytest.raises(openai.APIConnectionError):
        _openai(registry, refused_url, 1).models.list()
    assert _attempts(registry) == (2, 2)
