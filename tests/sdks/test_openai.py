"""openai (3.x) given a managed client (``OpenAI(http_client=registry.client("openai"))``), against a local stub of
its API: the basics, a refusal that fails fast with the truth, exactly one retry layer, event-loop errors unretried.

openai 3 accepts an ``httpx2.Client`` and a legacy ``httpx.Client``: both services are tested.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

import outbound
from tests.conftest import RegistryFactory
from tests.sdks.conftest import service
from tests.sdks.stub import Stub, serve

openai = pytest.importorskip("openai")

COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-test",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
}
MODELS = {"object": "list", "data": [{"id": "gpt-test", "object": "model", "created": 1, "owned_by": "me"}]}
PATH = "/v1/chat/completions"


@pytest.fixture
def stub() -> Iterator[Stub]:
    with serve({("POST", PATH): COMPLETION, ("GET", "/v1/models"): MODELS}) as running:
        yield running


@pytest.fixture(params=["httpx2", "httpx"])
def client_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _openai(registry: outbound.Registry, stub: Stub, **kwargs: Any) -> Any:
    return openai.OpenAI(api_key="sk-test", base_url=f"{stub.url}/v1", http_client=registry.client("ai"), **kwargs)


def refused(registry: outbound.Registry) -> int:
    """Calls outbound refused (an open breaker's short circuits and every other refusal)."""
    snapshot = registry["ai"].policy.stats.snapshot()
    return snapshot.short_circuited + sum(snapshot.rejected.values())


def _chat(client: Any) -> Any:
    return client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])


def test_a_completion_goes_through_the_managed_client(
    make_registry: RegistryFactory, stub: Stub, client_kind: str
) -> None:
    registry = make_registry(ai=service(stub.url, client_kind))
    answer = _chat(_openai(registry, stub))
    assert answer.choices[0].message.content == "hello"
    assert stub.count(PATH) == 1
    assert registry["ai"].policy.stats.snapshot().requests == 1


def test_a_refusal_is_answered_at_once_and_names_itself(
    make_registry: RegistryFactory, stub: Stub, client_kind: str
) -> None:
    registry = make_registry(ai=service(stub.url, client_kind))
    registry.isolate("ai")
    with pytest.raises(openai.InternalServerError) as caught:
        _chat(_openai(registry, stub))  # the SDK's default max_retries=2
    assert caught.value.status_code == 503
    assert caught.value.response.headers["x-outbound-refusal"] == "circuit_open"
    assert isinstance(outbound.sdk_error(caught.value), outbound.CircuitOpenError)
    assert "circuit_open" in str(caught.value)
    assert stub.count(PATH) == 0
    # One refusal: the SDK did not retry it (it would have asked twice more, with its backoff in between).
    assert refused(registry) == 1


def test_without_the_sdk_section_the_sdk_retries_the_refusal(make_registry: RegistryFactory, stub: Stub) -> None:
    """What the section prevents (the check above can fail): the refusal is a connection error, retried."""
    registry = make_registry(ai=service(stub.url, "httpx2", sdk=None))
    registry.isolate("ai")
    with pytest.raises(openai.APIConnectionError) as caught:
        _chat(_openai(registry, stub, max_retries=1))
    assert isinstance(outbound.sdk_error(caught.value), outbound.CircuitOpenError)  # in the chain, at least
    assert refused(registry) == 2


def test_a_rate_limit_refusal_is_the_sdks_rate_limit_error(make_registry: RegistryFactory, stub: Stub) -> None:
    registry = make_registry(ai=service(stub.url, "httpx2", rate_limit={"rate": "1/minute"}))
    client = _openai(registry, stub)
    client.models.list()
    with pytest.raises(openai.RateLimitError) as caught:
        client.models.list()
    assert isinstance(outbound.sdk_error(caught.value), outbound.RateLimitedError)
    assert stub.count("/v1/models") == 1


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_one_retry_layer_against_a_failing_upstream(
    make_registry: RegistryFactory, stub: Stub, client_kind: str, method: str
) -> None:
    """GET: outbound retries (retry.total = 2), the SDK does not retry what it gave up on: 3 hits, not 9. POST:
    outbound does not retry it, the SDK does (with its idempotency key): 3 hits too."""
    registry = make_registry(ai=service(stub.url, client_kind))
    stub.fail_with = 503
    client = _openai(registry, stub, max_retries=2)
    call = client.models.list if method == "GET" else lambda: _chat(client)
    with pytest.raises(openai.InternalServerError):
        call()
    path = "/v1/models" if method == "GET" else PATH
    assert stub.count(path) == 3


def test_without_final_responses_the_layers_multiply(make_registry: RegistryFactory, stub: Stub) -> None:
    registry = make_registry(ai=service(stub.url, "httpx2", sdk=None))
    stub.fail_with = 503
    with pytest.raises(openai.InternalServerError):
        _openai(registry, stub, max_retries=1).models.list()
    assert stub.count("/v1/models") == 6  # (retry.total + 1) x (max_retries + 1)


def test_both_layers_retrying_is_logged(
    make_registry: RegistryFactory, stub: Stub, caplog: pytest.LogCaptureFixture
) -> None:
    registry = make_registry(ai=service(stub.url, "httpx2", sdk={"final_responses": False}))
    stub.fail_with = 503
    with caplog.at_level("INFO", logger="outbound.call"), pytest.raises(openai.InternalServerError):
        _openai(registry, stub, max_retries=1).models.list()
    assert any("retried by both outbound" in record.getMessage() for record in caplog.records)


def test_the_sdks_own_timeout_is_capped(make_registry: RegistryFactory, stub: Stub) -> None:
    registry = make_registry(ai=service(stub.url, "httpx2", sdk={"timeout_max": 42}))
    client = _openai(registry, stub, timeout=600)
    _chat(client)
    seen: list[Any] = []
    transport = registry.client("ai").outbound_transport
    original = transport.inner.handle_request

    def spy(request: Any) -> Any:
        seen.append(dict(request.extensions["timeout"]))
        return original(request)

    transport.inner.handle_request = spy
    _chat(client)
    assert seen
    assert 40 < seen[0]["read"] <= 42  # the cap, cut to the call's deadline (as long as the cap)


def test_an_async_client_of_another_loop_is_not_retried(make_registry: RegistryFactory, stub: Stub) -> None:
    registry = make_registry(ai=service(stub.url, "httpx2"))

    async def make() -> Any:
        return openai.AsyncOpenAI(api_key="sk-test", base_url=f"{stub.url}/v1", http_client=registry.async_client("ai"))

    client = asyncio.run(make())  # built in one loop, used in the next: the per-loop mistake

    async def use() -> Any:
        return await client.models.list()

    with pytest.raises(openai.InternalServerError) as caught:
        asyncio.run(use())
    assert isinstance(outbound.sdk_error(caught.value), outbound.EventLoopMismatchError)
    assert stub.count("/v1/models") == 0


def test_the_per_loop_pattern_works(make_registry: RegistryFactory, stub: Stub) -> None:
    registry = make_registry(ai=service(stub.url, "httpx2"))

    async def per_request() -> Any:
        client = openai.AsyncOpenAI(
            api_key="sk-test", base_url=f"{stub.url}/v1", http_client=registry.async_client("ai")
        )
        return await client.models.list()

    for _ in range(2):  # two loops, as two async_to_sync requests would be
        assert asyncio.run(per_request()).data[0].id == "gpt-test"


def test_a_redirect_is_followed_when_the_service_says_so(
    make_registry: RegistryFactory, stub: Stub, client_kind: str
) -> None:
    stub.routes[("GET", "/v2/models")] = MODELS
    stub.redirect["/v1/models"] = f"{stub.url}/v2/models"
    registry = make_registry(ai=service(stub.url, client_kind, follow_redirects=True))
    assert _openai(registry, stub).models.list().data[0].id == "gpt-test"
    assert stub.count("/v2/models") == 1
    assert stub.hits[-1].headers["authorization"] == "Bearer sk-test"  # same origin: the key follows


def test_without_follow_redirects_a_307_is_the_sdks_status_error(make_registry: RegistryFactory, stub: Stub) -> None:
    stub.redirect["/v1/models"] = f"{stub.url}/v2/models"
    registry = make_registry(ai=service(stub.url, "httpx2"))
    with pytest.raises(openai.APIStatusError) as caught:
        _openai(registry, stub).models.list()
    assert caught.value.status_code == 307


def test_a_redirect_to_another_origin_drops_the_api_key(make_registry: RegistryFactory, stub: Stub) -> None:
    with serve({("GET", "/v1/models"): MODELS}) as other:
        stub.redirect["/v1/models"] = f"{other.url}/v1/models"
        registry = make_registry(ai=service(stub.url, "httpx2", follow_redirects=True))
        assert _openai(registry, stub).models.list().data[0].id == "gpt-test"
        assert other.count("/v1/models") == 1
        assert "authorization" not in other.hits[0].headers


def test_an_expected_status_is_neither_retried_nor_a_failure(
    make_registry: RegistryFactory, stub: Stub, client_kind: str
) -> None:
    expected = {"expected": {"v1/models": [503]}}
    registry = make_registry(ai=service(stub.url, client_kind, breaker={"fail_max": 2}, sdk=expected))
    stub.fail_with = 503
    client = _openai(registry, stub, max_retries=0)
    for _ in range(3):
        with pytest.raises(openai.InternalServerError):
            client.models.list()
    assert stub.count("/v1/models") == 3  # once per call: not retried
    assert registry["ai"].policy.breaker.state == "closed"


def test_an_expected_status_through_the_async_client(make_registry: RegistryFactory, stub: Stub) -> None:
    registry = make_registry(ai=service(stub.url, "httpx2", sdk={"expected": {"v1/models": [503]}}))
    stub.fail_with = 503

    async def call() -> None:
        client = openai.AsyncOpenAI(
            api_key="sk-test", base_url=f"{stub.url}/v1", http_client=registry.async_client("ai"), max_retries=0
        )
        with pytest.raises(openai.InternalServerError):
            await client.models.list()

    asyncio.run(call())
    assert stub.count("/v1/models") == 1
    assert registry["ai"].policy.stats.snapshot().errors == 0


def test_one_retry_layer_through_the_async_client(make_registry: RegistryFactory, stub: Stub) -> None:
    registry = make_registry(ai=service(stub.url, "httpx2"))
    stub.fail_with = 503

    async def call() -> None:
        client = openai.AsyncOpenAI(
            api_key="sk-test", base_url=f"{stub.url}/v1", http_client=registry.async_client("ai"), max_retries=2
        )
        with pytest.raises(openai.InternalServerError) as caught:
            await client.models.list()
        assert caught.value.response.headers["x-should-retry"] == "false"

    asyncio.run(call())
    assert stub.count("/v1/models") == 3


def _sse(*pieces: str) -> list[bytes]:
    events = []
    for piece in pieces:
        chunk = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-test",
            "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
        }
        events.append(f"data: {json.dumps(chunk)}\n\n".encode())
    return [*events, b"data: [DONE]\n\n"]


@pytest.mark.parametrize(("read", "whole"), [(2.0, True), (0.1, False)])
def test_a_streams_gaps_are_bounded_by_the_read_timeout(
    make_registry: RegistryFactory, stub: Stub, read: float, whole: bool
) -> None:
    """The docs' advice for streams: `timeout.total` covers the call up to the response headers, `timeout.read` each
    gap between chunks. Five chunks 0.3 s apart (1.5 s in all, longer than the total): a 2 s read lets the whole
    stream through, a 0.1 s one cuts it at the first gap."""
    stub.streams[PATH] = _sse("he", "ll", "o ", "wor", "ld")
    stub.stream_gap = 0.3
    registry = make_registry(ai=service(stub.url, "httpx2", timeout={"read": read, "total": 1.0}))
    client = _openai(registry, stub, max_retries=0)
    pieces: list[str] = []

    def read_all() -> None:
        messages = [{"role": "user", "content": "hi"}]
        stream = client.chat.completions.create(model="gpt-test", messages=messages, stream=True)
        pieces.extend(chunk.choices[0].delta.content or "" for chunk in stream)

    if whole:
        read_all()
        assert "".join(pieces) == "hello world"
    else:
        with pytest.raises((openai.APITimeoutError, outbound.ReadTimeoutError)):
            read_all()
        assert "".join(pieces) != "hello world"
