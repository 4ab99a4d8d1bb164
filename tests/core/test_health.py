"""The health snapshot: shape, status rules, redaction, no network I/O; the shared CLI renderers and probes."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

import outbound
from outbound import HealthConfig
from tests.conftest import RegistryFactory, open_breaker
from tests.core.conftest import SYNC_KINDS
from tests.upstream import Upstream


def test_report_shape_is_json_ready_and_redacted(
    upstream: Upstream, make_registry: RegistryFactory, library: str
) -> None:
    registry = make_registry(
        billing={"base_url": upstream.url.replace("http://", "http://user:pw@") + "api/", "critical": True},
        search={"base_url": upstream.url, "client": library},
    )
    registry.session("billing").get("ok")
    report = json.loads(json.dumps(registry.health()))
    assert report["status"] == "ok"
    billing = report["services"]["billing"]
    assert set(billing) == {"status", "client", "base_url", "critical", "breaker", "pool", "stats", "last_error"}
    assert billing["base_url"] == upstream.url + "api/"
    assert billing["critical"] is True
    assert billing["client"] == "requests"
    assert billing["breaker"] == {
        "state": "closed",
        "mode": "consecutive",
        "failures": 0,
        "opened_at": None,
        "retry_in": None,
    }
    assert billing["pool"] == {"max_connections": 20, "in_use": 0, "idle": 1, "waiting": 0}
    stats = billing["stats"]
    assert (stats["requests"], stats["errors"], stats["retries"], stats["short_circuited"]) == (1, 0, 0, 0)
    assert stats["latency_ms"]["p50"] > 0
    assert report["services"]["search"]["stats"]["latency_ms"] == {"p50": None, "p95": None, "p99": None}
    assert registry.health(details=False) == {"status": "ok"}


def test_open_breaker_is_down_and_only_a_critical_one_takes_the_report_down(
    upstream: Upstream, make_registry: RegistryFactory
) -> None:
    breaker = {"fail_max": 2, "reset_timeout": 60}
    registry = make_registry(
        optional={"base_url": upstream.url, "breaker": breaker, "retry": {"total": 0}},
        payments={"base_url": upstream.url, "critical": True, "breaker": breaker, "retry": {"total": 0}},
    )
    open_breaker(registry, "optional", status=500)
    report = registry.health()
    assert report["status"] == "degraded"
    optional = report["services"]["optional"]
    assert optional["status"] == "down"
    assert optional["breaker"]["state"] == "open"
    assert optional["breaker"]["failures"] == 2
    assert optional["breaker"]["opened_at"].endswith("+00:00")
    assert 0 < optional["breaker"]["retry_in"] <= 60
    assert optional["last_error"]["type"] == "HTTPStatus"
    assert "500" in optional["last_error"]["message"]
    assert outbound.health.http_status(report) == 200
    assert outbound.health.status_exit_code(report) == 0

    only_optional = registry.health(service="optional")
    assert only_optional["status"] == "degraded"
    assert list(only_optional["services"]) == ["optional"]
    with pytest.raises(outbound.ServiceLookupError, match="did you mean 'optional'"):
        registry.health(service="optionl")

    open_breaker(registry, "payments", status=500)
    assert registry.health(service="payments", details=False) == {"status": "down"}
    report = registry.health()
    assert report["status"] == "down"
    assert outbound.health.http_status(report) == 503
    assert outbound.health.status_exit_code(report) == 1


def test_an_open_breaker_whose_trial_is_due_reports_half_open_without_any_call(upstream: Upstream) -> None:
    now = [0.0]
    mapping = {
        "services": {
            "api": {"base_url": upstream.url, "critical": True, "breaker": {"fail_max": 1, "reset_timeout": 5}}
        }
    }
    with outbound.Registry.from_mapping(mapping, clock=lambda: now[0]) as registry:
        registry.session("api").post("status/500")
        assert registry.health()["status"] == "down"
        now[0] = 5.0
        # No call has arrived since: a load balancer that took this instance out must let it back in.
        report = registry.health()
        assert report["status"] == "degraded"
        assert report["services"]["api"]["breaker"]["state"] == "half-open"
        assert report["services"]["api"]["breaker"]["retry_in"] is None
        assert registry["api"].policy.breaker.state == "open"  # reporting changed nothing


def test_half_open_is_degraded(upstream: Upstream) -> None:
    now = [0.0]
    mapping = {"services": {"api": {"base_url": upstream.url, "breaker": {"fail_max": 1, "reset_timeout": 5}}}}
    with outbound.Registry.from_mapping(mapping, clock=lambda: now[0]) as registry:
        registry.session("api").post("status/500")
        now[0] = 5.0
        slow = threading.Thread(target=registry.session("api").get, args=("slow",), kwargs={"params": {"delay": 0.3}})
        slow.start()
        assert upstream.wait_for(lambda: upstream.hits_by_path["/slow"] == 1)
        service = registry.health()["services"]["api"]
        assert (service["status"], service["breaker"]["state"]) == ("degraded", "half-open")
        slow.join()
        assert registry.health()["services"]["api"]["status"] == "ok"


@pytest.mark.parametrize("kind", SYNC_KINDS)
def test_saturated_pool_is_degraded(upstream: Upstream, make_registry: RegistryFactory, kind: str) -> None:
    registry = make_registry(api={"base_url": upstream.url, "client": kind, "pool": {"max_connections": 1}})
    get = registry.session("api").get if kind == "requests" else registry.client("api").get
    threads = [threading.Thread(target=get, args=("slow",), kwargs={"params": {"delay": 0.4}}) for _ in range(2)]
    for thread in threads:
        thread.start()
    assert upstream.wait_for(lambda: upstream.hits_by_path["/slow"] == 1)
    assert upstream.wait_for(lambda: registry.health()["services"]["api"]["pool"]["waiting"] == 1)
    service = registry.health()["services"]["api"]
    assert service["status"] == "degraded"
    assert service["pool"]["in_use"] == 1
    for thread in threads:
        thread.join()
    assert registry.health()["status"] == "ok"


def test_health_sends_nothing(upstream: Upstream, make_registry: RegistryFactory, library: str) -> None:
    registry = make_registry(a={"base_url": upstream.url}, b={"base_url": upstream.url, "client": library})
    for _ in range(3):
        registry.health()
    assert upstream.hits == 0
    assert upstream.connections_total == 0


@pytest.mark.parametrize(
    ("show", "header", "authorized", "expected"),
    [
        ("always", None, False, True),
        ("never", "Bearer s3cret", True, False),
        ("when_authorized", None, False, False),
        ("when_authorized", None, True, True),
        ("when_authorized", "Bearer s3cret", False, True),
        ("when_authorized", "bearer  s3cret ", False, True),
        ("when_authorized", "Bearer wrong", False, False),
        ("when_authorized", "Basic s3cret", False, False),
    ],
)
def test_detail_levels(show: Any, header: str | None, authorized: bool, expected: bool) -> None:
    config = HealthConfig(show_details=show, token="s3cret")
    assert outbound.health.show_details(config, authorization=header, authorized=authorized) is expected


def test_without_a_token_only_the_framework_can_authorize() -> None:
    config = HealthConfig()
    assert outbound.health.show_details(config, authorization="Bearer ", authorized=False) is False
    assert outbound.health.bearer_token_matches("Bearer x", None) is False


def test_render_status_lists_every_service(upstream: Upstream, make_registry: RegistryFactory, library: str) -> None:
    registry = make_registry(
        billing={"base_url": upstream.url, "critical": True}, search={"base_url": upstream.url, "client": library}
    )
    registry.session("billing").get("status/404")
    text = outbound.health.render_status(registry.report())
    lines = text.splitlines()
    assert lines[0].split() == [
        "SERVICE",
        "CLIENT",
        "STATUS",
        "BREAKER",
        "POOL",
        "REQUESTS",
        "ERRORS",
        "LAST",
        "60S",
        "LAST",
        "ERROR",
    ]
    assert lines[1].split()[:10] == ["billing", "*", "requests", "ok", "closed", "0/20", "1", "0", "0/1", "failed"]
    assert lines[2].split()[:8] == ["search", library, "ok", "closed", "0/20", "0", "0", "-"]
    assert lines[-1].startswith("overall: ok")


def test_probe_reports_reachability_latency_and_exit_code(
    upstream: Upstream, make_registry: RegistryFactory, library: str
) -> None:
    registry = make_registry(
        up={"base_url": upstream.url + "v1/", "probe": "/ok", "critical": True},
        fails={"base_url": upstream.url, "client": library, "probe": "status/503", "retry": {"total": 0}},
        quiet={"base_url": upstream.url},
    )
    results = {r.service: r for r in registry.probe()}
    assert results["up"].ok is True
    assert results["up"].status == 200
    assert results["up"].latency_ms is not None
    assert results["up"].url == upstream.url + "v1/ok"
    assert results["fails"].ok is False
    assert results["fails"].status == 503
    assert results["quiet"].ok is None
    assert outbound.health.probe_exit_code(results.values()) == 0  # the failing one is not critical
    text = outbound.health.render_probe(results.values())
    assert "FAILED" in text
    assert "skipped" in text

    upstream.set_mode("refuse")  # new connections are refused (the registry above still has a pooled one)
    fresh = make_registry(up={"base_url": upstream.url, "probe": "ok", "critical": True, "retry": {"total": 0}})
    down = fresh.probe("up")
    assert down[0].ok is False
    assert "connect error" in (down[0].error or "")
    assert outbound.health.probe_exit_code(down) == 1
    assert down[0].as_dict()["service"] == "up"


def test_probe_sends_exactly_one_request_per_service_concurrently_and_changes_nothing(
    upstream: Upstream, make_registry: RegistryFactory, library: str
) -> None:
    slow = {"base_url": upstream.url, "probe": "slow?delay=0.6", "timeout": {"read": 2}}
    registry = make_registry(
        a=slow,
        b={**slow, "client": library},
        down={"base_url": upstream.url, "probe": "status/503", "breaker": {"fail_max": 1}},
        held={"base_url": upstream.url, "probe": "hold?seconds=5", "timeout": {"connect": 0.2, "read": 0.3}},
    )
    started = time.monotonic()
    results = {result.service: result for result in registry.probe()}
    elapsed = time.monotonic() - started
    assert elapsed < 1.5, "two 0.6 s probes and a 0.5 s-bounded one, at once: about one of them, not their sum"
    assert upstream.hits_by_path["/slow"] == 2
    assert upstream.hits_by_path["/status/503"] == 1
    assert results["down"].ok is False
    assert results["down"].status == 503
    assert results["held"].ok is False
    assert "ReadTimeout" in (results["held"].error or "")
    for name in ("a", "b", "down", "held"):
        assert registry[name].policy.breaker.state == "closed"  # a probe is not a verdict on the upstream
        assert registry[name].policy.stats.requests == 0  # and not traffic of the service
