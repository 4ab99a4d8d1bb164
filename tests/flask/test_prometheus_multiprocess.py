"""Prometheus under gunicorn's multiprocess mode: two real workers record outbound's metrics in
``PROMETHEUS_MULTIPROC_DIR`` and one scrape sums them (tests/flask/prometheus_app.py).

The app is preloaded and the master makes a call before forking, so the workers also prove that the gauge refresher
started in the master does not count as theirs: each starts its own. Every wait is bounded; gunicorn is always
stopped.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from gunicorn.config import KNOWN_SETTINGS
from prometheus_client.parser import text_string_to_metric_families

from tests.flask.prometheus_app import UPSTREAM_ENV
from tests.flask.test_e2e import Gunicorn, get, poll
from tests.upstream import Upstream

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CALLS = 12


@pytest.fixture
def server(upstream: Upstream, tmp_path: Path) -> Iterator[tuple[str, Gunicorn]]:
    """The app's base URL, served by two gunicorn workers that share ``tmp_path`` as their metrics directory."""
    no_control = ["--no-control-socket"] if any("--no-control-socket" in s.cli for s in KNOWN_SETTINGS if s.cli) else []
    args = [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        "python:tests.flask.prometheus_app",
        "--preload",
        "--workers",
        "2",
        "--bind",
        "127.0.0.1:0",
        "--graceful-timeout",
        "5",
        *no_control,
        "tests.flask.prometheus_app:create_app()",
    ]
    env = {**os.environ, UPSTREAM_ENV: upstream.url, "PYTHONPATH": str(ROOT), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    gunicorn = Gunicorn(args, env=env)
    try:
        [listening] = gunicorn.wait_for_log(r"Listening at: (http://127\.0\.0\.1:\d+)")
        gunicorn.wait_for_log(r"Booting worker with pid", count=2)
        yield listening.group(1), gunicorn
    finally:
        gunicorn.stop()


def scrape(base: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of one ``/metrics`` answer: (name, labels) -> value."""
    response = requests.get(f"{base}/metrics", headers={"Connection": "close"}, timeout=10)
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def sample(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_one_scrape_sums_the_workers(server: tuple[str, Gunicorn], upstream: Upstream) -> None:
    base, gunicorn = server
    pids: list[int] = []

    def called() -> bool:
        answer = get(f"{base}/call")
        assert answer.status_code == 200, answer.text
        pids.append(answer.json()["pid"])
        return len(pids) >= CALLS and len(set(pids)) == 2

    poll(called, f"both workers answered and at least {CALLS} calls were made", gunicorn)
    calls = len(pids)
    assert upstream.hits_by_path["/ok"] == calls + 1  # and the master's warm-up call

    samples = scrape(base)
    ok = {"service": "backend", "method": "GET", "status": "200", "outcome": "success"}
    assert sample(samples, "outbound_requests_total", **ok) == calls
    assert (
        sample(samples, "outbound_request_duration_seconds_count", service="backend", method="GET", outcome="success")
        == calls
    )
    warmup = {**ok, "service": "warmup"}
    assert sample(samples, "outbound_requests_total", **warmup) == 1  # the master's own file

    # Gauges: each worker's refresher writes its own; the live ones add up (pools) or take the max (breaker states).
    def gauges_written() -> bool:
        samples = scrape(base)
        return sample(samples, "outbound_pool_connections", service="backend", state="idle") == 2

    poll(gauges_written, "each worker's kept-alive connection to the upstream showed as idle", gunicorn)
    samples = scrape(base)
    assert sample(samples, "outbound_pool_connections", service="backend", state="in_use") == 0
    assert sample(samples, "outbound_pool_waiting", service="backend") == 0
    assert sample(samples, "outbound_circuit_state", service="backend", state="closed") == 1
    assert sample(samples, "outbound_circuit_state", service="backend", state="open") == 0
    assert "Traceback" not in gunicorn.log, gunicorn.log
