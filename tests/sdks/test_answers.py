"""The response a refusal becomes for an SDK (``outbound/_sdk.py``), and ``outbound.sdk_error``: unit tests, no
server."""

from __future__ import annotations

import json

import pytest

import outbound
from outbound._sdk import answer, answers


def _error(cls: type[outbound.OutboundError], retry_in: float = 0.0) -> outbound.OutboundError:
    error = cls("refused for a test")
    if retry_in:
        error.retry_in = retry_in  # type: ignore[attr-defined]
    return error


@pytest.mark.parametrize(
    ("cls", "status", "reason"),
    [
        (outbound.CircuitOpenError, 503, "circuit_open"),
        (outbound.BulkheadFullError, 503, "bulkhead_full"),
        (outbound.RateLimitedError, 429, "rate_limited"),
        (outbound.DeadlineExceededError, 504, "deadline_exceeded"),
        (outbound.RejectedError, 503, "rejected"),
        (outbound.RegistryClosedError, 503, "registry_closed"),
        (outbound.EventLoopMismatchError, 500, "event_loop_mismatch"),
        (outbound.PoolTimeoutError, 503, "pool_timeout"),
    ],
)
def test_each_refusal_has_its_status_and_reason(cls: type[outbound.OutboundError], status: int, reason: str) -> None:
    found = answer(_error(cls), "ai")
    assert found.status == status
    assert found.headers["x-outbound-refusal"] == reason
    assert found.headers["x-should-retry"] == "false"
    assert found.headers["stripe-should-retry"] == "false"
    body = json.loads(found.body)
    assert body["outbound"] == {"service": "ai", "reason": reason, "retry_in": None}
    assert body["error"]["code"] == reason
    assert "refused for a test" in body["error"]["message"]
    assert "retry-after" not in found.headers


@pytest.mark.parametrize(
    ("cls", "status", "reason"),
    [
        (outbound.ConnectError, 502, "connect_error"),
        (outbound.ConnectTimeoutError, 504, "connect_timeout"),
        (outbound.ReadTimeoutError, 504, "read_timeout"),
        (outbound.WriteTimeoutError, 504, "write_timeout"),
        (outbound.ReadError, 502, "read_error"),
        (outbound.TransportFailure, 502, "transport_failure"),
    ],
)
def test_each_transport_failure_has_its_status_and_reason(
    cls: type[outbound.OutboundError], status: int, reason: str
) -> None:
    found = answer(_error(cls), "ai")
    assert found.status == status
    assert found.headers["x-outbound-failure"] == reason
    assert "x-outbound-refusal" not in found.headers
    assert found.headers["x-should-retry"] == "false"
    assert found.headers["stripe-should-retry"] == "false"
    body = json.loads(found.body)
    assert body["error"] == {
        "type": "outbound_failure",
        "code": reason,
        "message": f"outbound gave up on the call ({reason}): refused for a test",
    }


def test_which_switch_answers_what() -> None:
    refusals_only = outbound.SdkConfig(final_responses=False)
    failures_only = outbound.SdkConfig(answer_refusals=False)
    for error in (_error(outbound.CircuitOpenError), _error(outbound.PoolTimeoutError)):
        assert answers(error, refusals_only, 2)
        assert not answers(error, failures_only, 2)
    for error in (_error(outbound.ConnectError), _error(outbound.ReadTimeoutError)):
        assert answers(error, failures_only, 2)
        assert not answers(error, refusals_only, 2)
        assert not answers(error, failures_only, 0)  # a call outbound was not to retry: the SDK's layer


def test_retry_after_is_whole_seconds_rounded_up_and_only_when_known() -> None:
    assert answer(_error(outbound.CircuitOpenError, 2.1), "ai").headers["retry-after"] == "3"
    assert json.loads(answer(_error(outbound.CircuitOpenError, 2.1), "ai").body)["outbound"]["retry_in"] == 3
    assert "retry-after" not in answer(_error(outbound.CircuitOpenError, float("inf")), "ai").headers


def test_sdk_error_follows_the_cause_chain_and_gives_up_on_others() -> None:
    refusal = _error(outbound.CircuitOpenError)
    wrapped = RuntimeError("an SDK's wrapper")
    wrapped.__cause__ = refusal
    assert outbound.sdk_error(wrapped) is refusal
    assert outbound.sdk_error(ValueError("unrelated")) is None
    looping = ValueError("a cycle")
    looping.__cause__ = looping
    assert outbound.sdk_error(looping) is None  # bounded
