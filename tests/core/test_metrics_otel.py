"""OpenTelemetry metrics: values after real calls against the test upstream, read with the SDK's in-memory reader.

Each test records through a ``MeterProvider`` of its own (``use_meter_provider``): OpenTelemetry's global provider can
be set only once per process.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import Histogram, InMemoryMetricReader, Sum
from opentelemetry.sdk.trace import TracerProvider

import outbound
from outbound import ConfigError, Registry
from outbound._metrics import otel
from outbound.health import FAILING_MINIMUM_CALLS
from tests.conftest import FakeClock, open_breaker
from tests.core.conftest import Send
from tests.upstream import Upstream, wait_until

_names = itertools.count()
NO_WAIT_RETRY = {"backoff_factor": 0, "backoff_jitter": 0}


def unique(prefix: str) -> str:
    return f"{prefix}{next(_names)}"


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    otel.use_meter_provider(provider)
    try:
        yield reader
    finally:
        otel.use_meter_provider(None)
        provider.shutdown()


@pytest.fixture
def build() -> Iterator[Any]:
    made: list[Registry] = []

    def make(services: dict[str, Any], *, clock: FakeClock | None = None, prometheus: bool = False) -> Registry:
        mapping = {"services": services, "metrics": {"otel": True, "prometheus": prometheus}}
        registry = Registry.from_mapping(mapping, clock=clock) if clock else Registry.from_mapping(mapping)
        made.append(registry)
        return registry

    yield make
    for registry in made:
        registry.close()


def metrics_by_name(reader: InMemoryMetricReader) -> dict[str, Any]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        metric.name: metric
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        if scope.scope.name == "outbound"
        for metric in scope.metrics
    }


def point_values(reader: InMemoryMetricReader, name: str, service: str) -> dict[frozenset[tuple[str, Any]], Any]:
    """The data points of ``name`` for ``service``: attributes (without the service) -> value, or the histogram
    point itself."""
    metric = metrics_by_name(reader).get(name)
    if metric is None:
        return {}
    points = {}
    for point in metric.data.data_points:
        attributes = dict(point.attributes)
        if attributes.pop("outbound.service") == service:
            points[frozenset(attributes.items())] = point if isinstance(metric.data, Histogram) else point.value
    return points


def attrs(**attributes: Any) -> frozenset[tuple[str, Any]]:
    return frozenset((key.replace("__", "."), value) for key, value in attributes.items())


def call_attrs(method: str, outcome: str, status: int | None = None) -> frozenset[tuple[str, Any]]:
    attributes: dict[str, Any] = {"http.request.method": method, "outbound.outcome": outcome}
    if status is not None:
        attributes["http.response.status_code"] = status
    return frozenset(attributes.items())


def test_instruments_names_kinds_and_units(upstream: Upstream, reader: InMemoryMetricReader, build: Any) -> None:
    name = unique("instruments")
    registry = build({name: {"base_url": upstream.url, "retry": NO_WAIT_RETRY}})
    registry.session(name).get("fail-then-ok", params={"fails": 1, "key": name})
    registry.session(name).get("ok")
    found = metrics_by_name(reader)
    kinds = {metric_name: (type(metric.data).__name__, metric.unit) for metric_name, metric in found.items()}
    assert kinds == {
        "outbound.requests": ("Sum", "{request}"),
        "outbound.request.duration": ("Histogram", "s"),
        "outbound.retries": ("Sum", "{retry}"),
        "outbound.circuit.state": ("Gauge", "1"),
        "outbound.service.status": ("Gauge", "1"),
        "outbound.pool.connections": ("Sum", "{connection}"),
        "outbound.pool.waiting": ("Sum", "{call}"),
    }  # counters with nothing recorded yet export nothing
    assert isinstance(found["outbound.requests"].data, Sum)
    assert found["outbound.requests"].data.is_monotonic
    assert not found["outbound.pool.connections"].data.is_monotonic
    [duration] = found["outbound.request.duration"].data.data_points
    assert list(duration.explicit_bounds) == [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10]
    # The stable HTTP client histogram is the instrumentations' to record, per attempt; outbound never does.
    assert "http.client.request.duration" not in found


def test_calls_retries_and_duration(
    upstream: Upstream, reader: InMemoryMetricReader, build: Any, send: Send, kind: str
) -> None:
    name = unique(f"calls_{kind}_")
    registry = build({name: {"base_url": upstream.url, "client": kind, "retry": NO_WAIT_RETRY}})
    send(registry, name, "GET", "ok")
    send(registry, name, "GET", "fail-then-ok", params={"fails": 2, "key": name})
    send(registry, name, "POST", "status/503")  # POST is not retried
    with pytest.raises(outbound.ReadTimeoutError):
        send(registry, name, "POST", "slow", params={"delay": 1}, timeout=0.2)
    assert point_values(reader, "outbound.requests", name) == {
        call_attrs("GET", "success", 200): 2,
        call_attrs("POST", "failure", 503): 1,
        call_attrs("POST", "error"): 1,
    }
    assert point_values(reader, "outbound.retries", name) == {attrs(outbound__retry__reason="status_503"): 2}
    durations = point_values(reader, "outbound.request.duration", name)
    assert {key: point.count for key, point in durations.items()} == {
        call_attrs("GET", "success"): 2,
        call_attrs("POST", "failure"): 1,
        call_attrs("POST", "error"): 1,
    }
    assert 0.2 <= durations[call_attrs("POST", "error")].sum < 1


def test_short_circuits_and_circuit_state(
    upstream: Upstream, reader: InMemoryMetricReader, build: Any, send: Send, kind: str, fake_clock: FakeClock
) -> None:
    name = unique(f"breaker_{kind}_")
    breaker = {"fail_max": 2, "reset_timeout": 30}
    registry = build(
        {name: {"base_url": upstream.url, "client": kind, "retry": None, "breaker": breaker}}, clock=fake_clock
    )

    def states() -> dict[str, int]:
        points = point_values(reader, "outbound.circuit.state", name)
        return {dict(key)["outbound.breaker.state"]: value for key, value in points.items()}

    assert states() == {"closed": 1, "open": 0, "half-open": 0, "isolated": 0}
    open_breaker(registry, name)
    assert states() == {"closed": 0, "open": 1, "half-open": 0, "isolated": 0}
    with pytest.raises(outbound.CircuitOpenError):
        send(registry, name, "GET", "ok")
    assert point_values(reader, "outbound.short_circuits", name) == {frozenset(): 1}
    assert point_values(reader, "outbound.requests", name)[call_attrs("GET", "rejected")] == 1
    fake_clock.advance(30)
    assert states() == {"closed": 0, "open": 0, "half-open": 1, "isolated": 0}


def test_service_status_reads_the_health_report(
    upstream: Upstream, reader: InMemoryMetricReader, build: Any, send: Send, kind: str
) -> None:
    name = unique(f"status_{kind}_")
    registry = build({name: {"base_url": upstream.url, "client": kind, "retry": None, "breaker": {"fail_max": 100}}})

    def statuses() -> dict[str, int]:
        points = point_values(reader, "outbound.service.status", name)
        return {dict(key)["outbound.health.status"]: value for key, value in points.items()}

    assert statuses() == {"ok": 1, "degraded": 0, "failing": 0, "down": 0}
    for _ in range(FAILING_MINIMUM_CALLS):
        send(registry, name, "GET", "status/500")
    assert statuses() == {"ok": 0, "degraded": 0, "failing": 1, "down": 0}
    registry.isolate(name)
    assert statuses() == {"ok": 0, "degraded": 0, "failing": 0, "down": 1}


def test_retry_budget_exhausted(
    upstream: Upstream, reader: InMemoryMetricReader, build: Any, send: Send, kind: str
) -> None:
    name = unique(f"budget_{kind}_")
    retry = {**NO_WAIT_RETRY, "budget": {"ratio": 0, "min_per_second": 0}}
    registry = build({name: {"base_url": upstream.url, "client": kind, "retry": retry}})
    assert send(registry, name, "GET", "status/503").status_code == 503
    assert point_values(reader, "outbound.retry_budget.exhausted", name) == {frozenset(): 1}
    assert point_values(reader, "outbound.retries", name) == {}


def test_pool_gauges_and_pool_timeouts(
    upstream: Upstream, reader: InMemoryMetricReader, build: Any, send: Send, kind: str
) -> None:
    name = unique(f"pool_{kind}_")
    settings = {"base_url": upstream.url, "client": kind, "pool": {"max_connections": 1}, "timeout": {"pool": 0.1}}
    registry = build({name: settings})

    def connections() -> dict[str, int]:
        points = point_values(reader, "outbound.pool.connections", name)
        return {dict(key)["http.connection.state"]: value for key, value in points.items()}

    assert connections() == {"active": 0, "idle": 0}
    holder = threading.Thread(target=send, args=(registry, name, "GET", "slow"), kwargs={"params": {"delay": 0.6}})
    holder.start()
    try:
        assert upstream.wait_for(lambda: upstream.hits_by_path["/slow"] == 1)
        assert connections() == {"active": 1, "idle": 0}
        with pytest.raises(outbound.PoolTimeoutError):
            send(registry, name, "GET", "ok")
    finally:
        holder.join()
    assert connections() == {"active": 0, "idle": 1}
    assert point_values(reader, "outbound.pool.waiting", name) == {frozenset(): 0}
    assert point_values(reader, "outbound.pool.timeouts", name) == {frozenset(): 1}
    registry.close()
    assert connections() == {}  # a closed registry is no longer observed


def test_prometheus_and_opentelemetry_together(upstream: Upstream, reader: InMemoryMetricReader, build: Any) -> None:
    from prometheus_client import REGISTRY

    name = unique("both")
    registry = build({name: {"base_url": upstream.url}}, prometheus=True)
    registry.session(name).get("ok")
    assert point_values(reader, "outbound.requests", name) == {call_attrs("GET", "success", 200): 1}
    labels = {"service": name, "method": "GET", "status": "200", "outcome": "success"}
    assert REGISTRY.get_sample_value("outbound_requests_total", labels) == 1


def test_without_a_provider_the_global_one_records_nothing_and_costs_no_error(upstream: Upstream, build: Any) -> None:
    name = unique("global")
    registry = build({name: {"base_url": upstream.url}})  # the API's proxy provider: no SDK set up in this process
    assert registry.session(name).get("ok").status_code == 200


def test_the_setting_needs_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("outbound._config._installed", lambda module: False)
    with pytest.raises(ConfigError, match=r"outbound-http\[otel\]"):
        Registry.from_mapping({"services": {}, "metrics": {"otel": True}})


# -- the durations' queue ----------------------------------------------------------------------------------------------


def test_durations_are_queued_off_the_call_and_flushed_by_the_thread_and_by_collections(
    upstream: Upstream, reader: InMemoryMetricReader, build: Any
) -> None:
    name = unique("queued")
    registry = build({name: {"base_url": upstream.url}})
    durations = otel._instruments().duration
    registry.session(name).get("ok")
    assert durations.running  # started by the first duration
    assert durations.pending <= 1  # queued, or already handed over by the thread
    [point] = point_values(reader, "outbound.request.duration", name).values()
    assert point.count == 1  # a collection takes what is queued
    registry.session(name).get("ok")
    assert wait_until(lambda: durations.pending == 0, timeout=5)  # the thread hands it over by itself
    registry.close()
    assert wait_until(lambda: not durations.running, timeout=5)  # no open registry left: the thread ends
    [point] = point_values(reader, "outbound.request.duration", name).values()
    assert point.count == 2


def test_a_full_queue_records_in_the_call(
    upstream: Upstream, reader: InMemoryMetricReader, build: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique("full")
    registry = build({name: {"base_url": upstream.url}})
    monkeypatch.setattr(otel, "MAX_PENDING", 0)
    registry.session(name).get("ok")
    assert otel._instruments().duration.pending == 0
    [point] = point_values(reader, "outbound.request.duration", name).values()
    assert point.count == 1


def test_a_queued_duration_keeps_the_calls_trace_for_its_exemplar(
    upstream: Upstream, reader: InMemoryMetricReader, build: Any
) -> None:
    name = unique("exemplar")
    registry = build({name: {"base_url": upstream.url}})
    tracer_provider = TracerProvider()
    try:
        with tracer_provider.get_tracer("tests").start_as_current_span("handler") as span:
            registry.session(name).get("ok")
        [point] = point_values(reader, "outbound.request.duration", name).values()
        assert [exemplar.trace_id for exemplar in point.exemplars] == [span.get_span_context().trace_id]
    finally:
        tracer_provider.shutdown()


def test_both_exporters_describe_each_metric_alike(
    upstream: Upstream, reader: InMemoryMetricReader, build: Any
) -> None:
    """One vocabulary: each metric's meaning is written once (``_metrics/_common``) and both exporters say it."""
    from prometheus_client import REGISTRY

    name = unique("described")
    registry = build({name: {"base_url": upstream.url}}, prometheus=True)
    registry.session(name).get("ok")
    otel = {metric.name: metric.description for metric in metrics_by_name(reader).values()}
    prometheus = {
        family.name: family.documentation for family in REGISTRY.collect() if family.name.startswith("outbound_")
    }
    pairs = {
        "outbound.requests": "outbound_requests",
        "outbound.request.duration": "outbound_request_duration_seconds",
        "outbound.retries": "outbound_retries",
        "outbound.short_circuits": "outbound_short_circuits",
        "outbound.pool.timeouts": "outbound_pool_timeouts",
        "outbound.retry_budget.exhausted": "outbound_retry_budget_exhausted",
        "outbound.circuit.state": "outbound_circuit_state",
        "outbound.service.status": "outbound_service_status",
        "outbound.pool.connections": "outbound_pool_connections",
        "outbound.pool.waiting": "outbound_pool_waiting",
        "outbound.cache.answers": "outbound_cache_answers",
    }
    reported = [otel_name for otel_name in pairs if otel_name in otel]  # the SDK reports what has data points
    assert {"outbound.requests", "outbound.request.duration", "outbound.circuit.state"} <= set(reported)
    for otel_name in reported:
        assert otel[otel_name] == prometheus[pairs[otel_name]], otel_name


def test_cache_answers_by_result(upstream: Upstream, reader: InMemoryMetricReader, build: Any) -> None:
    name = unique("cache")
    registry = build({name: {"base_url": upstream.url, "cache": {"ttl": 60}}})
    for _ in range(3):
        registry.session(name).get("catalogue")
    points = point_values(reader, "outbound.cache.answers", name)
    assert points[attrs(outbound__cache__result="hit")] == 2
    assert points[attrs(outbound__cache__result="miss")] == 1
    assert metrics_by_name(reader)["outbound.cache.answers"].data.is_monotonic
