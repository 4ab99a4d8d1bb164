"""Observe-only protections (issue 28 item 1): ``enforce: false`` decides and counts, refuses nothing."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import outbound
from outbound import ConfigError, Registry
from outbound._outcome import Kind, Outcome
from tests.upstream import Upstream


@pytest.fixture
def build() -> Any:
    made: list[Registry] = []

    def make(mapping: dict[str, Any]) -> Registry:
        registry = Registry.from_mapping(mapping)
        made.append(registry)
        return registry

    yield make
    for registry in made:
        registry.close()


def service(upstream: Upstream, **settings: Any) -> dict[str, Any]:
    return {"services": {"api": {"base_url": upstream.url, "retry": {"total": 0}, **settings}}}


@pytest.mark.parametrize("client", ["requests", "httpx"])
def test_an_observing_breaker_counts_what_it_would_refuse_and_refuses_nothing(
    upstream: Upstream, build: Any, client: str
) -> None:
    registry = build(service(upstream, client=client, breaker={"fail_max": 2, "enforce": False}))
    get = registry.session("api").get if client == "requests" else registry.client("api").get
    statuses = [get("status/503").status_code for _ in range(5)]
    assert statuses == [503] * 5  # every call reached the upstream
    assert len(upstream.recent("/status/503")) == 5
    health = registry.report().services["api"]
    assert health.breaker.state == "open"  # it decided as it would
    assert health.observing == ("breaker",)
    assert health.would_reject == {"breaker:circuit_open": 3}
    assert health.status != "down"  # an observing breaker takes nothing down
    assert health.as_dict()["would_reject"] == {"breaker:circuit_open": 3}


def test_an_enforcing_breaker_refuses_the_same_calls(upstream: Upstream, build: Any) -> None:
    """The check above can fail: the same settings enforced refuse exactly the calls counted there."""
    registry = build(service(upstream, breaker={"fail_max": 2}))
    refused = 0
    for _ in range(5):
        try:
            registry.session("api").get("status/503")
        except outbound.CircuitOpenError:
            refused += 1
    assert refused == 3
    assert registry.report().services["api"].observing == ()


def test_enforce_false_on_the_service_covers_every_protection(upstream: Upstream, build: Any) -> None:
    registry = build(service(upstream, enforce=False, bulkhead={"max_in_flight": 1}, rate_limit={"rate": "1/minute"}))
    assert [registry.session("api").get("ok").status_code for _ in range(3)] == [200] * 3
    health = registry.report().services["api"]
    assert set(health.observing) == {"breaker", "bulkhead", "rate_limit"}
    assert health.would_reject == {"rate_limit:rate_limited": 2}


def test_a_section_overrides_the_service_default(upstream: Upstream, build: Any) -> None:
    registry = build(service(upstream, enforce=False, rate_limit={"rate": "1/minute", "enforce": True}))
    registry.session("api").get("ok")
    with pytest.raises(outbound.RateLimitedError):
        registry.session("api").get("ok")
    assert registry.report().services["api"].observing == ("breaker",)


def test_enforce_false_in_defaults(upstream: Upstream, build: Any) -> None:
    registry = build({"defaults": {"enforce": False}, **service(upstream)})
    assert registry.report().services["api"].observing == ("breaker",)


def test_an_observing_bulkhead_counts_calls_that_find_it_full(upstream: Upstream, build: Any) -> None:
    registry = build(service(upstream, bulkhead={"max_in_flight": 1, "enforce": False}))
    session = registry.session("api")
    started = threading.Event()
    holder = threading.Thread(target=lambda: (started.set(), session.get("slow", params={"delay": 0.5})))
    holder.start()
    started.wait(2)
    for _ in range(50):  # bounded: until the holder is in flight
        if registry["api"].policy.bulkhead.in_flight:
            break
        threading.Event().wait(0.01)
    assert session.get("ok").status_code == 200
    holder.join(5)
    assert registry.report().services["api"].would_reject == {"bulkhead:bulkhead_full": 1}
    assert registry["api"].policy.bulkhead.in_flight == 0


def test_reset_clears_the_counts(upstream: Upstream, build: Any) -> None:
    registry = build(service(upstream, breaker={"fail_max": 1, "enforce": False}))
    for _ in range(3):
        registry.session("api").get("status/503")
    registry.reset("api")
    assert registry.report().services["api"].would_reject == {}


def test_observe_and_enforce_count_alike_on_the_same_recorded_faults() -> None:
    """Target 23c: replayed through a fake clock, an observing breaker's would-rejects equal an enforcing one's
    refusals, and it refuses nothing."""
    from outbound._config import parse_config
    from outbound._policy import Policy

    def run(enforce: bool) -> tuple[int, int, int]:
        now = [0.0]
        config = parse_config(
            {
                "services": {
                    "s": {
                        "base_url": "http://x.invalid/",
                        "breaker": {"fail_max": 3, "reset_timeout": 1.0, "enforce": enforce},
                    }
                }
            }
        ).services["s"]
        policy = Policy(config, clock=lambda: now[0])
        refused = 0
        for step in range(400):
            now[0] = step * 0.05
            failing = (step // 40) % 2 == 0  # 2 s of failures, 2 s of health
            permit = policy.stages[-1].admit(None)
            if type(permit).__name__ == "Rejection":
                refused += 1
                continue
            outcome = Outcome(Kind.CONNECT_ERROR) if failing else Outcome(Kind.RESPONSE, status=200)
            policy.stages[-1].record(permit, outcome, 0.01)
        would = policy.would_reject.total() if policy.would_reject is not None else 0
        return refused, would, policy.breaker.state == "closed"

    enforced = run(True)
    observed = run(False)
    assert observed[0] == 0
    assert observed[1] == enforced[0] > 0


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"enforce": "no"}, "enforce"),
        ({"breaker": {"enforce": 0}}, "breaker.enforce"),
        ({"bulkhead": {"max_in_flight": 1, "enforce": "false"}}, "bulkhead.enforce"),
    ],
)
def test_a_bad_enforce_names_service_and_key(settings: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Registry.from_mapping({"services": {"api": {"base_url": "http://x.invalid/", **settings}}})
    assert any(error.service == "api" and error.key == key for error in caught.value.errors)


def test_the_last_hour_is_counted_by_minutes() -> None:
    from outbound._observe import WouldReject
    from outbound._outcome import Reason, Rejection

    now = [0.0]
    counts = WouldReject("s", clock=lambda: now[0])
    refusal = Rejection(Reason.CIRCUIT_OPEN, 1.0, "open")
    for minute in range(90):
        now[0] = minute * 60.0
        counts.add("breaker", refusal)
        counts.add("breaker", refusal)
    assert counts.total() == 180
    assert counts.last_hour() == 120  # minutes 30..89
    now[0] = 200 * 60.0
    assert counts.last_hour() == 0
