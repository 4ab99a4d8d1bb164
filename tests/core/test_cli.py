"""The commands both CLIs run (``outbound.cli``): status and its scope, --url against a live server, isolate, reset."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from flask import Flask

from outbound import Registry, cli, health
from outbound._page import render_page
from outbound.health import (
    BreakerSnapshot,
    BulkheadSnapshot,
    LastError,
    LatencySnapshot,
    PoolSnapshot,
    RateLimitSnapshot,
    RecentCalls,
    ServiceHealth,
    StatsSnapshot,
    build_report,
)
from outbound_flask import Outbound
from tests.conftest import RegistryFactory, open_breaker
from tests.core.test_fleet import RETRIED_LATE, open_during_a_retry
from tests.redis_server import RedisServer
from tests.upstream import Upstream, wait_until

TOKEN = "cli-token-0123456789"


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def live_app(upstream: Upstream) -> Iterator[tuple[str, Flask]]:
    """A Flask app serving /health/outbound on 127.0.0.1, as a running server would."""
    app = Flask("served")
    app.config["OUTBOUND"] = {
        "services": {
            "billing": {"base_url": upstream.url, "critical": True, "retry": None, "breaker": {"fail_max": 1}},
            "search": {"base_url": upstream.url, "client": "httpx"},
        },
        "health": {"token": TOKEN},
    }
    Outbound(app)
    server: WSGIServer = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/health/outbound", app
    finally:
        server.shutdown()
        server.server_close()
        app.extensions["outbound"].close()


def test_status_says_when_it_shows_its_own_new_process_only(make_registry: RegistryFactory, upstream: Upstream) -> None:
    output = cli.status(make_registry(api={"base_url": upstream.url}))
    assert output.code == 0
    assert "scope: this process only" in output.text
    assert "--url" in output.text
    assert output.text.splitlines()[-1].startswith("overall: ok")
    assert all(len(line) <= 100 for line in output.text.splitlines())  # no line wraps in a terminal


def test_status_url_reads_a_running_servers_report(live_app: tuple[str, Flask]) -> None:
    url, app = live_app
    open_breaker(app.extensions["outbound"], "billing")
    output = cli.remote_status(url, token=TOKEN)
    assert output.code == 1  # the critical service is down in the running server
    assert "billing *" in output.text
    assert "open" in output.text
    assert f"read from {url}" in output.text
    one = cli.remote_status(url, token=TOKEN, service="search", as_json=True)
    assert one.code == 0
    assert '"search"' in one.text
    assert '"billing"' not in one.text


def test_status_url_without_the_token_says_why_details_are_missing(live_app: tuple[str, Flask]) -> None:
    url, _ = live_app
    output = cli.remote_status(url)
    assert output.code == 0
    assert output.text == "overall: ok   (details hidden: pass --token with the health.token of its settings)"


def test_status_url_that_is_not_a_health_endpoint_is_an_error(upstream: Upstream) -> None:
    output = cli.remote_status(f"{upstream.url}ok?token=secret")
    assert output.code == 2
    assert output.text.startswith("Error:")
    assert "secret" not in output.text


def test_isolate_and_reset_refuse_without_a_shared_backend(make_registry: RegistryFactory, upstream: Upstream) -> None:
    registry = make_registry(api={"base_url": upstream.url})
    for output in (cli.isolate(registry, "api", None), cli.reset(registry)):
        assert output.code == 2
        assert "shared state backend" in output.text
    assert registry["api"].policy.breaker.state == "closed"  # nothing was done


def test_isolate_and_reset_reach_every_process_of_the_fleet(redis_url: str, upstream: Upstream) -> None:
    mapping = {
        "services": {"api": {"base_url": upstream.url}},
        "state": {"backend": "redis", "url": redis_url, "sync_interval": 0.2},
    }
    with Registry.from_mapping(mapping) as serving, Registry.from_mapping(mapping) as shell:
        serving.session("api").get("ok")
        isolated = cli.isolate(shell, "api", 30)
        assert isolated.code == 0
        assert "isolated for 30s" in isolated.text
        assert wait_until(lambda: serving["api"].policy.breaker.state == "isolated")
        assert cli.reset(shell, "api").code == 0
        assert wait_until(lambda: serving["api"].policy.breaker.state == "closed")


def test_status_url_json_keeps_everything_the_server_reports(upstream: Upstream) -> None:
    app = Flask("rich")
    app.config["OUTBOUND"] = {
        "services": {
            "api": {
                "base_url": upstream.url,
                "breaker": {"mode": "rate", "window": {"type": "count", "size": 10}, "minimum_calls": 5},
                "bulkhead": {"max_in_flight": 4},
                "rate_limit": {"rate": "100/second"},
            },
        },
        "health": {"token": TOKEN},
    }
    Outbound(app)
    server: WSGIServer = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/health/outbound"
        served = app.extensions["outbound"].report().as_dict()["services"]["api"]
        output = cli.remote_status(url, token=TOKEN, as_json=True)
        text = cli.remote_status(url, token=TOKEN)
    finally:
        server.shutdown()
        server.server_close()
        app.extensions["outbound"].close()
    shown = json.loads(output.text)["services"]["api"]
    assert shown["breaker"]["mode"] == "rate"
    assert shown["breaker"]["calls"] == served["breaker"]["calls"]
    assert shown["bulkhead"] == served["bulkhead"]
    assert shown["rate_limit"] == served["rate_limit"]
    assert text.code == 0


def test_status_url_shows_a_failing_service_and_exits_0(upstream: Upstream) -> None:
    app = Flask("failing")
    app.config["OUTBOUND"] = {
        "services": {
            "api": {"base_url": upstream.url, "retry": None, "critical": True, "breaker": {"mode": "rate"}},
            "search": {"base_url": upstream.url},
        },
        "health": {"token": TOKEN},
    }
    Outbound(app)
    server: WSGIServer = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for _ in range(5):
            app.extensions["outbound"].session("api").get("status/500")  # a rate breaker short of minimum_calls
        url = f"http://127.0.0.1:{server.server_port}/health/outbound"
        output = cli.remote_status(url, token=TOKEN)
        alone = cli.remote_status(url, token=TOKEN, service="api")
        anonymous = cli.remote_status(url)
    finally:
        server.shutdown()
        server.server_close()
        app.extensions["outbound"].close()
    row = next(line for line in output.text.splitlines() if line.startswith("api *"))
    assert row.split()[3:5] == ["failing", "closed"]
    assert "5/5 failed" in row
    assert output.text.splitlines()[-1].startswith("overall: degraded")
    assert (output.code, alone.code, anonymous.code) == (0, 0, 0)
    assert alone.text.splitlines()[-1].startswith("overall: degraded")
    assert anonymous.text.startswith("overall: degraded")


def test_the_typed_report_survives_its_own_json() -> None:
    opened = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)
    service = ServiceHealth(
        name="api",
        status="degraded",
        client="requests",
        base_url="https://api.internal/",
        critical=False,
        breaker=BreakerSnapshot(
            state="open",
            failures=3,
            opened_at=opened,
            retry_in=2.5,
            mode="rate",
            calls=10,
            failure_rate=0.6,
            slow_call_rate=0.0,
            opened_by=LastError(type="HTTPStatus", message="HTTP 503", at=opened),
        ),
        pool=PoolSnapshot(max_connections=10, in_use=1, idle=2, waiting=0),
        stats=StatsSnapshot(
            requests=5,
            errors=3,
            recent=RecentCalls(calls=5, errors=3),
            latency_ms=LatencySnapshot(p50=1.0, p95=2.0, p99=3.0),
        ),
        last_error=LastError(type="ReadTimeout", message="read timeout", at=opened),
        bulkhead=BulkheadSnapshot(max_in_flight=4, in_flight=1, waiting=0),
        rate_limit=RateLimitSnapshot(rate="100/second", scope="process", remaining=99),
        paused_for=1.5,
    )
    report = build_report([service])
    assert cli._report(json.loads(json.dumps(report.as_dict()))) == report


def test_status_while_the_fleets_redis_is_down_says_it_could_not_read_the_fleet(
    redis_server: RedisServer, redis_url: str, upstream: Upstream
) -> None:
    mapping = {
        "services": {"api": {"base_url": upstream.url}},
        "state": {"backend": "redis", "url": redis_url, "sync_interval": 0.2},
        "health": {"token": TOKEN},
    }
    app = Flask("cut-off")
    app.config["OUTBOUND"] = mapping
    Outbound(app)
    with Registry.from_mapping(mapping) as shell:
        redis_server.stop()
        try:
            table, as_json = cli.status(shell), cli.status(shell, as_json=True)
            isolated, reset = cli.isolate(shell, "api", None), cli.reset(shell, "api")
            answer = app.test_client().get("/health/outbound", headers={"Authorization": f"Bearer {TOKEN}"})
            served = answer.get_json()
        finally:
            redis_server.start()
            app.extensions["outbound"].close()
    assert table.code == as_json.code == health.FLEET_UNREACHABLE_EXIT_CODE == 3
    words = " ".join(table.text.split())  # the scope is wrapped to the terminal's width
    assert "scope: this process only" in words
    assert "The fleet's shared state could not be read (state backend redis unreachable: ConnectionError" in words
    assert "from the fleet's shared state" not in words
    assert all(len(line) <= 100 for line in table.text.splitlines()), table.text
    assert table.text.splitlines()[-1].startswith("overall: degraded")
    for report in (json.loads(as_json.text), served):  # the JSON is as honest: this process's own figures
        assert report["scope"] == "process"
        assert report["state_backend"]["status"] == "unreachable"
        assert "workers" not in report
        assert health.status_exit_code(report) == 3  # what `status --url` exits with, reading such a server
    for output in (isolated, reset):  # nothing was changed, and the operator is told so
        assert output.code == 3
        assert output.error
        assert "changed nothing" in " ".join(output.text.split())
    assert shell["api"].policy.breaker.state == "closed"


def test_memory_mode_shows_the_failure_that_opened_the_breaker_next_to_the_refusals(
    make_registry: RegistryFactory, upstream: Upstream
) -> None:
    registry = make_registry(api={"base_url": upstream.url, "retry": RETRIED_LATE, "breaker": {"fail_max": 3}})
    open_during_a_retry(registry, registry, upstream)
    api = registry.health()["services"]["api"]
    assert api["last_error"]["type"] == "CircuitOpenError"
    assert api["breaker"]["opened_by"]["type"] == "HTTPStatus"
    assert api["breaker"]["opened_by"]["message"] == "HTTP 503"
    text = cli.status(registry).text
    assert "api: last error CircuitOpenError: GET " in text
    assert "api: breaker opened by HTTPStatus: HTTP 503 (at " in text
    assert "Breaker opened by" in render_page(registry.health())
    registry.reset("api")
    assert "opened_by" not in registry.health()["services"]["api"]["breaker"]  # closed: nothing holds it open


def test_status_lines_stay_within_100_columns_with_long_errors(
    make_registry: RegistryFactory, upstream: Upstream
) -> None:
    registry = make_registry(api={"base_url": upstream.url + "a-rather-long/path/" * 6, "retry": None})
    assert registry.session("api").get("status/503").status_code == 503  # a failure: the last error
    text = cli.status(registry).text
    assert "api: last error HTTPStatus: GET " in text
    assert all(len(line) <= 100 for line in text.splitlines()), text
