"""The richer policy with a fake clock: the failure-rate and slow-call window, the bulkhead, a pause the upstream
asked for, and the client-side rate limit. Real-server tests of the same are in ``test_policy_live.py``."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import pytest

import outbound
from outbound import parse_config
from outbound._breaker import CLOSED, OPEN
from outbound._config import WindowConfig
from outbound._outcome import Kind, Outcome, Rejection, Wait
from outbound._policy import Call, Policy
from outbound._ratelimit import RateLimit
from outbound._window import FailureRate
from tests.conftest import FakeClock
from tests.upstream import Upstream

OK = Outcome(Kind.RESPONSE, status=200)
FAILED = Outcome(Kind.RESPONSE, status=503)
THROTTLED = Outcome(Kind.RESPONSE, status=429, retry_after="3")


def make_policy(clock: FakeClock, **settings: Any) -> Policy:
    config = parse_config({"services": {"svc": {"base_url": "http://127.0.0.1:1/", **settings}}}).services["svc"]
    return Policy(config, clock=clock, random=lambda: 0.0)


def start(policy: Policy, method: str = "GET") -> Call:
    return policy.start(method, "http://127.0.0.1:1/x", replayable=True)


def one_call(policy: Policy, outcome: Outcome, clock: FakeClock | None = None, seconds: float = 0.0) -> None:
    call = start(policy)
    assert call.admit() is None
    if clock is not None:
        clock.advance(seconds)
    assert call.record(outcome).retry is False


RATE = {"mode": "rate", "window": {"type": "count", "size": 10}, "minimum_calls": 10, "failure_rate": 0.5}
NO_RETRY = {"total": 0}


# -- breaker mode "rate" ------------------------------------------------------------------------------------------


def test_a_failure_rate_opens_the_breaker_that_consecutive_failures_never_would() -> None:
    # 40 % of calls fail, never more than two in a row: fail_max 3 never trips; a 0.4 rate does.
    pattern = [FAILED, FAILED, OK, OK, OK] * 4
    consecutive = make_policy(FakeClock(), retry=NO_RETRY, breaker={"fail_max": 3})
    rate = make_policy(FakeClock(), retry=NO_RETRY, breaker={**RATE, "failure_rate": 0.4})
    for outcome in pattern:
        one_call(consecutive, outcome)
    assert consecutive.breaker.state == CLOSED
    calls = 0
    while rate.breaker.state != OPEN:
        one_call(rate, pattern[calls])
        calls += 1
    assert calls == 10  # the first moment the window holds minimum_calls (10) calls, 4 of them failed


def test_the_rate_is_not_judged_before_minimum_calls() -> None:
    policy = make_policy(FakeClock(), retry=NO_RETRY, breaker={**RATE, "minimum_calls": 5})
    for _ in range(4):
        one_call(policy, FAILED)
    assert policy.breaker.state == CLOSED  # 100 % failed, but only 4 calls
    one_call(policy, FAILED)
    assert policy.breaker.state == OPEN


def test_a_count_window_forgets_the_oldest_call() -> None:
    policy = make_policy(FakeClock(), retry=NO_RETRY, breaker={**RATE, "failure_rate": 0.5})
    for outcome in [FAILED] * 4 + [OK] * 6:
        one_call(policy, outcome)
    rule = policy.breaker.rule
    assert (rule.failures, rule.calls) == (4, 10)
    for _ in range(4):
        one_call(policy, OK)  # each pushes one of the four failures out
    assert (rule.failures, rule.calls) == (0, 10)
    assert policy.breaker.state == CLOSED


def test_a_time_window_forgets_calls_older_than_its_seconds() -> None:
    clock = FakeClock()
    window = {"type": "time", "seconds": 10}
    policy = make_policy(clock, retry=NO_RETRY, breaker={**RATE, "window": window, "minimum_calls": 4})
    for _ in range(3):
        one_call(policy, FAILED)
    clock.advance(11)  # those three leave the window
    one_call(policy, FAILED)
    assert policy.breaker.state == CLOSED
    assert policy.breaker.rule.calls == 1
    for _ in range(3):
        clock.advance(2)
        one_call(policy, FAILED)
    assert policy.breaker.state == OPEN  # four failures within 10 s


def test_slow_calls_open_the_breaker_though_every_call_succeeds() -> None:
    clock = FakeClock()
    breaker = {**RATE, "minimum_calls": 4, "slow_call_duration": 2.0, "slow_call_rate": 0.6}
    policy = make_policy(clock, retry=NO_RETRY, breaker=breaker)
    for seconds in (0.1, 2.5, 2.0, 1.9):  # a call of exactly slow_call_duration is slow
        one_call(policy, OK, clock, seconds)
    assert policy.breaker.state == CLOSED  # 2 of 4 slow: 50 %
    one_call(policy, OK, clock, 3.0)
    assert policy.breaker.state == OPEN  # 3 of 5: 60 %
    assert policy.breaker.rule.describe() == "a slow-call rate of 60% (calls over 2s) in 5 calls"


def test_health_shows_the_current_rates() -> None:
    clock = FakeClock()
    breaker = {**RATE, "minimum_calls": 100, "slow_call_duration": 1.0}
    policy = make_policy(clock, retry=NO_RETRY, breaker=breaker)
    snapshot = policy.breaker.rule.snapshot()
    assert snapshot == {"failures": 0, "calls": 0, "failure_rate": None, "slow_call_rate": None}
    one_call(policy, FAILED, clock, 0.1)
    one_call(policy, OK, clock, 1.5)
    one_call(policy, OK, clock, 0.1)
    one_call(policy, OK, clock, 0.1)
    assert policy.breaker.rule.snapshot() == {"failures": 1, "calls": 4, "failure_rate": 0.25, "slow_call_rate": 0.25}


def test_the_window_loses_no_update_under_64_threads() -> None:
    breaker = make_policy(FakeClock(), breaker=RATE).config.breaker
    window = FailureRate(dataclasses.replace(breaker, window=WindowConfig(type="count", size=100_000)))
    barrier = threading.Barrier(64)

    def record(index: int) -> None:
        barrier.wait()
        for n in range(500):
            if (index + n) % 4 == 0:
                window.failure(0.0)
            else:
                window.success(0.0)

    threads = [threading.Thread(target=record, args=(index,)) for index in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert window.calls == 64 * 500
    assert window.failures == 64 * 500 // 4
    assert sum(1 for slot in window._slots if slot) == 64 * 500


def test_rate_mode_never_counts_failures_for_the_fleet() -> None:
    shared = _RecordingShared()
    policy = make_policy(FakeClock(), retry=NO_RETRY, breaker=RATE)
    policy.breaker.shared = shared
    one_call(policy, FAILED)
    one_call(policy, OK)
    assert shared.calls == []  # the window is this process's; consecutive mode would have sent failure, recovered
    consecutive = make_policy(FakeClock(), retry=NO_RETRY)
    consecutive.breaker.shared = shared
    one_call(consecutive, FAILED)
    one_call(consecutive, OK)
    assert shared.calls == ["failure", "recovered"]


class _RecordingShared:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def failure(self, cause: object) -> None:
        self.calls.append("failure")

    def recovered(self) -> None:
        self.calls.append("recovered")

    def transition(self, new: str, reason: str, open_seconds: float, cause: object) -> None:
        pass

    def paused(self, seconds: float) -> None:
        pass

    def claim_trial(self, seconds: float) -> bool:
        return True


# -- the bulkhead --------------------------------------------------------------------------------------------------


def test_the_bulkhead_refuses_the_call_past_max_in_flight_and_admits_again_when_one_ends() -> None:
    policy = make_policy(FakeClock(), bulkhead={"max_in_flight": 2})
    first, second, third = start(policy), start(policy), start(policy)
    assert first.admit() is None
    assert second.admit() is None
    refusal = third.admit()
    assert isinstance(refusal, Rejection)
    assert refusal.reason == "bulkhead_full"
    assert policy.bulkhead is not None
    assert policy.bulkhead.snapshot().in_flight == 2
    first.record(OK)
    assert policy.bulkhead.snapshot().in_flight == 1
    assert start(policy).admit() is None


def test_a_call_holds_its_slot_across_retries() -> None:
    policy = make_policy(FakeClock(), bulkhead={"max_in_flight": 1}, retry={"total": 2, "backoff_factor": 0})
    call = start(policy)
    assert call.admit() is None
    assert call.record(FAILED).retry is True
    assert isinstance(start(policy).admit(), Rejection)  # the retrying call still holds the one slot
    assert call.admit() is None  # its retry needs no new slot
    call.record(OK)
    assert policy.bulkhead is not None
    assert policy.bulkhead.in_flight == 0


def test_waiting_callers_get_freed_slots_first_come_first_served() -> None:
    clock = FakeClock()
    policy = make_policy(clock, bulkhead={"max_in_flight": 1, "max_wait": 5})
    holder, early, late = start(policy), start(policy), start(policy)
    assert holder.admit() is None
    early_wait, late_wait = early.admit(), late.admit()
    assert isinstance(early_wait, Wait)
    assert isinstance(late_wait, Wait)
    assert early_wait.seconds == 5.0
    assert early_wait.wake is not None
    assert late_wait.wake is not None
    newcomer = start(policy)
    assert isinstance(newcomer.admit(), Wait)  # a newcomer queues behind them: the slot is never free to grab
    holder.record(OK)
    assert early_wait.wake.is_set()
    assert not late_wait.wake.is_set()
    assert early.admit() is None  # the slot handed to it
    assert isinstance(late.admit(), Wait)
    newcomer.abandon()  # gives up (interrupted): it leaves the queue
    early.record(OK)
    assert late_wait.wake.is_set()
    assert late.admit() is None
    late.record(OK)
    assert policy.bulkhead is not None
    assert policy.bulkhead.snapshot().in_flight == 0
    assert policy.bulkhead.snapshot().waiting == 0


def test_a_waiter_that_gives_up_after_it_was_handed_a_slot_passes_it_on() -> None:
    clock = FakeClock()
    policy = make_policy(clock, bulkhead={"max_in_flight": 1, "max_wait": 5})
    holder, first, second = start(policy), start(policy), start(policy)
    holder.admit()
    first_wait, second_wait = first.admit(), second.admit()
    assert isinstance(first_wait, Wait)
    assert isinstance(second_wait, Wait)
    holder.record(OK)
    assert first_wait.wake is not None
    assert first_wait.wake.is_set()
    first.abandon()  # interrupted before it took the slot
    assert second_wait.wake is not None
    assert second_wait.wake.is_set()
    assert second.admit() is None
    assert policy.bulkhead is not None
    assert policy.bulkhead.in_flight == 1


def test_a_bulkhead_wait_ends_at_max_wait_or_the_deadline_whichever_is_first() -> None:
    clock = FakeClock()
    policy = make_policy(clock, bulkhead={"max_in_flight": 1, "max_wait": 5}, timeout={"total": 2})
    start(policy).admit()
    waiting = start(policy)
    first = waiting.admit()
    assert isinstance(first, Wait)
    assert first.seconds == pytest.approx(2.0 - 0.005)  # the deadline comes first, less deadline.min_time
    clock.advance(2.0)
    refusal = waiting.admit()
    assert isinstance(refusal, Rejection)
    assert refusal.reason == "bulkhead_full"
    assert "none ended within 5s" in refusal.detail
    assert policy.bulkhead is not None
    assert policy.bulkhead.snapshot().waiting == 0


def test_bulkhead_refusals_are_counted_and_never_against_the_upstream() -> None:
    policy = make_policy(FakeClock(), bulkhead={"max_in_flight": 1}, breaker={"fail_max": 1})
    start(policy).admit()
    for _ in range(3):
        assert isinstance(start(policy).admit(), Rejection)
    assert policy.stats.snapshot().rejected == {"bulkhead_full": 3}
    assert policy.breaker.state == CLOSED


# -- a pause the upstream asked for ---------------------------------------------------------------------------------


def test_a_429_with_retry_after_pauses_every_caller() -> None:
    clock = FakeClock()
    policy = make_policy(clock, retry=NO_RETRY)
    one_call(policy, THROTTLED)
    refusal = start(policy).admit()
    assert isinstance(refusal, Rejection)
    assert refusal.reason == "rate_limited"
    assert refusal.retry_in == pytest.approx(3.0)
    assert "3.0s left" in refusal.detail
    assert policy.pause is not None
    assert policy.pause.paused_for() == pytest.approx(3.0)
    clock.advance(3.0)
    assert start(policy).admit() is None
    assert policy.pause.paused_for() is None


def test_a_pause_is_capped_by_retry_after_max_and_needs_retry_after() -> None:
    clock = FakeClock()
    policy = make_policy(clock, retry={"total": 0, "retry_after_max": 4})
    one_call(policy, Outcome(Kind.RESPONSE, status=429, retry_after="3600"))
    assert policy.pause is not None
    assert policy.pause.paused_for() == pytest.approx(4.0)
    clock.advance(4.0)
    one_call(policy, Outcome(Kind.RESPONSE, status=429))  # no Retry-After: no pause
    one_call(policy, Outcome(Kind.RESPONSE, status=500, retry_after="5"))  # not a pausing status
    assert policy.pause.paused_for() is None


def test_a_call_waits_out_a_pause_within_max_wait_and_its_deadline() -> None:
    clock = FakeClock()
    policy = make_policy(clock, retry=NO_RETRY, pause={"max_wait": 5}, timeout={"total": 10})
    one_call(policy, THROTTLED)
    waiting = start(policy).admit()
    assert isinstance(waiting, Wait)
    assert waiting.seconds == pytest.approx(3.0)
    short = make_policy(clock, retry=NO_RETRY, pause={"max_wait": 5}, timeout={"total": 2})
    one_call(short, THROTTLED)
    refusal = start(short).admit()
    assert isinstance(refusal, Rejection)  # the pause outlasts its deadline: refused now, not after waiting


def test_the_call_that_was_asked_to_wait_retries_after_exactly_that_wait_despite_jitter() -> None:
    clock = FakeClock()
    policy = Policy(
        parse_config(
            {"services": {"svc": {"base_url": "http://127.0.0.1:1/", "retry": {"backoff_jitter": 5.0}}}}
        ).services["svc"],
        clock=clock,
        random=lambda: 1.0,  # the most jitter there is
    )
    call = start(policy)
    call.admit()
    decision = call.record(THROTTLED)
    assert decision.retry is True
    assert decision.delay == 3.0
    clock.advance(decision.delay)
    assert call.admit() is None  # its own pause never refuses it


def test_pause_none_turns_pauses_off() -> None:
    policy = make_policy(FakeClock(), retry=NO_RETRY, pause=None)
    one_call(policy, THROTTLED)
    assert policy.pause is None
    assert start(policy).admit() is None


# -- the client-side rate limit -----------------------------------------------------------------------------------


@pytest.fixture
def wall() -> FakeClock:
    """A fake clock for the policy and the rate limit's window (which reads real time otherwise: a call waits for
    its permit in real time)."""
    return FakeClock(start=1_700_000_000.0)


def make_limited(wall: FakeClock, **settings: Any) -> tuple[Policy, RateLimit]:
    policy = make_policy(wall, **settings)
    assert policy.rate_limit is not None
    policy.rate_limit._taken._clock = wall
    return policy, policy.rate_limit


def test_the_rate_limit_admits_its_rate_then_refuses_naming_the_next_permit(wall: FakeClock) -> None:
    policy, limit = make_limited(wall, rate_limit={"rate": "5/second", "max_wait": 0})
    for _ in range(5):
        assert start(policy).admit() is None
        wall.advance(0.1)
    refusal = start(policy).admit()
    assert isinstance(refusal, Rejection)
    assert refusal.reason == "rate_limited"
    assert refusal.retry_in == pytest.approx(0.5)  # the first permit, taken at 0.0, comes back at 1.0
    assert "5/second reached" in refusal.detail
    assert limit.snapshot().remaining == 0
    wall.advance(0.501)
    assert start(policy).admit() is None


def test_a_call_waits_for_the_next_permit_within_max_wait_but_never_past_its_deadline(wall: FakeClock) -> None:
    policy, _ = make_limited(wall, rate_limit={"rate": "2/second", "max_wait": 0.5}, timeout={"total": 5})
    start(policy).admit()
    wall.advance(0.7)
    start(policy).admit()
    waiting = start(policy)
    first = waiting.admit()
    assert isinstance(first, Wait)
    assert first.seconds == pytest.approx(0.3)
    wall.advance(0.301)
    assert waiting.admit() is None
    # The next permit is 0.699 s away, longer than max_wait: refused at once rather than after waiting in vain.
    refusal = start(policy).admit()
    assert isinstance(refusal, Rejection)
    assert refusal.retry_in == pytest.approx(0.699)
    tight, _ = make_limited(wall, rate_limit={"rate": "1/second", "max_wait": 5}, timeout={"total": 0.2})
    start(tight).admit()
    assert isinstance(start(tight).admit(), Rejection)  # 1 s to wait, 0.2 s of deadline


def test_every_attempt_takes_a_permit(wall: FakeClock) -> None:
    policy, _ = make_limited(wall, rate_limit={"rate": "2/minute", "max_wait": 0}, retry={"backoff_factor": 0})
    call = start(policy)
    assert call.admit() is None
    assert call.record(FAILED).retry is True
    assert call.admit() is None
    assert call.record(FAILED).retry is True
    refusal = call.admit()  # the third attempt finds no permit: the call ends refused
    assert isinstance(refusal, Rejection)
    assert refusal.reason == "rate_limited"


def test_the_window_keeps_only_the_last_permits_and_starts_no_thread() -> None:
    clock = FakeClock()
    policy, limit = make_limited(clock, rate_limit={"rate": "50/second", "max_wait": 0})
    before = threading.active_count()
    admitted = sum(start(policy).admit() is None for _ in range(200))
    assert admitted == 50
    assert threading.active_count() == before  # limits' own memory storage started a timer thread on hits
    assert len(limit._taken._taken) == 50
    clock.advance(0.999)
    assert start(policy).admit() is not None  # every permit was taken less than a second ago
    assert limit.snapshot().remaining == 0
    clock.advance(0.001)  # the first 50 are a second old: room for 50 again, and the old times let go
    assert limit.snapshot().remaining == 50
    assert len(limit._taken._taken) == 0
    assert sum(start(policy).admit() is None for _ in range(60)) == 50


def test_a_fake_clock_does_not_hold_a_call_waiting_for_its_permit(upstream: Upstream) -> None:
    # A test moves breakers with a fake clock; a call waits for its permit in real time. Were the window on that
    # clock, a clock that stands still would keep the permit away and the wait would never end (max_wait included).
    clock = FakeClock()
    settings = {"base_url": upstream.url, "rate_limit": {"rate": "2/second", "max_wait": 2}}
    registry = outbound.Registry.from_mapping({"services": {"api": settings}}, clock=clock)
    try:
        session = registry.session("api")
        answers: list[object] = []
        for _ in range(2):
            assert session.get("ok").status_code == 200
        third = threading.Thread(target=lambda: answers.append(session.get("ok").status_code), daemon=True)
        third.start()
        third.join(timeout=5)
        assert answers == [200]  # after its permit came back, ~1 s later in real time
    finally:
        registry.close()


def test_a_daily_quota_is_exact_after_300000_permits() -> None:
    # What a permit costs with the window full (each take compares with the oldest and lets it go) is row 11e.
    clock = FakeClock()
    _, limit = make_limited(clock, rate_limit={"rate": "300000/day", "max_wait": 0})
    window = limit._taken
    for _ in range(300_000):
        assert window.take() is None
        clock.advance(0.0001)
    assert window.take() == pytest.approx(86_400 - 30.0)  # the first permit comes back a day after it was taken
    assert limit.snapshot().remaining == 0
    clock.advance(86_400 - 30.0 + 0.00005)  # a day after the first: that one's place is free, and only that one's
    assert limit.snapshot().remaining == 1
    assert window.take() is None
    assert window.take() == pytest.approx(0.00005, abs=1e-6)  # the second comes back next (sums of floats)
    assert len(window._taken) == 300_000  # the times of the last day, no more


def test_no_wait_leaves_an_attempt_less_than_min_time_of_its_deadline() -> None:
    # A retry meets a pause another call started: waiting it out would leave the retry 2 ms of its deadline.
    clock = FakeClock()
    retry = {"backoff_factor": 0.1, "backoff_jitter": 0}
    policy = make_policy(clock, timeout={"total": 2}, pause={"max_wait": 5}, retry=retry)
    call = start(policy)
    assert call.admit() is None
    assert call.record(Outcome(Kind.RESPONSE, status=502)).retry is True
    policy.pause.pause(1.998)  # type: ignore[union-attr]  # ends 2 ms before the deadline
    clock.advance(0.1)
    refusal = call.admit()
    assert isinstance(refusal, Rejection)  # refused now, not after a wait that leaves the attempt no time
    assert refusal.reason == "rate_limited"


def test_a_retry_the_pause_would_refuse_is_not_scheduled() -> None:
    clock = FakeClock()
    policy = make_policy(clock, retry={"respect_retry_after": False, "backoff_factor": 0.1, "backoff_jitter": 0})
    call = start(policy)
    call.admit()
    decision = call.record(Outcome(Kind.RESPONSE, status=503, retry_after="2"))
    assert decision.retry is False  # the backoff (0.1 s) ends long before the pause (2 s): the 503 is the answer
    assert policy.stats.snapshot().retries == 0


def test_an_open_breaker_refuses_before_the_rate_limit_spends_a_permit(wall: FakeClock) -> None:
    policy, limit = make_limited(wall, rate_limit={"rate": "2/minute", "max_wait": 0}, breaker={"fail_max": 1})
    call = start(policy)
    assert call.admit() is None
    call.record(FAILED)  # opens the breaker; one of the minute's two permits is spent
    refusal = start(policy).admit()
    assert isinstance(refusal, Rejection)
    assert refusal.reason == "circuit_open"
    assert limit.snapshot().remaining == 1  # the refused call took no permit


def test_a_timeout_at_a_scopes_deadline_is_no_verdict_on_the_upstream() -> None:
    policy = make_policy(FakeClock(), breaker={"fail_max": 1}, retry=NO_RETRY)
    with outbound.deadline(1.0):
        call = start(policy)
    call.admit()
    call.record(Outcome(Kind.READ_TIMEOUT, error=TimeoutError(), deadline=True))
    assert policy.breaker.state == CLOSED  # the caller's budget ran out, not the upstream
    assert policy.breaker.failures == 0
    plain = start(policy)  # the service's own timeout.total is the service's: that one counts
    plain.admit()
    plain.record(Outcome(Kind.READ_TIMEOUT, error=TimeoutError(), deadline=True))
    assert policy.breaker.state == OPEN


def test_the_time_window_retires_each_bucket_once_however_long_the_quiet() -> None:
    clock = FakeClock()
    breaker = {**RATE, "window": {"type": "time", "seconds": 5}, "minimum_calls": 100}
    policy = make_policy(clock, retry=NO_RETRY, breaker=breaker)
    for _ in range(3):
        one_call(policy, FAILED)
        clock.advance(1)
    assert policy.breaker.rule.calls == 3
    clock.advance(2)  # the first call is now 5 s old
    one_call(policy, OK)
    assert (policy.breaker.rule.calls, policy.breaker.rule.failures) == (3, 2)
    clock.advance(86_400)
    one_call(policy, OK)
    assert (policy.breaker.rule.calls, policy.breaker.rule.failures) == (1, 0)
