"""``outbound.error_answer``: the HTTP answer for each failure and refusal, from errors real calls raised."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme

import outbound
from tests.conftest import RegistryFactory
from tests.core.conftest import Send
from tests.upstream import Upstream

NO_RETRY = {"total": 0}
SECRET = "s3cret-token-value"


def raised(call: Callable[[], Any]) -> BaseException:
    with pytest.raises(outbound.CallError) as caught:
        call()
    return caught.value


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def untrusted_tls() -> Iterator[str]:
    """The URL of an HTTPS upstream whose certificate no client trusts: a call fails with a plain ``CallError``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(context)
    with Upstream(tls=context) as server:
        yield server.url


def body(answer: outbound.ErrorAnswer) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(answer.body)
    return decoded


def test_an_open_breaker_is_503_with_retry_after_rounded_up(
    upstream: Upstream, make_registry: RegistryFactory, send: Send, kind: str
) -> None:
    registry = make_registry(
        billing={
            "base_url": upstream.url,
            "client": kind,
            "retry": NO_RETRY,
            "breaker": {"fail_max": 1, "reset_timeout": 30},
        }
    )
    send(registry, "billing", "GET", "status/503")
    error = raised(lambda: send(registry, "billing", "GET", "ok"))
    assert isinstance(error, outbound.CircuitOpenError)
    assert 29 < error.retry_in < 30  # a moment has passed since it opened
    answer = outbound.error_answer(error)
    assert answer is not None
    assert answer.status == 503
    assert body(answer) == {
        "error": "upstream_unavailable",
        "service": "billing",
        "reason": "circuit_open",
        "retry_in": 30,
    }
    assert answer.headers == {"Content-Type": "application/json", "Retry-After": "30"}


def test_a_rate_limit_is_503_with_retry_after(
    upstream: Upstream, make_registry: RegistryFactory, send: Send, kind: str
) -> None:
    registry = make_registry(
        api={"base_url": upstream.url, "client": kind, "rate_limit": {"rate": "1/minute", "max_wait": 0}}
    )
    send(registry, "api", "GET", "ok")
    answer = outbound.error_answer(raised(lambda: send(registry, "api", "GET", "ok")))
    assert answer is not None
    assert (answer.status, answer.reason, answer.error) == (503, "rate_limited", "upstream_unavailable")
    assert answer.retry_in is not None
    assert 1 <= answer.retry_in <= 60
    assert answer.headers["Retry-After"] == str(answer.retry_in)


def test_a_pause_the_upstream_asked_for_is_503_rate_limited(
    upstream: Upstream, make_registry: RegistryFactory, send: Send, kind: str
) -> None:
    registry = make_registry(api={"base_url": upstream.url, "client": kind, "retry": NO_RETRY})
    send(registry, "api", "GET", "status/429", params={"retry_after": 5})
    answer = outbound.error_answer(raised(lambda: send(registry, "api", "GET", "ok")))
    assert answer is not None
    assert (answer.status, answer.reason, answer.retry_in) == (503, "rate_limited", 5)


def test_saturation_is_503_without_retry_after(
    upstream: Upstream, make_registry: RegistryFactory, send: Send, kind: str
) -> None:
    # One slow call holds both the only bulkhead slot of one service and the only connection of the other.
    registry = make_registry(
        bulkhead={"base_url": upstream.url, "client": kind, "bulkhead": {"max_in_flight": 1}},
        pool={"base_url": upstream.url, "client": kind, "pool": {"max_connections": 1}, "timeout": {"pool": 0.1}},
    )
    holders = [
        threading.Thread(target=send, args=(registry, name, "GET", "slow"), kwargs={"params": {"delay": 0.6}})
        for name in ("bulkhead", "pool")
    ]
    for holder in holders:
        holder.start()
    try:
        assert upstream.wait_for(lambda: upstream.hits_by_path["/slow"] == 2)
        answers = [
            outbound.error_answer(raised(lambda n=name: send(registry, n, "GET", "ok")))
            for name in ("bulkhead", "pool")
        ]
    finally:
        for holder in holders:
            holder.join()
    assert [(a.status, a.error, a.reason, a.retry_in) for a in answers if a is not None] == [
        (503, "upstream_unavailable", "bulkhead_full", None),
        (503, "upstream_unavailable", "pool_timeout", None),
    ]
    assert all(a is not None and "Retry-After" not in a.headers for a in answers)


def test_an_egress_denial_is_403_without_retry_after(
    upstream: Upstream, make_registry: RegistryFactory, send: Send, kind: str
) -> None:
    # The URL the caller gave is one the app will not fetch (loopback, by the egress defaults): no retry can help.
    registry = make_registry(hooks={"client": kind, "egress": {"allow_ports": None}})
    error = raised(lambda: send(registry, "hooks", "GET", upstream.url + "ok"))
    assert isinstance(error, outbound.EgressDeniedError)
    answer = outbound.error_answer(error)
    assert answer is not None
    assert (answer.status, answer.error, answer.reason, answer.retry_in) == (
        403,
        "upstream_forbidden",
        "egress_denied",
        None,
    )
    assert "Retry-After" not in answer.headers
    assert upstream.hits_by_path["/ok"] == 0


def test_a_deadline_that_ran_out_is_504(
    upstream: Upstream, make_registry: RegistryFactory, send: Send, kind: str
) -> None:
    registry = make_registry(api={"base_url": upstream.url, "client": kind})
    with outbound.deadline(0.001):
        error = raised(lambda: send(registry, "api", "GET", "ok"))
    assert isinstance(error, outbound.DeadlineExceededError)
    answer = outbound.error_answer(error)
    assert answer is not None
    assert (answer.status, answer.error, answer.reason, answer.retry_in) == (
        504,
        "upstream_timeout",
        "deadline_exceeded",
        None,
    )


def test_timeouts_are_504_and_other_failures_502(
    upstream: Upstream, blackhole: dict[str, str], make_registry: RegistryFactory, send: Send, kind: str
) -> None:
    fast = {"client": kind, "retry": NO_RETRY, "breaker": {"fail_max": 100}}
    registry = make_registry(
        up={"base_url": upstream.url, "timeout": {"read": 0.1}, **fast},
        refused={"base_url": f"http://127.0.0.1:{closed_port()}/", **fast},
        unreachable={"base_url": blackhole["connect_timeout"], "timeout": {"connect": 0.1}, **fast},
    )
    cases = {
        "connect_error": ("refused", "ok"),
        "connect_timeout": ("unreachable", "ok"),
        "read_timeout": ("up", "slow?delay=0.5"),
        "read_error": ("up", "reset-mid-body"),
    }
    answers = {}
    for reason, (name, path) in cases.items():
        answer = outbound.error_answer(raised(lambda n=name, p=path: send(registry, n, "GET", p)))
        assert answer is not None
        answers[reason] = (answer.status, answer.error, answer.reason, answer.service, answer.retry_in)
    assert answers == {
        "connect_error": (502, "upstream_error", "connect_error", "refused", None),
        "connect_timeout": (504, "upstream_timeout", "connect_timeout", "unreachable", None),
        "read_timeout": (504, "upstream_timeout", "read_timeout", "up", None),
        "read_error": (502, "upstream_error", "read_error", "up", None),
    }


def test_a_write_timeout_is_504(blackhole: dict[str, str], make_registry: RegistryFactory, library: str) -> None:
    registry = make_registry(sink={"base_url": blackhole["silent"], "client": library, "timeout": {"write": 0.2}})
    answer = outbound.error_answer(raised(lambda: registry.client("sink").post("upload", content=b"x" * 64_000_000)))
    assert answer is not None
    assert (answer.status, answer.reason) == (504, "write_timeout")


def test_errors_of_the_async_client_get_the_same_answers(
    upstream: Upstream, make_registry: RegistryFactory, library: str
) -> None:
    registry = make_registry(
        api={"base_url": upstream.url, "client": library, "retry": NO_RETRY, "breaker": {"fail_max": 1}}
    )

    async def open_then_call() -> BaseException:
        client = registry.async_client("api")
        await client.get("status/503")
        try:
            await client.get("ok")
        except outbound.CircuitOpenError as error:
            return error
        raise AssertionError("the breaker did not refuse the call")

    answer = outbound.error_answer(asyncio.run(open_then_call()))
    assert answer is not None
    assert (answer.status, answer.reason) == (503, "circuit_open")


def test_the_body_holds_no_url_credential_or_message(
    upstream: Upstream, make_registry: RegistryFactory, send: Send, kind: str
) -> None:
    registry = make_registry(
        api={
            "base_url": f"http://user:{SECRET}@127.0.0.1:{closed_port()}/internal/",
            "client": kind,
            "retry": NO_RETRY,
            "headers": {"Authorization": f"Bearer {SECRET}"},
        }
    )
    error = raised(lambda: send(registry, "api", "GET", f"path?token={SECRET}"))
    answer = outbound.error_answer(error)
    assert answer is not None
    text = answer.body.decode() + json.dumps(answer.headers)
    for leak in (SECRET, "127.0.0.1", "internal", "user", str(error)):
        assert leak not in text
    assert list(body(answer)) == ["error", "service", "reason", "retry_in"]


@pytest.mark.parametrize(
    ("retry_in", "expected"),
    [(0.2, 1), (1.0, 1), (1.01, 2), (0.0, None), (math.inf, None)],
)
def test_retry_after_is_whole_seconds_rounded_up_and_omitted_when_unknown(
    retry_in: float, expected: int | None
) -> None:
    # The error as the policy raises it for an open (or, at infinity, isolated) breaker.
    error = outbound.CircuitOpenError("billing: circuit breaker is open; nothing was sent")
    error.service = "billing"
    error.retry_in = retry_in
    answer = outbound.error_answer(error)
    assert answer is not None
    assert answer.retry_in == expected
    assert answer.headers.get("Retry-After") == (None if expected is None else str(expected))


def test_errors_that_say_nothing_about_the_upstream_get_no_answer(
    untrusted_tls: str, make_registry: RegistryFactory, send: Send, kind: str
) -> None:
    # A certificate nobody trusts: a CallError that is neither a refusal nor a transport failure.
    registry = make_registry(tls={"base_url": untrusted_tls, "client": kind})
    tls_failure = raised(lambda: send(registry, "tls", "GET", "ok"))
    assert type(tls_failure).__mro__[1] is outbound.CallError
    config_error = outbound.ConfigError("bad", service="billing", key="timeout")
    for error in (tls_failure, config_error, ValueError("x"), KeyboardInterrupt()):
        assert outbound.error_answer(error) is None
