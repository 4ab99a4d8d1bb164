"""`manage.py outbound status|probe`: output, JSON, --service and the exit codes 0 / 1 / 2."""

from __future__ import annotations

import json
from io import StringIO
from typing import TYPE_CHECKING, Any

import pytest
import redis
from django.core.management import call_command
from django.core.management.base import CommandError

import outbound
from outbound import Registry
from tests.conftest import open_breaker
from tests.django.conftest import Configure, django_admin, service
from tests.upstream import Upstream

if TYPE_CHECKING:  # pytest-django exports the fixture's type only in recent versions
    from pytest_django import Settings

# The table's columns (LAST 60S: of the last minute's calls, those that failed), split on spaces.
HEADER = ["SERVICE", "CLIENT", "STATUS", "BREAKER", "POOL", "REQUESTS", "ERRORS", "LAST", "60S", "LAST", "ERROR"]


def run(*args: str) -> tuple[int, str]:
    """Run the command like manage.py would; return (exit code, stdout)."""
    out = StringIO()
    try:
        call_command("outbound", *args, stdout=out)
    except SystemExit as exit:
        code = exit.code
    else:
        code = 0
    assert isinstance(code, int)
    return code, out.getvalue()


@pytest.fixture
def registry(configure: Configure, upstream: Upstream) -> Registry:
    return configure(
        billing=service(upstream, critical=True, probe="/ok"),
        search=service(upstream, client="httpx", probe="/status/503"),
        audit=service(upstream),
    )


def test_status_table(registry: Registry, upstream: Upstream) -> None:
    registry.session("billing").get("ok")
    code, out = run("status")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == HEADER
    billing = next(line for line in lines if line.startswith("billing *"))
    assert billing.split()[2:7] == ["requests", "ok", "closed", "0/20", "1"]
    assert "search" in out
    assert "overall: ok" in out


def test_status_json(registry: Registry) -> None:
    code, out = run("status", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["status"] == "ok"
    assert set(report["services"]) == {"billing", "search", "audit"}


def test_status_degraded_exits_0(registry: Registry, upstream: Upstream) -> None:
    open_breaker(registry, "search")
    code, out = run("status")
    assert code == 0
    assert "overall: degraded" in out
    search = next(line for line in out.splitlines() if line.startswith("search"))
    assert "open" in search
    assert "down" in search


def test_status_down_exits_1(registry: Registry, upstream: Upstream) -> None:
    open_breaker(registry, "billing")
    code, out = run("status")
    assert code == 1
    assert "overall: down" in out
    code, out = run("status", "--json")
    assert code == 1
    assert json.loads(out)["status"] == "down"


def test_status_of_one_service(registry: Registry, upstream: Upstream) -> None:
    open_breaker(registry, "billing")
    open_breaker(registry, "search")
    code, out = run("status", "--service", "audit", "--json")
    assert (code, json.loads(out)["status"], list(json.loads(out)["services"])) == (0, "ok", ["audit"])
    code, out = run("status", "--service", "search", "--json")
    assert (code, json.loads(out)["status"]) == (0, "degraded")  # down, but not critical
    code, out = run("status", "--service", "billing")
    assert code == 1
    assert "audit" not in out
    assert "overall: down" in out


def test_unknown_service_exits_2(registry: Registry) -> None:
    for action in ("status", "probe"):
        with pytest.raises(CommandError, match="did you mean 'billing'") as caught:
            run(action, "--service", "biling")
        assert caught.value.returncode == outbound.health.CONFIG_ERROR_EXIT_CODE


def test_bad_settings_exit_2(settings: Settings) -> None:
    settings.OUTBOUND = {"services": {"billing": {"base_url": "billing.internal"}}}
    for action in ("status", "probe"):
        with pytest.raises(CommandError, match=r"OUTBOUND\[services\.billing\.base_url\]") as caught:
            run(action)
        assert caught.value.returncode == 2


def test_probe_table(registry: Registry, upstream: Upstream) -> None:
    code, out = run("probe")
    assert code == 0  # only a non-critical probe failed
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert rows["billing"].split()[2:4] == ["ok", "200"]
    assert rows["search"].split()[1:3] == ["FAILED", "503"]
    assert "skipped" in rows["audit"]
    assert upstream.hits_by_path["/ok"] == 1
    assert upstream.hits_by_path["/status/503"] == 1


def test_probe_json(registry: Registry) -> None:
    code, out = run("probe", "--json")
    assert code == 0
    results = {result["service"]: result for result in json.loads(out)}
    assert results["billing"]["ok"] is True
    assert results["billing"]["status"] == 200
    assert results["billing"]["latency_ms"] >= 0
    assert results["search"]["ok"] is False
    assert results["audit"]["ok"] is None


def test_probe_critical_failure_exits_1(registry: Registry, upstream: Upstream) -> None:
    upstream.set_mode("refuse")
    try:
        code, out = run("probe", "--service", "billing", "--json")
    finally:
        upstream.set_mode("healthy")
    assert code == 1
    [result] = json.loads(out)
    assert result["ok"] is False
    assert result["critical"] is True
    assert result["error"]


def test_probe_of_one_service(registry: Registry, upstream: Upstream) -> None:
    code, out = run("probe", "--service", "search")
    assert code == 0
    assert len(out.splitlines()) == 2
    assert upstream.hits == 1


def test_action_is_required() -> None:
    with pytest.raises(CommandError, match="status,probe"):
        call_command("outbound")


@pytest.mark.parametrize(
    "args",
    [
        ["outbound", "status", "--settings=tests.django.settings", "-v", "2"],
        ["outbound", "status", "--json", "--traceback", "--no-color"],
        ["outbound", "--settings=tests.django.settings", "probe", "--verbosity=0"],
    ],
)
def test_djangos_common_options_work_after_the_sub_command_too(args: list[str]) -> None:
    result = django_admin("tests.django.settings", *args)
    assert result.returncode == 0, result.stderr


def test_command_help_is_plain_text() -> None:
    for action in ("status", "probe"):
        result = django_admin("tests.django.settings", "outbound", action, "--help")
        assert result.returncode == 0
        assert "``" not in result.stdout


def test_isolate_without_a_shared_backend_exits_2(configure: Configure, upstream: Upstream) -> None:
    configure(billing=service(upstream))
    with pytest.raises(CommandError) as caught:
        call_command("outbound", "isolate", "billing", "--for", "30")
    assert caught.value.returncode == 2
    assert "shared state backend" in str(caught.value)


def test_isolate_and_reset_with_a_shared_backend(settings: Any, redis_url: str, upstream: Upstream) -> None:
    settings.OUTBOUND = {
        "services": {"billing": service(upstream)},
        "state": {"backend": "redis", "url": redis_url, "sync_interval": 0.2},
    }
    out = StringIO()
    call_command("outbound", "isolate", "billing", stdout=out)
    assert "isolated until `outbound reset`" in out.getvalue()
    with Registry.from_mapping(settings.OUTBOUND) as other_process:
        assert other_process.report().services["billing"].breaker.state == "isolated"
        call_command("outbound", "reset", stdout=out)
        assert other_process.report().services["billing"].breaker.state == "closed"


def test_chaos_and_enforce_commands(settings: Any, redis_url: str, upstream: Upstream) -> None:
    settings.OUTBOUND = {
        "services": {"billing": service(upstream)},
        "state": {"backend": "redis", "url": redis_url, "prefix": "dj"},
    }
    out = StringIO()
    call_command("outbound", "chaos", "billing", "--rate", "0.1", "--kind", "status", "--for", "10m", stdout=out)
    assert "injecting status faults into 0.1 of its calls for 600s" in " ".join(out.getvalue().split())
    client = redis.Redis.from_url(redis_url)
    assert 590_000 < client.pttl("dj:chaos:billing") <= 600_000
    call_command("outbound", "chaos", "--off", stdout=out)
    assert client.exists("dj:chaos:billing") == 0
    call_command("outbound", "enforce", "billing", stdout=out)
    assert client.get("dj:enforce:billing") == b"1"
    with pytest.raises(CommandError) as caught:
        call_command("outbound", "chaos", "billing", "--for", "forever")
    assert caught.value.returncode == 2
    with pytest.raises(CommandError) as caught:
        call_command("outbound", "chaos", "billing", "--kind", "explode")
    assert caught.value.returncode == 2
