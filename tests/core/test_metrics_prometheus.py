"""Prometheus metrics: values after real calls against the test upstream, read from the default registry.

The metrics are process-global (every registry of the process records into them), so each test uses services of its
own name and reads counters as deltas. The multiprocess path (the gauge refresher) is exercised here on a private
``CollectorRegistry``; tests/flask/test_prometheus_multiprocess.py runs it under real gunicorn workers.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry

import outbound
from outbound import ConfigError, Registry
from outbound._metrics._live import BREAKER_STATES, LiveRegistries
from outbound._metrics.prometheus import GaugeRefresher, PrometheusMetrics, PrometheusObserver, multiprocess_mode
from outbound.health import FAILING_MINIMUM_CALLS, STATUSES
from tests.conftest import FakeClock, open_breaker
from tests.core.conftest import Send
from tests.upstream import Upstream, wait_until

_names = itertools.count()
Build = Callable[..., Registry]


def unique(prefix: str) -> str:
    return f"{prefix}{next(_names)}"


@pytest.fixture
def build() -> Iterator[Build]:
    """``build(services, clock=None)``: a registry with Prometheus metrics on, closed after the test."""
    made: list[Registry] = []

    def make(services: dict[str, Any], *, clock: FakeClock | None = None) -> Registry:
        mapping = {"services": services, "metrics": {"prometheus": True}}
        registry = Registry.from_mapping(mapping, clock=clock) if clock else Registry.from_mapping(mapping)
        made.append(registry)
        return registry

    yield make
    for registry in made:
        registry.close()


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Deltas:
    """Sample values now minus when it was made (the metrics are the process's: earlier tests counted too)."""

    def __init__(self) -> None:
        self._before = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in REGISTRY.collect()
            if family.name.startswith("outbound_")
            for sample in family.samples
        }

    def __call__(self, name: str, **labels: str) -> float:
        return value(name, **labels) - self._before.get((name, frozenset(labels.items())), 0.0)


NO_WAIT_RETRY = {"backoff_factor": 0, "backoff_jitter": 0}


def test_not_in_multiprocess_mode_here() -> None:
    assert not multiprocess_mode()  # the suite itself never sets PROMETHEUS_MULTIPROC_DIR


def test_families_names_types_and_labels() -> None:
    Registry.from_mapping({"services": {}, "metrics": {"prometheus": True}}).close()  # creates them if first
    families = {family.name: family for family in REGISTRY.collect() if family.name.startswith("outbound_")}
    assert {name: family.type for name, family in families.items()} == {
        "outbound_requests": "counter",
        "outbound_request_duration_seconds": "histogram",
        "outbound_retries": "counter",
        "outbound_short_circuits": "counter",
        "outbound_pool_timeouts": "counter",
        "outbound_retry_budget_exhausted": "counter",
        "outbound_circuit_state": "gauge",
        "outbound_service_status": "gauge",
        "outbound_pool_connections": "gauge",
        "outbound_pool_waiting": "gauge",
        "outbound_cache_answers": "gauge",
    }
    metrics = PrometheusMetrics(CollectorRegistry())
    assert metrics.requests._labelnames == ("service", "method", "status", "outcome")
    assert metrics.duration._labelnames == ("service", "method", "outcome")
    assert metrics.service_status._labelnames == ("service", "status")
    # The OpenTelemetry HTTP client boundaries, then +Inf.
    assert metrics.duration._upper_bounds == [
        *(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0),
        float("inf"),
    ]


def test_many_registries_share_the_process_metrics(upstream: Upstream, build: Build) -> None:
    name = unique("shared")
    deltas = Deltas()
    for _ in range(3):
        registry = build({name: {"base_url": upstream.url}})
        registry.session(name).get("ok")
    assert deltas("outbound_requests_total", service=name, method="GET", status="200", outcome="success") == 3


def test_calls_by_outcome_status_and_duration(upstream: Upstream, build: Build, send: Send, kind: str) -> None:
    name = unique(f"calls_{kind}_")
    registry = build({name: {"base_url": upstream.url, "client": kind, "retry": {"total": 0}}})
    deltas = Deltas()
    send(registry, name, "GET", "ok")
    send(registry, name, "get", "ok")  # the policy upper-cases it
    send(registry, name, "POST", "status/404")  # not a failure status: a success for the breaker
    send(registry, name, "GET", "status/500")  # a failure status
    send(registry, name, "PURGE", "ok")  # a method outside the conventions' list
    requests = "outbound_requests_total"
    assert deltas(requests, service=name, method="GET", status="200", outcome="success") == 2
    assert deltas(requests, service=name, method="POST", status="404", outcome="success") == 1
    assert deltas(requests, service=name, method="GET", status="500", outcome="failure") == 1
    assert deltas(requests, service=name, method="_OTHER", status="200", outcome="success") == 1
    count = "outbound_request_duration_seconds_count"
    assert deltas(count, service=name, method="GET", outcome="success") == 2
    assert deltas(count, service=name, method="GET", outcome="failure") == 1
    seconds = deltas("outbound_request_duration_seconds_sum", service=name, method="GET", outcome="success")
    assert 0 < seconds < 2
    # Loopback calls take well under a second: every one is in the 1 s bucket, none over the 10 s one.
    assert (
        deltas("outbound_request_duration_seconds_bucket", service=name, method="GET", outcome="success", le="1.0") == 2
    )


def test_a_call_that_ends_in_an_error_has_no_status(upstream: Upstream, build: Build, send: Send, kind: str) -> None:
    name = unique(f"error_{kind}_")
    registry = build({name: {"base_url": upstream.url, "client": kind, "retry": {"total": 0}, "timeout": 0.2}})
    deltas = Deltas()
    with pytest.raises(outbound.ReadTimeoutError):
        send(registry, name, "GET", "slow", params={"delay": 1})
    assert deltas("outbound_requests_total", service=name, method="GET", status="", outcome="error") == 1
    assert deltas("outbound_request_duration_seconds_count", service=name, method="GET", outcome="error") == 1


def test_retries_by_reason_count_one_call(upstream: Upstream, build: Build, send: Send, kind: str) -> None:
    name = unique(f"retries_{kind}_")
    registry = build({name: {"base_url": upstream.url, "client": kind, "retry": NO_WAIT_RETRY}})
    deltas = Deltas()
    response = send(registry, name, "GET", "fail-then-ok", params={"fails": 2, "key": name})
    assert response.status_code == 200
    assert deltas("outbound_retries_total", service=name, reason="status_503") == 2
    assert deltas("outbound_requests_total", service=name, method="GET", status="200", outcome="success") == 1
    assert deltas("outbound_request_duration_seconds_count", service=name, method="GET", outcome="success") == 1


def test_retry_budget_exhausted(upstream: Upstream, build: Build, send: Send, kind: str) -> None:
    name = unique(f"budget_{kind}_")
    retry = {**NO_WAIT_RETRY, "budget": {"ratio": 0, "min_per_second": 0}}
    registry = build({name: {"base_url": upstream.url, "client": kind, "retry": retry}})
    deltas = Deltas()
    assert send(registry, name, "GET", "status/503").status_code == 503
    assert deltas("outbound_retry_budget_exhausted_total", service=name) == 1
    assert deltas("outbound_retries_total", service=name, reason="status_503") == 0
    assert deltas("outbound_requests_total", service=name, method="GET", status="503", outcome="failure") == 1


def test_short_circuits_and_circuit_state(
    upstream: Upstream, build: Build, send: Send, kind: str, fake_clock: FakeClock
) -> None:
    name = unique(f"breaker_{kind}_")
    settings = {
        "base_url": upstream.url,
        "client": kind,
        "retry": None,
        "breaker": {"fail_max": 2, "reset_timeout": 30},
    }
    registry = build({name: settings}, clock=fake_clock)

    def state() -> dict[str, float]:
        return {s: value("outbound_circuit_state", service=name, state=s) for s in BREAKER_STATES}

    assert state() == {"closed": 1, "open": 0, "half-open": 0, "isolated": 0}
    deltas = Deltas()
    open_breaker(registry, name)
    assert state() == {"closed": 0, "open": 1, "half-open": 0, "isolated": 0}
    with pytest.raises(outbound.CircuitOpenError):
        send(registry, name, "GET", "ok")
    assert deltas("outbound_short_circuits_total", service=name) == 1
    assert deltas("outbound_requests_total", service=name, method="GET", status="", outcome="rejected") == 1
    assert deltas("outbound_request_duration_seconds_count", service=name, method="GET", outcome="rejected") == 0
    fake_clock.advance(30)  # the trial is due: read as the health report reads it
    assert state() == {"closed": 0, "open": 0, "half-open": 1, "isolated": 0}
    send(registry, name, "GET", "ok")
    assert state() == {"closed": 1, "open": 0, "half-open": 0, "isolated": 0}


def test_service_status_reads_the_health_report(upstream: Upstream, build: Build, send: Send, kind: str) -> None:
    name = unique(f"status_{kind}_")
    settings = {"base_url": upstream.url, "client": kind, "retry": None, "breaker": {"fail_max": 100}}
    registry = build({name: settings})

    def status() -> dict[str, float]:
        return {s: value("outbound_service_status", service=name, status=s) for s in STATUSES}

    assert status() == {"ok": 1, "degraded": 0, "failing": 0, "down": 0}
    for _ in range(FAILING_MINIMUM_CALLS):
        send(registry, name, "GET", "status/500")
    assert registry[name].policy.breaker.state == "closed"
    assert status() == {"ok": 0, "degraded": 0, "failing": 1, "down": 0}
    registry.isolate(name)
    assert status() == {"ok": 0, "degraded": 0, "failing": 0, "down": 1}


def test_a_retry_refused_by_the_breaker_is_one_rejected_call(
    upstream: Upstream, build: Build, send: Send, kind: str
) -> None:
    name = unique(f"refused_retry_{kind}_")
    registry = build({name: {"base_url": upstream.url, "client": kind, "retry": NO_WAIT_RETRY}})

    class IsolateOnRetry(outbound.Observer):
        def retry_scheduled(self, event: outbound.RetryScheduled) -> None:
            registry[name].policy.breaker.isolate(60)  # the breaker opens between the retry's decision and its send

    registry.add_observer(IsolateOnRetry())
    deltas = Deltas()
    with pytest.raises(outbound.CircuitOpenError):
        send(registry, name, "GET", "status/503")
    assert deltas("outbound_requests_total", service=name, method="GET", status="", outcome="rejected") == 1
    assert deltas("outbound_requests_total", service=name, method="GET", status="503", outcome="failure") == 0
    # The call did send an attempt: its time is in the histogram.
    assert deltas("outbound_request_duration_seconds_count", service=name, method="GET", outcome="rejected") == 1
    assert deltas("outbound_short_circuits_total", service=name) == 1
    assert deltas("outbound_retries_total", service=name, reason="status_503") == 1


def test_a_retry_denied_by_an_opening_breaker_keeps_the_last_response(
    upstream: Upstream, build: Build, send: Send, kind: str
) -> None:
    name = unique(f"denied_retry_{kind}_")
    settings = {"base_url": upstream.url, "client": kind, "retry": NO_WAIT_RETRY, "breaker": {"fail_max": 1}}
    registry = build({name: settings})
    deltas = Deltas()
    assert send(registry, name, "GET", "status/503").status_code == 503  # the 503 opened the breaker: no retry
    assert deltas("outbound_requests_total", service=name, method="GET", status="503", outcome="failure") == 1
    assert deltas("outbound_requests_total", service=name, method="GET", status="", outcome="rejected") == 0
    assert deltas("outbound_short_circuits_total", service=name) == 0


def test_pool_gauges_and_pool_timeouts(upstream: Upstream, build: Build, send: Send, kind: str) -> None:
    name = unique(f"pool_{kind}_")
    settings = {"base_url": upstream.url, "client": kind, "pool": {"max_connections": 1}, "timeout": {"pool": 0.1}}
    registry = build({name: settings})
    deltas = Deltas()

    def pool() -> tuple[float, float, float]:
        return (
            value("outbound_pool_connections", service=name, state="in_use"),
            value("outbound_pool_connections", service=name, state="idle"),
            value("outbound_pool_waiting", service=name),
        )

    assert pool() == (0, 0, 0)
    holder = threading.Thread(target=send, args=(registry, name, "GET", "slow"), kwargs={"params": {"delay": 0.6}})
    holder.start()
    try:
        assert upstream.wait_for(lambda: upstream.hits_by_path["/slow"] == 1)
        assert pool()[:2] == (1, 0)
        with pytest.raises(outbound.PoolTimeoutError):
            send(registry, name, "GET", "ok")
    finally:
        holder.join()
    assert pool() == (0, 1, 0)
    assert deltas("outbound_pool_timeouts_total", service=name) == 1
    assert deltas("outbound_requests_total", service=name, method="GET", status="", outcome="error") == 1
    registry.close()
    assert pool() == (0, 0, 0)  # a closed registry's services report nothing


def test_an_observer_failure_never_reaches_the_caller(
    upstream: Upstream, build: Build, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    name = unique("broken")
    registry = build({name: {"base_url": upstream.url}})

    def broken(self: PrometheusObserver, event: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(PrometheusObserver, "_call_children", broken)
    assert registry.session(name).get("ok").status_code == 200
    assert "outbound observer" in caplog.text


def test_the_setting_needs_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("outbound._config._installed", lambda module: False)
    with pytest.raises(ConfigError, match=r"outbound-http\[prometheus\]"):
        Registry.from_mapping({"services": {}, "metrics": {"prometheus": True}})


# -- multiprocess mode: the gauge refresher, on a private registry -----------------------------------------------------


@pytest.fixture
def private() -> tuple[CollectorRegistry, PrometheusMetrics, LiveRegistries]:
    collector = CollectorRegistry()
    return collector, PrometheusMetrics(collector), LiveRegistries()


def test_refresher_writes_the_gauges_and_stops_when_the_registry_closes(
    upstream: Upstream, private: tuple[CollectorRegistry, PrometheusMetrics, LiveRegistries]
) -> None:
    collector, metrics, live = private
    refresher = GaugeRefresher(metrics, live, interval=0.01)
    registry = Registry.from_mapping({"services": {"api": {"base_url": upstream.url, "breaker": {"fail_max": 1}}}})
    try:
        observer = PrometheusObserver(registry, metrics=metrics, live=live, refresher=refresher, multiprocess=True)
        registry.add_observer(observer)

        def sample(name: str, **labels: str) -> float | None:
            return collector.get_sample_value(name, {"service": "api", **labels})

        assert sample("outbound_circuit_state", state="closed") is None  # nothing written before a call
        assert not refresher.running
        registry.session("api").get("ok")
        assert refresher.running  # started by the call
        assert wait_until(lambda: sample("outbound_pool_connections", state="idle") == 1, timeout=5)
        assert sample("outbound_circuit_state", state="closed") == 1
        assert sample("outbound_service_status", status="ok") == 1
        assert sample("outbound_requests_total", method="GET", status="200", outcome="success") == 1

        registry.session("api").get("status/503")  # opens the breaker
        assert wait_until(lambda: sample("outbound_circuit_state", state="open") == 1, timeout=5)
        assert sample("outbound_circuit_state", state="closed") == 0
        assert wait_until(lambda: sample("outbound_service_status", status="down") == 1, timeout=5)
        assert sample("outbound_service_status", status="ok") == 0

        registry.close()
        assert wait_until(lambda: not refresher.running, timeout=5)  # no open registry left: the thread ends
        assert sample("outbound_pool_connections", state="idle") == 0
        assert sample("outbound_circuit_state", state="open") == 0
        assert sample("outbound_service_status", status="down") == 0
    finally:
        registry.close()
        refresher.stop(timeout=5)


def test_cache_answers_by_result(upstream: Upstream, build: Build) -> None:
    name = unique("cache")
    registry = build({name: {"base_url": upstream.url, "cache": {"ttl": 60}}})
    plain = unique("plain")
    build({plain: {"base_url": upstream.url}}).session(plain).get("ok")
    for _ in range(3):
        registry.session(name).get("catalogue")
    assert value("outbound_cache_answers", service=name, result="hit") == 2
    assert value("outbound_cache_answers", service=name, result="miss") == 1
    assert value("outbound_cache_answers", service=name, result="stored") == 1
    assert REGISTRY.get_sample_value("outbound_cache_answers", {"service": plain, "result": "hit"}) is None
