"""The sans-IO policy with a fake clock: breaker transitions, retry decisions, Retry-After, the retry budget.

The policy returns refusals rather than raising; ``admit`` below turns them into exceptions through the requests
backend's error table, as a backend's driver does.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import requests

from outbound import CircuitOpenError, parse_config
from outbound._backends import _errors
from outbound._backends import requests as requests_backend
from outbound._outcome import Kind, Outcome
from outbound._policy import Call, Policy
from outbound._retry import RetryBudget, backoff_delay, parse_retry_after
from tests.conftest import FakeClock


def make_policy(clock: FakeClock, **settings: Any) -> Policy:
    config = parse_config({"services": {"svc": {"base_url": "http://127.0.0.1:1/", **settings}}}).services["svc"]
    return Policy(config, clock=clock, random=lambda: 0.0)


class BackendCall(Call):
    """A call whose ``admit`` raises a refusal as the requests backend's error, as its driver does."""

    __slots__ = ()

    def admit(self) -> None:  # type: ignore[override]
        refusal = super().admit()
        if refusal is not None:
            attributes: dict[str, object] = {"request": None, "response": None}
            native = requests_backend._NATIVE_REJECTIONS
            raise _errors.rejected(self, self.service, refusal, native, attributes)  # type: ignore[arg-type]


def start(policy: Policy, method: str = "GET", replayable: bool = True) -> Call:
    return BackendCall(policy, method, "http://user:secret@127.0.0.1:1/x?token=abc", replayable, ())


def attempt(call: Call, outcome: Outcome) -> bool:
    call.admit()
    return call.record(outcome).retry


CONNECT = Outcome(Kind.CONNECT_ERROR, error=OSError("refused"))
READ_TIMEOUT = Outcome(Kind.READ_TIMEOUT, error=TimeoutError("slow"))
OK = Outcome(Kind.RESPONSE, status=200)
UNAVAILABLE = Outcome(Kind.RESPONSE, status=503)
THROTTLED = Outcome(Kind.RESPONSE, status=429)  # retryable, and not a breaker failure: isolates the budget


def fail_once(policy: Policy, outcome: Outcome = CONNECT) -> None:
    call = start(policy, "POST", replayable=False)
    assert attempt(call, outcome) is False


# -- breaker ---------------------------------------------------------------------------------------------------


def test_breaker_opens_after_fail_max_consecutive_failures_and_a_success_resets_the_count() -> None:
    clock = FakeClock()
    policy = make_policy(clock, breaker={"fail_max": 3})
    fail_once(policy)
    fail_once(policy)
    attempt(start(policy), OK)
    assert policy.breaker.failures == 0
    for _ in range(3):
        fail_once(policy)
    assert policy.breaker.state == "open"


def test_open_breaker_rejects_with_seconds_until_trial_then_admits_exactly_one_trial(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    policy = make_policy(clock, breaker={"fail_max": 1, "reset_timeout": 10})
    with caplog.at_level(logging.INFO, logger="outbound.breaker"):
        fail_once(policy)
        clock.advance(4)
        with pytest.raises(CircuitOpenError) as rejected:
            start(policy).admit()
        assert rejected.value.retry_in == pytest.approx(6.0)
        assert isinstance(rejected.value, requests.ConnectionError)
        assert "token" not in str(rejected.value)

        clock.advance(6)
        trial = start(policy)
        trial.admit()
        assert policy.breaker.state == "half-open"
        with pytest.raises(CircuitOpenError) as busy:
            start(policy).admit()
        assert busy.value.retry_in == 0.0
        trial.record(OK)
    assert policy.breaker.state == "closed"
    levels = [(r.levelname, r.getMessage().split(":")[0]) for r in caplog.records]
    assert levels[0][0] == "WARNING"
    assert "opened" in caplog.records[0].getMessage()
    assert ("INFO", "circuit breaker for 'svc' closed") in levels
    assert policy.stats.short_circuited == 2


def test_failed_trial_reopens_for_another_reset_timeout() -> None:
    clock = FakeClock()
    policy = make_policy(clock, breaker={"fail_max": 1, "reset_timeout": 5})
    fail_once(policy)
    clock.advance(5)
    fail_once(policy)
    assert policy.breaker.state == "open"
    assert policy.breaker.retry_in() == pytest.approx(5.0)


def test_success_threshold_needs_that_many_successful_trials() -> None:
    clock = FakeClock()
    policy = make_policy(clock, breaker={"fail_max": 1, "reset_timeout": 1, "success_threshold": 2})
    fail_once(policy)
    clock.advance(1)
    attempt(start(policy), OK)
    assert policy.breaker.state == "half-open"
    attempt(start(policy), OK)
    assert policy.breaker.state == "closed"


def test_half_open_max_calls_bounds_concurrent_trials() -> None:
    clock = FakeClock()
    policy = make_policy(clock, breaker={"fail_max": 1, "reset_timeout": 1, "half_open_max_calls": 3})
    fail_once(policy)
    clock.advance(1)
    trials = [start(policy) for _ in range(3)]
    for trial in trials:
        trial.admit()
    with pytest.raises(CircuitOpenError):
        start(policy).admit()
    trials[0].record(OK)  # success_threshold 1: closes
    assert policy.breaker.state == "closed"


@pytest.mark.parametrize("neutral", [Kind.POOL_TIMEOUT, Kind.OTHER_ERROR])
def test_pool_timeouts_and_local_errors_never_count_against_the_upstream(neutral: Kind) -> None:
    clock = FakeClock()
    policy = make_policy(clock, breaker={"fail_max": 1, "reset_timeout": 1})
    for _ in range(5):
        attempt(start(policy), Outcome(neutral, error=RuntimeError("local")))
    assert policy.breaker.state == "closed"
    assert policy.breaker.failures == 0
    fail_once(policy)
    clock.advance(1)
    trial = start(policy)
    trial.admit()
    trial.record(Outcome(neutral, error=RuntimeError("local")))  # frees the trial slot without a verdict
    assert policy.breaker.state == "half-open"
    attempt(start(policy), OK)
    assert policy.breaker.state == "closed"


def test_an_abandoned_attempt_frees_its_trial_slot() -> None:
    clock = FakeClock()
    policy = make_policy(clock, breaker={"fail_max": 1, "reset_timeout": 1})
    fail_once(policy)
    clock.advance(1)
    cancelled = start(policy)
    cancelled.admit()
    cancelled.abandon()
    assert attempt(start(policy), OK) is False
    assert policy.breaker.state == "closed"
    assert policy.stats.in_flight == 0


def test_a_trial_from_an_earlier_half_open_period_has_no_say() -> None:
    clock = FakeClock()
    policy = make_policy(clock, breaker={"fail_max": 1, "reset_timeout": 1, "half_open_max_calls": 2})
    fail_once(policy)
    clock.advance(1)
    slow_trial = start(policy)
    slow_trial.admit()
    fail_once(policy)  # the other trial fails: open again
    clock.advance(1)
    start(policy).admit()  # a new half-open period
    slow_trial.record(OK)  # arrives late: must not close the breaker
    assert policy.breaker.state == "half-open"


def test_calls_admitted_before_the_breaker_opened_do_not_move_it() -> None:
    clock = FakeClock()
    policy = make_policy(clock, breaker={"fail_max": 1, "reset_timeout": 1})
    early = start(policy, "POST", replayable=False)
    early.admit()
    fail_once(policy)
    early.record(OK)
    assert policy.breaker.state == "open"


# -- retries ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "outcome", "retried"),
    [
        ("GET", UNAVAILABLE, True),
        ("POST", UNAVAILABLE, False),
        ("GET", Outcome(Kind.RESPONSE, status=500), False),  # not in status_forcelist
        ("GET", Outcome(Kind.RESPONSE, status=404), False),
        ("POST", CONNECT, True),  # nothing was sent: safe for any method
        ("POST", Outcome(Kind.CONNECT_TIMEOUT, error=TimeoutError()), True),
        ("GET", READ_TIMEOUT, True),
        ("POST", READ_TIMEOUT, False),
        ("PUT", Outcome(Kind.READ_ERROR, error=OSError()), True),
        ("PATCH", Outcome(Kind.READ_ERROR, error=OSError()), False),
        ("GET", Outcome(Kind.POOL_TIMEOUT, error=TimeoutError()), False),
        ("GET", Outcome(Kind.OTHER_ERROR, error=ValueError()), False),
    ],
)
def test_what_is_retried_depends_on_method_and_outcome(method: str, outcome: Outcome, retried: bool) -> None:
    assert attempt(start(make_policy(FakeClock()), method), outcome) is retried


def test_post_is_retried_on_statuses_when_configured() -> None:
    policy = make_policy(FakeClock(), retry={"allowed_methods": ["GET", "POST"]})
    assert attempt(start(policy, "POST"), UNAVAILABLE) is True


def test_retries_stop_after_total_and_for_bodies_that_cannot_be_replayed() -> None:
    policy = make_policy(FakeClock(), retry={"total": 2})
    call = start(policy)
    assert [attempt(call, UNAVAILABLE) for _ in range(3)] == [True, True, False]
    assert attempt(start(policy, replayable=False), CONNECT) is False
    assert policy.stats.retries == 2


def test_backoff_is_exponential_with_jitter_and_capped() -> None:
    config = parse_config(
        {"services": {"s": {"base_url": "http://h/", "retry": {"backoff_factor": 0.5, "backoff_max": 3}}}}
    ).services["s"]
    no_jitter = [backoff_delay(config.retry, n, lambda: 0.0) for n in (1, 2, 3, 4)]
    assert no_jitter == [0.5, 1.0, 2.0, 3.0]
    assert backoff_delay(config.retry, 1, lambda: 1.0) == 0.5 + config.retry.backoff_jitter


def test_retry_after_is_honoured_up_to_its_cap() -> None:
    clock = FakeClock()
    policy = make_policy(clock, retry={"retry_after_max": 5})
    call = start(policy)
    call.admit()
    assert call.record(Outcome(Kind.RESPONSE, status=503, retry_after="3")).delay == 3.0
    clock.advance(3.0)  # the wait asked for: the pause it started is over for the retry
    call.admit()
    assert call.record(Outcome(Kind.RESPONSE, status=429, retry_after="60")).retry is False


def test_retry_after_never_goes_past_the_total_deadline() -> None:
    clock = FakeClock()
    policy = make_policy(clock, timeout={"total": 10}, retry={"retry_after_max": 60})
    call = start(policy)
    clock.advance(8)
    call.admit()
    assert call.record(Outcome(Kind.RESPONSE, status=503, retry_after="5")).retry is False


def test_retry_after_is_ignored_when_disabled() -> None:
    # pause: None, or the pause the 503 starts would deny the retry (test_policy_stages.py covers that).
    policy = make_policy(FakeClock(), retry={"respect_retry_after": False, "backoff_factor": 0.1}, pause=None)
    call = start(policy)
    call.admit()
    assert call.record(Outcome(Kind.RESPONSE, status=503, retry_after="60")).delay == pytest.approx(0.1)


def test_retries_stop_once_the_breaker_opens() -> None:
    policy = make_policy(FakeClock(), breaker={"fail_max": 2}, retry={"total": 5})
    call = start(policy)
    assert attempt(call, CONNECT) is True
    assert attempt(call, CONNECT) is False  # second consecutive failure opened the breaker
    assert policy.breaker.state == "open"


def test_attempt_timeouts_are_cut_to_the_remaining_deadline() -> None:
    clock = FakeClock()
    call = start(make_policy(clock, timeout={"total": 5}))
    clock.advance(4)
    limits = call.attempt_timeouts(3.0, 10.0, None, 0.5)
    assert (limits.connect, limits.read, limits.write, limits.pool) == pytest.approx((1.0, 1.0, 1.0, 0.5))


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past
        ("soon", None),
        ("-5", None),
        (None, None),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, now=lambda: 1445412450.0) == expected


# -- budget ----------------------------------------------------------------------------------------------------


def test_budget_bounds_retries_to_a_ratio_of_recent_requests() -> None:
    clock = FakeClock()
    policy = make_policy(clock, retry={"total": 3, "budget": {"ratio": 0.2, "min_per_second": 0}})
    attempts = 0
    for _ in range(100):
        call = start(policy)
        while True:
            attempts += 1
            if not attempt(call, THROTTLED):
                break
    assert attempts <= 120


def test_budget_reserve_lets_a_quiet_service_retry_and_the_window_slides() -> None:
    clock = FakeClock()
    config = parse_config(
        {"services": {"s": {"base_url": "http://h/", "retry": {"budget": {"ratio": 0, "min_per_second": 0.5}}}}}
    ).services["s"]
    assert config.retry.budget is not None
    budget = RetryBudget(config.retry.budget, clock=clock)
    assert [budget.try_spend() for _ in range(6)] == [True] * 5 + [False]  # 0.5/s over a 10 s window
    clock.advance(11)
    assert budget.try_spend() is True


def test_without_budget_every_call_retries_fully() -> None:
    policy = make_policy(FakeClock(), retry={"total": 3, "budget": None})
    for _ in range(50):
        call = start(policy)
        while attempt(call, THROTTLED):
            pass
    assert policy.stats.retries == 150


def test_stats_count_calls_errors_and_latency() -> None:
    clock = FakeClock()
    policy = make_policy(clock, breaker={"failure_statuses": [503]})
    call = start(policy)
    call.admit()
    clock.advance(0.25)
    call.record(OK)
    attempt(start(policy, "POST"), UNAVAILABLE)
    snapshot = policy.stats.snapshot().as_dict()
    assert snapshot["requests"] == 2
    assert snapshot["errors"] == 1
    assert snapshot["latency_ms"]["p99"] == 250.0
    assert policy.stats.last_error is not None
    assert "503" in policy.stats.last_error.message
    assert "token" not in policy.stats.last_error.message
    assert "secret" not in policy.stats.last_error.message
