"""One service, several endpoints (issue 31): routing per attempt, retries elsewhere, outlier ejection, trials, the
service's breaker, and ejections shared through Redis — against several real upstreams on 127.0.0.1."""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

import outbound
from outbound import ConfigError, Registry, parse_config
from outbound._endpoints import Endpoints
from tests.upstream import Upstream, wait_until

from .conftest import Send


@pytest.fixture
def ups() -> Iterator[list[Upstream]]:
    """Three upstreams of one's own (a test may stop one: a dead replica)."""
    servers = [Upstream().start() for _ in range(3)]
    yield servers
    for server in servers:
        server.stop()


def settings(servers: list[Upstream], **service: Any) -> dict[str, Any]:
    return {"endpoints": [server.url + "v1/" for server in servers], **service}


def endpoints_of(registry: Registry, name: str = "s") -> Endpoints:
    found = registry._open(name).policy.endpoints
    assert found is not None
    return found


def state_of(registry: Registry, index: int) -> dict[str, Any]:
    return endpoints_of(registry).snapshot()[index]


# -- settings ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "non-empty list"),
        ("http://a/", "non-empty list"),
        (["http://a:1/", "http://a:1"], "twice"),
        (["http://a/", "https://b/"], "mixes schemes"),
        (["ftp://a/"], "must use http or https"),
        ([{"url": "http://a/", "weight": 0}], "from 1 to 1000"),
        ([{"url": "http://a/", "zone": "x"}], "{url, weight, priority}"),
        (["http://a/?x=1"], "query string"),
    ],
)
def test_bad_endpoints_are_a_config_error_naming_service_and_key(value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({"services": {"s": {"endpoints": value}}})
    assert raised.value.service == "s"
    assert (raised.value.key or "").startswith("endpoints")
    assert message in str(raised.value)


def test_endpoints_with_base_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"services\.s\.endpoints.*base_url"):
        parse_config({"services": {"s": {"base_url": "http://a/", "endpoints": ["http://b/", "http://c/"]}}})


def test_outlier_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"outlier\.max_ejection"):
        parse_config(
            {"services": {"s": {"base_url": "http://a/", "outlier": {"base_ejection": 10, "max_ejection": 5}}}}
        )
    with pytest.raises(ConfigError, match=r"services\.s\.balance"):
        parse_config({"services": {"s": {"base_url": "http://a/", "balance": "random"}}})


def test_one_endpoint_is_base_url() -> None:
    config = parse_config({"services": {"s": {"endpoints": [{"url": "http://a:8000/v1", "weight": 3}]}}})
    service = config.services["s"]
    assert service.base_url == "http://a:8000/v1/"
    assert service.endpoints == ()  # nothing to balance: the service a base_url builds


# -- routing -----------------------------------------------------------------------------------------------------------


def test_calls_are_spread_over_every_endpoint_with_its_own_host(
    kind: str, send: Send, ups: list[Upstream], make_registry: Any
) -> None:
    registry = make_registry(s=settings(ups, client=kind, balance="round_robin"))
    for _ in range(30):
        assert send(registry, "s", "GET", "ok").status_code == 200
    assert [server.hits for server in ups] == [10, 10, 10]
    for server in ups:
        (last,) = server.recent()[-1:]
        assert last["path"] == "/v1/ok"
        assert last["headers"]["host"] == f"127.0.0.1:{server.port}"


def test_weights_share_the_traffic(ups: list[Upstream], make_registry: Any) -> None:
    endpoints = [{"url": ups[0].url, "weight": 3}, {"url": ups[1].url, "weight": 1}]
    registry = make_registry(s={"endpoints": endpoints, "client": "httpx", "balance": "round_robin"})
    client = registry.client("s")
    for _ in range(40):
        client.get("ok").raise_for_status()
    assert (ups[0].hits, ups[1].hits) == (30, 10)


def test_p2c_uses_every_endpoint(ups: list[Upstream], make_registry: Any) -> None:
    registry = make_registry(s=settings(ups, client="httpx"))
    client = registry.client("s")
    for _ in range(60):
        client.get("ok").raise_for_status()
    assert all(server.hits >= 5 for server in ups), [server.hits for server in ups]


def test_a_retry_goes_to_another_endpoint(kind: str, send: Send, ups: list[Upstream], make_registry: Any) -> None:
    ups[0].set_mode("failing", status=503)
    registry = make_registry(
        s=settings(ups[:2], client=kind, retry={"total": 1, "backoff_factor": 0}, pause=None, balance="round_robin")
    )
    for _ in range(10):
        assert send(registry, "s", "GET", "work").status_code == 200
    # Each call's first attempt alternates; one that met the 503 was retried on the other endpoint, never twice on it.
    assert ups[0].hits <= 5
    assert ups[1].hits == 10


def test_lower_priority_first_and_the_next_when_it_is_ejected(ups: list[Upstream], make_registry: Any) -> None:
    endpoints = [{"url": ups[0].url, "priority": 0}, {"url": ups[1].url, "priority": 1}]
    registry = make_registry(
        s={"endpoints": endpoints, "client": "httpx", "outlier": {"consecutive_failures": 2, "base_ejection": 60}}
    )
    client = registry.client("s")
    for _ in range(10):
        client.get("ok").raise_for_status()
    assert (ups[0].hits, ups[1].hits) == (10, 0)
    ups[0].stop()
    for _ in range(10):
        assert client.get("ok").status_code == 200  # the failed attempts are retried on the fallback
    assert state_of(registry, 0)["state"] == "ejected"
    assert ups[1].hits == 10


# -- ejection, trial, breaker ------------------------------------------------------------------------------------------


def test_a_dead_endpoint_is_ejected_and_the_breaker_stays_closed(
    kind: str, send: Send, ups: list[Upstream], make_registry: Any
) -> None:
    registry = make_registry(
        s=settings(
            ups,
            client=kind,
            outlier={"consecutive_failures": 3, "base_ejection": 60},
            breaker={"fail_max": 2},
        )
    )
    ups[1].stop()
    for _ in range(60):
        assert send(registry, "s", "GET", "ok").status_code == 200  # each failed attempt was retried elsewhere
    dead = state_of(registry, 1)
    assert dead["state"] == "ejected"
    assert dead["errors"] == 3  # then nothing more went there
    assert dead["ejected_for"] > 50
    assert registry._open("s").policy.breaker.state == "closed"


def test_max_ejected_percent_keeps_endpoints_in_and_the_breaker_opens_when_none_is_usable(
    ups: list[Upstream], make_registry: Any
) -> None:
    registry = make_registry(
        s=settings(
            ups[:2],
            client="httpx",
            retry={"total": 0},
            outlier={"consecutive_failures": 2, "base_ejection": 60, "max_ejected_percent": 50},
            breaker={"fail_max": 3},
        )
    )
    client = registry.client("s")
    for server in ups[:2]:
        server.stop()
    opened = False
    for _ in range(20):
        try:
            client.get("ok")
        except outbound.CircuitOpenError:
            opened = True
            break
        except outbound.CallError:
            pass
    states = [row["state"] for row in endpoints_of(registry).snapshot()]
    assert sorted(states) == ["ejected", "healthy"]  # 50% of 2: one ejected at most
    assert opened  # no endpoint usable: the service's breaker took the failures and opened


def test_an_ejected_endpoint_comes_back_through_a_trial(ups: list[Upstream], make_registry: Any) -> None:
    registry = make_registry(
        s=settings(
            ups[:2], client="httpx", balance="round_robin", outlier={"consecutive_failures": 1, "base_ejection": 1.0}
        )
    )
    client = registry.client("s")
    ups[0].set_mode("failing", status=500)
    for _ in range(4):
        client.get("work")
    assert state_of(registry, 0)["state"] == "ejected"
    ups[0].set_mode("healthy")
    time.sleep(state_of(registry, 0)["ejected_for"] + 0.05)
    assert state_of(registry, 0)["state"] == "healthy"  # its ejection has ended: the next call to it is a trial
    before = ups[0].hits
    for _ in range(20):
        client.get("work").raise_for_status()
    assert ups[0].hits > before  # the trial succeeded: back in the rotation
    assert state_of(registry, 0)["ejected_for"] is None


def test_a_failed_trial_ejects_again_for_longer(ups: list[Upstream], make_registry: Any) -> None:
    registry = make_registry(
        s=settings(
            ups[:2], client="httpx", balance="round_robin", outlier={"consecutive_failures": 1, "base_ejection": 1.0}
        )
    )
    client = registry.client("s")
    ups[0].set_mode("failing", status=500)
    for _ in range(4):
        client.get("work")
    assert state_of(registry, 0)["ejections"] == 1
    time.sleep(state_of(registry, 0)["ejected_for"] + 0.05)
    for _ in range(4):  # one of them is its trial, which fails
        client.get("work")
    row = state_of(registry, 0)
    assert row["ejections"] == 2
    assert row["ejected_for"] > 1.0  # 2 x base_ejection, from the failed trial


# -- async -------------------------------------------------------------------------------------------------------------


def test_async_calls_are_routed_and_a_dead_endpoint_ejected(
    async_transport: str, ups: list[Upstream], make_registry: Any
) -> None:
    registry = make_registry(
        s=settings(
            ups, client="httpx", transport=async_transport, outlier={"consecutive_failures": 2, "base_ejection": 60}
        )
    )
    ups[2].stop()

    async def main() -> list[int]:
        client = registry.async_client("s")
        return [(await client.get("ok")).status_code for _ in range(40)]

    assert asyncio.run(main()) == [200] * 40
    assert ups[0].hits
    assert ups[1].hits
    assert ups[0].recent()[-1]["headers"]["host"] == f"127.0.0.1:{ups[0].port}"
    assert state_of(registry, 2)["state"] == "ejected"


def test_a_hedge_goes_to_another_endpoint(ups: list[Upstream], make_registry: Any) -> None:
    ups[0].set_mode("slow", delay=0.5)
    endpoints = [{"url": ups[0].url, "weight": 1000}, {"url": ups[1].url, "weight": 1}]
    registry = make_registry(
        s={"endpoints": endpoints, "client": "httpx", "balance": "round_robin", "hedge": {"delay": 0.05, "max": 1}}
    )

    async def main() -> list[int]:
        client = registry.async_client("s")
        # Each call goes to the slow endpoint first (the balance prefers it); its hedge must go to the other one.
        return [(await client.get("work")).status_code for _ in range(3)]

    assert asyncio.run(main()) == [200] * 3
    assert ups[0].hits == 3
    assert ups[1].hits == 3


# -- the fleet ---------------------------------------------------------------------------------------------------------


def fleet_registry(redis_url: str, servers: list[Upstream], **service: Any) -> Registry:
    return Registry.from_mapping(
        {
            "state": {"backend": "redis", "url": redis_url},
            "services": {"s": settings(servers, client="httpx", **service)},
        }
    )


def test_one_workers_ejection_holds_for_the_fleet(redis_url: str, ups: list[Upstream]) -> None:
    outlier = {"consecutive_failures": 4, "base_ejection": 60}
    workers = [fleet_registry(redis_url, ups, outlier=outlier, balance="round_robin") for _ in range(3)]
    try:
        ups[0].stop()
        for _ in range(30):
            for worker in workers:
                assert worker.client("s").get("ok").status_code == 200
        errors = [state_of(worker, 0)["errors"] for worker in workers]
        # The fleet counted the failures: 4 ejected it, and each other worker failed there once more at most.
        assert sum(errors) <= 4 + len(workers) - 1, errors
        assert all(state_of(worker, 0)["state"] == "ejected" for worker in workers)
    finally:
        for worker in workers:
            worker.close()


def test_without_the_fleet_each_worker_counts_alone(ups: list[Upstream], make_registry: Any) -> None:
    # The check above can fail: the same traffic without Redis costs consecutive_failures per worker.
    workers = [
        make_registry(
            s=settings(
                ups, client="httpx", outlier={"consecutive_failures": 4, "base_ejection": 60}, balance="round_robin"
            )
        )
        for _ in range(3)
    ]
    ups[0].stop()
    for _ in range(30):
        for worker in workers:
            worker.client("s").get("ok")
    assert sum(state_of(worker, 0)["errors"] for worker in workers) == 12


def test_a_bad_record_in_redis_is_ignored(redis_url: str, ups: list[Upstream]) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    url = ups[0].url + "v1/"
    client.hset("outbound:ejections:s", mapping={f"u:{url}": "garbage", f"f:{url}": "x", f"n:{url}": "-"})
    worker = fleet_registry(
        redis_url, ups, outlier={"consecutive_failures": 2, "base_ejection": 60}, balance="round_robin"
    )
    try:
        ups[0].stop()
        for _ in range(20):
            assert worker.client("s").get("ok").status_code == 200
        assert state_of(worker, 0)["state"] == "ejected"
    finally:
        worker.close()


def test_redis_down_each_worker_decides_alone(ups: list[Upstream]) -> None:
    worker = fleet_registry(
        "redis://127.0.0.1:1/0", ups, outlier={"consecutive_failures": 2, "base_ejection": 60}, balance="round_robin"
    )
    try:
        ups[0].stop()
        for _ in range(20):
            assert worker.client("s").get("ok").status_code == 200
        assert state_of(worker, 0)["state"] == "ejected"
    finally:
        worker.close()


# -- reports -----------------------------------------------------------------------------------------------------------


def test_health_json_status_and_page_show_each_endpoint(ups: list[Upstream], make_registry: Any) -> None:
    from outbound._page import render_page
    from outbound.cli import _report, render_status

    outlier = {"consecutive_failures": 1, "base_ejection": 60}
    registry = make_registry(s=settings(ups, client="httpx", outlier=outlier, balance="round_robin"))
    ups[1].stop()
    for _ in range(20):
        registry.client("s").get("ok").raise_for_status()
    report = registry.health()["services"]["s"]
    dead, alive = ups[1].url + "v1/", ups[0].url + "v1/"
    assert report["endpoints"][dead]["state"] == "ejected"
    assert report["endpoints"][dead]["ejected_for"] > 50
    assert report["endpoints"][alive]["state"] == "healthy"
    assert report["endpoints"][alive]["errors"] == 0
    assert report["endpoints"][alive]["in_flight"] == 0
    text = render_status(_report(registry.health()))
    assert f"s:endpoint{dead}ejectedfor" in re.sub(r"\s+", "", text)  # the line may be wrapped
    page = render_page(registry.health())
    assert dead in page
    assert "ejected" in page


def test_a_plain_service_reports_no_endpoints(upstream: Upstream, make_registry: Any) -> None:
    registry = make_registry(s={"base_url": upstream.url, "client": "httpx"})
    assert "endpoints" not in registry.health()["services"]["s"]


# -- the chooser (the stage alone, on a clock of the test's own) -------------------------------------------------------


class _View:
    """What a stage reads of a call (``_stage.CallView``)."""

    def __init__(self, attempts: int = 0) -> None:
        self.method = "GET"
        self.attempts = attempts


def _stage(outlier: dict[str, Any] | None = None, **service: Any) -> tuple[Endpoints, list[float]]:
    from outbound._breaker import Breaker
    from outbound._config import parse_config

    now = [100.0]
    urls = ["http://a.invalid/", "http://b.invalid/", "http://c.invalid/"]
    config = parse_config({"services": {"s": {"endpoints": urls, "outlier": outlier or {}, **service}}}).services["s"]
    breaker = Breaker("s", config.breaker, clock=lambda: now[0])
    # A seeded draw: the balancing tests count picks, and must not fail on an unlucky run.
    return Endpoints(config, clock=lambda: now[0], breaker=breaker, random=random.Random(31).random), now


def test_p2c_prefers_the_less_busy_endpoint() -> None:
    stage, _ = _stage()
    busy = stage.endpoints[0]
    busy.in_flight = 50
    picks = []
    for _ in range(900):
        picks.append(stage.admit(_View()))
        stage.release(picks[-1])
    # Only when both draws were the busy one: (1/3)^2 of the time, ~100 of 900; a pick that ignored how busy each
    # endpoint is would choose it a third of the time, ~300.
    assert picks.count(busy) < 200


def test_an_ended_ejection_admits_one_trial_at_a_time() -> None:
    from outbound._outcome import Kind, Outcome

    stage, now = _stage({"consecutive_failures": 1, "base_ejection": 10}, balance="round_robin")
    first = stage.endpoints[0]
    stage.record(first, Outcome(Kind.CONNECT_ERROR), 0.0)
    assert stage.snapshot()[0]["state"] == "ejected"
    now[0] += 10.5
    picks = [stage.admit(_View()) for _ in range(9)]
    assert picks.count(first) == 1  # its trial is in flight: nothing else goes there meanwhile
    assert stage.snapshot()[0]["state"] == "trial"
    stage.record(first, Outcome(Kind.RESPONSE, status=200), 0.0)
    assert stage.snapshot()[0]["state"] == "healthy"
    for pick in picks:
        if pick is not first:
            stage.release(pick)
    assert [stage.admit(_View()) for _ in range(3)].count(first) == 1  # back in the rotation


def test_a_4xx_is_no_failure_of_the_endpoint() -> None:
    from outbound._outcome import Kind, Outcome

    stage, _ = _stage({"consecutive_failures": 1})
    stage.record(stage.endpoints[0], Outcome(Kind.RESPONSE, status=404), 0.0)
    assert stage.snapshot()[0]["state"] == "healthy"
    assert stage.snapshot()[0]["errors"] == 0


def test_after_a_fork_nothing_is_in_flight() -> None:
    stage, _ = _stage()
    stage.admit(_View())
    stage.reset_after_fork()
    assert [row["in_flight"] for row in stage.snapshot()] == [0, 0, 0]


def test_prometheus_gauges_per_endpoint(ups: list[Upstream]) -> None:
    from prometheus_client import CollectorRegistry

    from outbound._metrics._live import LiveRegistries
    from outbound._metrics.prometheus import GaugeRefresher, PrometheusMetrics, PrometheusObserver

    collector = CollectorRegistry()
    metrics, live = PrometheusMetrics(collector), LiveRegistries()
    outlier = {"consecutive_failures": 1, "base_ejection": 60}
    for multiprocess in (False, True):
        registry = Registry.from_mapping(
            {"services": {"s": settings(ups, client="httpx", outlier=outlier, balance="round_robin")}}
        )
        try:
            refresher = GaugeRefresher(metrics, live, interval=0.01)
            observer = PrometheusObserver(
                registry, metrics=metrics, live=live, refresher=refresher, multiprocess=multiprocess
            )
            registry.add_observer(observer)
            if not multiprocess:
                ups[1].stop()
            for _ in range(10):
                registry.client("s").get("ok").raise_for_status()

            def sample(name: str, index: int) -> float | None:
                return collector.get_sample_value(name, {"service": "s", "endpoint": ups[index].url + "v1/"})

            assert wait_until(lambda: sample("outbound_endpoint_ejected", 1) == 1, timeout=5)
            assert sample("outbound_endpoint_ejected", 0) == 0
            assert sample("outbound_endpoint_in_flight", 0) == 0
        finally:
            registry.close()


def test_otel_gauges_per_endpoint(ups: list[Upstream]) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from outbound._metrics import otel

    reader = InMemoryMetricReader()
    otel.use_meter_provider(MeterProvider(metric_readers=[reader]))
    outlier = {"consecutive_failures": 1, "base_ejection": 60}
    registry = Registry.from_mapping(
        {
            "services": {"s": settings(ups, client="httpx", outlier=outlier, balance="round_robin")},
            "metrics": {"otel": True},
        }
    )
    try:
        ups[2].stop()
        for _ in range(10):
            registry.client("s").get("ok").raise_for_status()
        data = reader.get_metrics_data()
        points = {
            (metric.name, point.attributes["server.address"]): point.value
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name.startswith("outbound.endpoint.")
            for point in metric.data.data_points
        }
        assert points[("outbound.endpoint.ejected", ups[2].url + "v1/")] == 1
        assert points[("outbound.endpoint.ejected", ups[0].url + "v1/")] == 0
        assert points[("outbound.endpoint.in_flight", ups[0].url + "v1/")] == 0
    finally:
        registry.close()
        otel.use_meter_provider(None)


def test_a_retry_avoids_the_endpoint_that_failed_even_when_the_balance_prefers_it(
    kind: str, send: Send, ups: list[Upstream], make_registry: Any
) -> None:
    ups[0].set_mode("failing", status=503)
    endpoints = [{"url": ups[0].url, "weight": 1000}, {"url": ups[1].url, "weight": 1}]
    registry = make_registry(
        s={
            "endpoints": endpoints,
            "client": kind,
            "balance": "round_robin",
            "retry": {"total": 1, "backoff_factor": 0},
            "pause": None,
            "outlier": {"consecutive_failures": 100},
        }
    )
    for _ in range(10):
        assert send(registry, "s", "GET", "work").status_code == 200  # the retry went to the other endpoint
    assert ups[0].hits == 10
    assert ups[1].hits == 10


def test_a_failure_rate_breaker_ignores_one_dead_endpoint(ups: list[Upstream], make_registry: Any) -> None:
    # Without endpoints a third of the attempts failing would open this breaker; with them, one bad endpoint is the
    # endpoints' business while others are usable.
    registry = make_registry(
        s=settings(
            ups,
            client="httpx",
            outlier={"consecutive_failures": 8, "base_ejection": 60},
            breaker={"mode": "rate", "failure_rate": 0.2, "minimum_calls": 5},
            balance="round_robin",
        )
    )
    ups[2].stop()
    for _ in range(30):
        assert registry.client("s").get("ok").status_code == 200
    assert state_of(registry, 2)["errors"] == 8
    assert registry._open("s").policy.breaker.state == "closed"


@pytest.mark.parametrize("client", ["requests", "httpx", "async"])
def test_one_endpoint_builds_the_service_base_url_builds(client: str) -> None:
    from tests.core.test_stages_off import service_shape

    one = {"services": {"s": {"endpoints": ["http://stages.invalid/"]}}}
    base = {"services": {"s": {"base_url": "http://stages.invalid/"}}}
    two = {"services": {"s": {"endpoints": ["http://stages.invalid/", "http://other.invalid/"]}}}
    assert service_shape(one, client) == service_shape(base, client)
    assert service_shape(two, client) != service_shape(base, client)  # the comparison sees the endpoints stage


def test_a_fleet_ejection_ends_and_the_endpoint_comes_back_through_trials(redis_url: str, ups: list[Upstream]) -> None:
    outlier = {"consecutive_failures": 2, "base_ejection": 1.0}
    workers = [fleet_registry(redis_url, ups, outlier=outlier, balance="round_robin") for _ in range(2)]
    port = ups[0].port
    ups[0].stop()
    revived = None

    def states() -> list[str]:
        return [state_of(worker, 0)["state"] for worker in workers]

    try:
        for _ in range(30):  # bounded: each worker learns of the ejection at its next failure there
            for worker in workers:
                assert worker.client("s").get("ok").status_code == 200
            if states() == ["ejected", "ejected"]:
                break
        assert states() == ["ejected", "ejected"]
        assert sum(state_of(worker, 0)["errors"] for worker in workers) <= 2 + 1
        revived = Upstream("127.0.0.1", port).start()
        time.sleep(1.1)
        for _ in range(30):
            for worker in workers:
                assert worker.client("s").get("ok").status_code == 200
            if states() == ["healthy", "healthy"] and revived.hits >= 2:
                break
        assert states() == ["healthy", "healthy"]
        assert revived.hits >= 2  # a trial from each worker (then its share)
    finally:
        for worker in workers:
            worker.close()
        if revived is not None:
            revived.stop()
