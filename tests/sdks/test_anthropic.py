"""anthropic (2.x, on httpx2) given a managed client (``Anthropic(http_client=registry.client("claude"))``), against a
local stub of its API: the basics, a refusal that fails fast with the truth, one retry layer, 529 as a failure."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

import outbound
from tests.conftest import RegistryFactory
from tests.sdks.conftest import FAST_RETRY, service
from tests.sdks.stub import Stub, serve

anthropic = pytest.importorskip("anthropic")

MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-test",
    "content": [{"type": "text", "text": "hello"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 1, "output_tokens": 1},
}
MODELS = {
    "data": [{"id": "claude-test", "type": "model", "created_at": "2026-01-01T00:00:00Z", "display_name": "Test"}],
    "has_more": False,
    "first_id": "claude-test",
    "last_id": "claude-test",
}


@pytest.fixture
def stub() -> Iterator[Stub]:
    with serve({("POST", "/v1/messages"): MESSAGE, ("GET", "/v1/models"): MODELS}) as running:
        yield running


def _claude(registry: outbound.Registry, stub: Stub, **kwargs: Any) -> Any:
    return anthropic.Anthropic(
        api_key="sk-ant-test", base_url=stub.url, http_client=registry.client("claude"), **kwargs
    )


def _ask(client: Any) -> Any:
    return client.messages.create(model="claude-test", max_tokens=16, messages=[{"role": "user", "content": "hi"}])


def _refused(registry: outbound.Registry) -> int:
    snapshot = registry["claude"].policy.stats.snapshot()
    return snapshot.short_circuited + sum(snapshot.rejected.values())


def test_a_message_goes_through_the_managed_client(make_registry: RegistryFactory, stub: Stub) -> None:
    registry = make_registry(claude=service(stub.url, "httpx2"))
    assert _ask(_claude(registry, stub)).content[0].text == "hello"
    assert stub.count("/v1/messages") == 1


def test_an_httpx_client_is_refused_by_the_sdk(make_registry: RegistryFactory, stub: Stub) -> None:
    """anthropic 2 takes httpx2 clients only: a `client: "httpx"` service's client is the SDK's TypeError."""
    registry = make_registry(claude=service(stub.url, "httpx"))
    with pytest.raises(TypeError):
        _claude(registry, stub)


def test_a_refusal_is_answered_at_once_and_names_itself(make_registry: RegistryFactory, stub: Stub) -> None:
    registry = make_registry(claude=service(stub.url, "httpx2"))
    registry.isolate("claude")
    with pytest.raises(anthropic.APIStatusError) as caught:
        _ask(_claude(registry, stub))
    assert caught.value.status_code == 503
    assert isinstance(outbound.sdk_error(caught.value), outbound.CircuitOpenError)
    assert "circuit_open" in str(caught.value)
    assert stub.count("/v1/messages") == 0
    assert _refused(registry) == 1  # not retried by the SDK


def test_without_the_sdk_section_the_sdk_retries_the_refusal(make_registry: RegistryFactory, stub: Stub) -> None:
    registry = make_registry(claude=service(stub.url, "httpx2", sdk=None))
    registry.isolate("claude")
    with pytest.raises(anthropic.APIConnectionError) as caught:
        _ask(_claude(registry, stub, max_retries=1))
    assert isinstance(outbound.sdk_error(caught.value), outbound.CircuitOpenError)
    assert _refused(registry) == 2


def test_one_retry_layer_against_a_failing_upstream(make_registry: RegistryFactory, stub: Stub) -> None:
    registry = make_registry(claude=service(stub.url, "httpx2"))
    stub.fail_with = 503
    with pytest.raises(anthropic.APIStatusError):
        _claude(registry, stub, max_retries=2).models.list()
    assert stub.count("/v1/models") == FAST_RETRY["total"] + 1


def test_overloaded_529_counts_with_the_documented_recipe(make_registry: RegistryFactory, stub: Stub) -> None:
    """Anthropic's 529 is neither retried nor a failure by default; the docs' recipe lists it in both."""
    statuses = [429, 500, 502, 503, 504, 529]
    registry = make_registry(
        claude=service(
            stub.url,
            "httpx2",
            retry={**FAST_RETRY, "status_forcelist": statuses},
            breaker={"fail_max": 3, "failure_statuses": statuses},
        )
    )
    stub.fail_with = 529
    with pytest.raises(anthropic.APIStatusError) as caught:
        _claude(registry, stub).models.list()
    assert caught.value.status_code == 529
    assert stub.count("/v1/models") == 3  # outbound's 3 attempts, the SDK's retries stopped by final_responses
    assert registry["claude"].policy.breaker.state == "open"


def test_an_async_client_of_another_loop_is_not_retried(make_registry: RegistryFactory, stub: Stub) -> None:
    registry = make_registry(claude=service(stub.url, "httpx2"))

    async def make() -> Any:
        return anthropic.AsyncAnthropic(
            api_key="sk-ant-test", base_url=stub.url, http_client=registry.async_client("claude")
        )

    client = asyncio.run(make())

    async def use() -> Any:
        return await client.models.list()

    with pytest.raises(anthropic.APIStatusError) as caught:
        asyncio.run(use())
    assert isinstance(outbound.sdk_error(caught.value), outbound.EventLoopMismatchError)
    assert stub.count("/v1/models") == 0
