"""Fleet mode end to end: gunicorn with four preloaded workers (Django and Flask) sharing one Redis, and once on
each other topology: a primary behind Sentinel, a 3-node Cluster.

The upstream starts failing; the fleet opens the breaker after ``fail_max`` failures in all (not per worker), every
worker refuses from then on, every worker's ``/health/outbound`` reports the same open breaker and four workers,
and ``outbound status`` run from a separate shell process shows the fleet too. Every wait is bounded; gunicorn is
always stopped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from redis.cluster import RedisCluster

from tests.flask.e2e_app import HEALTH_TOKEN
from tests.flask.test_e2e import Gunicorn
from tests.upstream import Upstream, wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 4
FAIL_MAX = 5  # the e2e apps' fleet settings
FRAMEWORKS = {
    # app to serve, the service /call uses, the path it calls, environment
    "flask": ("tests.flask.e2e_app:create_app()", "backend", "/data", {}),
    "django": (
        "tests.django.e2e_project.wsgi:application",
        "orders",
        "/orders",
        {"DJANGO_SETTINGS_MODULE": "tests.django.e2e_project.settings"},
    ),
}


# Each framework on one Redis, and once on each other topology (issue 26): behind Sentinel, on a Cluster.
RUNS = [("flask", "single"), ("django", "single"), ("flask", "sentinel"), ("django", "cluster")]


def _redis(topology: str, request: pytest.FixtureRequest) -> dict[str, str]:
    if topology == "sentinel":
        group = request.getfixturevalue("redis_sentinels")
        redis.Redis(port=group.primary_port(), socket_timeout=2).flushdb()
        return {"OUTBOUND_E2E_REDIS": group.url}
    if topology == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        RedisCluster.from_url(cluster.first_url).flushall(target_nodes=RedisCluster.PRIMARIES)
        return {"OUTBOUND_E2E_REDIS": cluster.url, "OUTBOUND_E2E_REDIS_CLUSTER": "1"}
    return {"OUTBOUND_E2E_REDIS": request.getfixturevalue("redis_url")}


@pytest.fixture(params=RUNS, ids=lambda run: "-".join(run))
def fleet_server(request: pytest.FixtureRequest, upstream: Upstream) -> Iterator[dict[str, Any]]:
    framework, topology = request.param
    app, service, path, extra = FRAMEWORKS[framework]
    with tempfile.TemporaryDirectory(prefix="ob") as home:
        env = {
            **os.environ,
            **extra,
            "PYTHONPATH": str(ROOT),
            "OUTBOUND_E2E_UPSTREAM": upstream.url,
            **_redis(topology, request),
            "HOME": home,  # gunicorn >= 24 opens a control socket under $HOME: keep it private to this run
        }
        args = [sys.executable, "-m", "gunicorn", "--preload", f"--workers={WORKERS}", "--bind=127.0.0.1:0"]
        gunicorn = Gunicorn([*args, "--graceful-timeout=5", app], env=env)
        try:
            [listening] = gunicorn.wait_for_log(r"Listening at: (http://127\.0\.0\.1:\d+)")
            gunicorn.wait_for_log(r"Booting worker with pid", count=WORKERS)
            yield {
                "base": listening.group(1),
                "gunicorn": gunicorn,
                "service": service,
                "path": path,
                "framework": framework,
                "env": env,
            }
        finally:
            gunicorn.stop()


def _get(url: str) -> requests.Response:
    # A new connection per request, so the kernel spreads them over the workers.
    headers = {"Connection": "close", "Authorization": f"Bearer {HEALTH_TOKEN}"}
    return requests.get(url, headers=headers, timeout=10)


def _refused(response: requests.Response) -> bool:
    body = response.json()
    return bool(body.get("circuit_open") or body.get("error") == "circuit open")


def test_the_fleet_opens_once_refuses_everywhere_and_reports_the_same(
    fleet_server: dict[str, Any], upstream: Upstream
) -> None:
    base, gunicorn, service = fleet_server["base"], fleet_server["gunicorn"], fleet_server["service"]
    pids: set[int] = set()

    def every_worker_answered() -> bool:
        response = _get(f"{base}/call")
        assert response.status_code == 200, response.text
        pids.add(response.json()["pid"])
        return len(pids) == WORKERS

    assert wait_until(every_worker_answered, 30), gunicorn.log

    upstream.set_mode("failing", status=503)
    before = upstream.hits_by_path[fleet_server["path"]]
    assert wait_until(lambda: _refused(_get(f"{base}/call")), 30), gunicorn.log
    refusals = [_refused(_get(f"{base}/call")) for _ in range(3 * WORKERS)]
    assert all(refusals), "every worker refuses once the fleet's breaker is open"
    assert upstream.hits_by_path[fleet_server["path"]] - before <= FAIL_MAX + WORKERS

    reports = [_get(f"{base}/health/outbound").json() for _ in range(3 * WORKERS)]
    for report in reports:
        assert report["scope"] == "fleet"
        assert report["workers"] == WORKERS
        assert report["services"][service]["breaker"]["state"] == "open"
        assert report["status"] == "down"  # the service is critical: every worker says so

    # A shell on another host: a new process that has served nothing reads the fleet's state.
    if fleet_server["framework"] == "django":
        command = [sys.executable, "-m", "django", "outbound", "status", "--service", service]
    else:
        command = [sys.executable, "-m", "flask", "--app", "tests.flask.e2e_app:create_app()", "outbound", "status"]
    shell = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT, env=fleet_server["env"])
    assert shell.returncode == 1, shell.stdout + shell.stderr  # down
    assert f"scope: fleet ({WORKERS} workers" in shell.stdout
    assert "open" in shell.stdout
    assert "Traceback" not in gunicorn.log, gunicorn.log
