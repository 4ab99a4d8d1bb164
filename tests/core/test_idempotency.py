"""POST retries made safe with idempotency keys, and one call's own retry policy, against the real test upstream."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import requests

import outbound
from outbound._outcome import Kind, Outcome
from outbound._policy import Policy
from tests.conftest import FakeClock, RegistryFactory
from tests.core.conftest import ASYNC_KINDS, HTTPX_LIBRARIES, SYNC_KINDS, client_of
from tests.upstream import Upstream

KINDS = pytest.mark.parametrize("kind", [*SYNC_KINDS, *ASYNC_KINDS])
KEYED = {"total": 2, "backoff_factor": 0, "backoff_jitter": 0, "idempotency_key": {}}


def _service(upstream: Upstream, kind: str, **settings: Any) -> dict[str, Any]:
    return {"base_url": upstream.url, "client": client_of(kind), **settings}


def _call(registry: outbound.Registry, kind: str, method: str, path: str, **kwargs: Any) -> Any:
    """One call through the service's client; ``retries`` goes the way each library takes per-call options."""
    retries = kwargs.pop("retries", None)
    if kind == "requests":
        if retries is not None:
            kwargs["retries"] = retries
        return registry.session("api").request(method, path, **kwargs)
    if retries is not None:
        kwargs["extensions"] = {"outbound.retries": retries}
    if kind in HTTPX_LIBRARIES:
        return registry.client("api").request(method, path, **kwargs)

    async def call() -> Any:
        return await registry.async_client("api").request(method, path, **kwargs)

    return asyncio.run(call())


def _keys(upstream: Upstream, path: str, header: str = "idempotency-key") -> list[str | None]:
    return [entry["headers"].get(header) for entry in upstream.recent(path)]


@KINDS
def test_a_keyed_post_is_retried_with_the_same_key_on_every_attempt(
    upstream: Upstream, make_registry: RegistryFactory, kind: str
) -> None:
    registry = make_registry(api=_service(upstream, kind, retry=KEYED, pause=None))
    response = _call(registry, kind, "POST", "fail-then-ok", params={"fails": 2, "key": f"keyed-{kind}"}, json={})
    assert response.status_code == 200
    keys = _keys(upstream, "fail-then-ok")
    assert len(keys) == 3
    assert len(set(keys)) == 1
    assert uuid.UUID(str(keys[0])).version == 4


@KINDS
def test_without_a_key_a_post_is_not_retried(upstream: Upstream, make_registry: RegistryFactory, kind: str) -> None:
    retry = {k: v for k, v in KEYED.items() if k != "idempotency_key"}
    registry = make_registry(api=_service(upstream, kind, retry=retry))
    response = _call(registry, kind, "POST", "fail-then-ok", params={"fails": 2, "key": f"unkeyed-{kind}"}, json={})
    assert response.status_code == 503
    assert _keys(upstream, "fail-then-ok") == [None]


@KINDS
def test_a_post_cut_mid_response_is_retried_with_its_key(
    upstream: Upstream, make_registry: RegistryFactory, kind: str
) -> None:
    # The upstream may have acted on the first attempt: only the key makes sending it again safe.
    registry = make_registry(api=_service(upstream, kind, retry={**KEYED, "total": 1}))
    with pytest.raises(outbound.ReadError):
        _call(registry, kind, "POST", "reset-mid-body", json={"amount": 10})
    keys = _keys(upstream, "reset-mid-body")
    assert len(keys) == 2
    assert keys[0] is not None
    assert keys[0] == keys[1]


@KINDS
def test_the_callers_own_key_is_kept_and_each_call_gets_its_own(
    upstream: Upstream, make_registry: RegistryFactory, kind: str
) -> None:
    settings = {**KEYED, "idempotency_key": {"header": "X-Request-Id", "methods": ["POST"]}}
    registry = make_registry(api=_service(upstream, kind, retry=settings))
    _call(registry, kind, "POST", "echo", headers={"X-Request-Id": "order-42"}, json={})
    _call(registry, kind, "POST", "echo", json={})
    _call(registry, kind, "POST", "echo", json={})
    _call(registry, kind, "PATCH", "echo", json={})  # not in this service's methods
    keys = _keys(upstream, "echo", "x-request-id")
    assert keys[0] == "order-42"
    assert keys[1] is not None
    assert keys[2] is not None
    assert keys[1] != keys[2]
    assert keys[3] is None


@KINDS
def test_one_call_can_turn_retries_off_or_on(upstream: Upstream, make_registry: RegistryFactory, kind: str) -> None:
    retry = {"total": 2, "backoff_factor": 0, "backoff_jitter": 0}
    registry = make_registry(api=_service(upstream, kind, retry=retry, pause=None))
    assert _call(registry, kind, "GET", "status/503", retries=False).status_code == 503
    assert upstream.hits_by_path["/status/503"] == 1  # a GET, normally retried twice
    params = {"fails": 1, "key": f"override-{kind}"}
    assert _call(registry, kind, "POST", "fail-then-ok", params=params, retries=True, json={}).status_code == 200
    assert upstream.hits_by_path["/fail-then-ok"] == 2  # a POST, normally never retried
    params = {"fails": 4, "key": f"override-count-{kind}"}
    assert _call(registry, kind, "GET", "fail-then-ok", params=params, retries=4).status_code == 200
    assert upstream.hits_by_path["/fail-then-ok"] == 2 + 5  # four retries, more than the service's two


@pytest.mark.parametrize("kind", SYNC_KINDS)
@pytest.mark.parametrize("wrong", ["3", -1, 101, 1.5])
def test_a_wrong_retries_value_is_refused_with_a_clear_error(
    upstream: Upstream, make_registry: RegistryFactory, kind: str, wrong: Any
) -> None:
    registry = make_registry(api=_service(upstream, kind))
    with pytest.raises(ValueError, match="retries must be True, False or a number of retries from 0 to 100"):
        _call(registry, kind, "GET", "ok", retries=wrong)
    assert upstream.hits_by_path["/ok"] == 0


def test_the_policy_retries_a_keyed_method_after_a_read_timeout() -> None:
    settings = {"base_url": "http://127.0.0.1:1/", "retry": {"idempotency_key": {"methods": ["POST"]}}}
    config = outbound.parse_config({"services": {"svc": settings}}).services["svc"]
    policy = Policy(config, clock=FakeClock(), random=lambda: 0.0)
    timeout = Outcome(Kind.READ_TIMEOUT, error=TimeoutError())
    keyed = policy.start("POST", "http://127.0.0.1:1/x", replayable=True)
    keyed.admit()
    assert keyed.record(timeout).retry is True
    other = policy.start("PATCH", "http://127.0.0.1:1/x", replayable=True)  # not a keyed method here
    other.admit()
    assert other.record(timeout).retry is False
    assert policy.keyed_methods == {"POST"}


@pytest.mark.parametrize("kind", SYNC_KINDS)
def test_the_same_request_object_sent_twice_is_two_calls_with_two_keys(
    upstream: Upstream, make_registry: RegistryFactory, kind: str
) -> None:
    registry = make_registry(api=_service(upstream, kind, retry=KEYED))
    if kind == "requests":
        session = registry.session("api")
        prepared = session.prepare_request(requests.Request("POST", session.join("echo"), json={}))
        session.send(prepared)
        session.send(prepared)
        mine = session.prepare_request(requests.Request("POST", session.join("echo"), json={}))
        mine.headers["Idempotency-Key"] = "order-7"
        session.send(mine)
        session.send(mine)
    else:
        client = registry.client("api")
        request = client.build_request("POST", "echo", json={})
        client.send(request)
        client.send(request)
        own = client.build_request("POST", "echo", json={}, headers={"Idempotency-Key": "order-7"})
        client.send(own)
        client.send(own)
    first, second, third, fourth = _keys(upstream, "echo")
    assert first != second  # outbound's key for the first call is not the caller's key for the second
    assert (third, fourth) == ("order-7", "order-7")  # the caller's own key is the caller's to reuse


def test_one_calls_retries_do_not_reach_a_call_to_another_service_made_meanwhile(
    upstream: Upstream, make_registry: RegistryFactory
) -> None:
    retry = {"total": 2, "backoff_factor": 0, "backoff_jitter": 0}
    registry = make_registry(
        api=_service(upstream, "requests", retry=retry, pause=None),
        tokens=_service(upstream, "requests", retry=retry, pause=None),
    )

    class TokenAuth(requests.auth.AuthBase):
        def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
            # Another service's GET, made while the caller's call (retries=False) is being prepared.
            registry.session("tokens").get("fail-then-ok", params={"fails": 1, "key": "token"})
            return request

    registry.session("api").get("ok", auth=TokenAuth(), retries=False)
    assert upstream.hits_by_path["/fail-then-ok"] == 2  # the token call kept its own retries
