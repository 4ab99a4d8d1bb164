"""``flask outbound status`` and ``flask outbound probe``: output and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import redis
from click.testing import CliRunner
from flask import Flask
from flask.cli import FlaskGroup

from outbound_flask import Outbound
from outbound_flask.cli import outbound_cli
from tests.conftest import open_breaker
from tests.flask.conftest import AppFactory, services
from tests.upstream import Upstream

ROOT = Path(__file__).resolve().parents[2]
TRIPS_ON_FIRST_FAILURE = {"retry": None, "breaker": {"fail_max": 1, "reset_timeout": 60}}

# The table's columns (LAST 60S: of the last minute's calls, those that failed), split on spaces.
HEADER = ["SERVICE", "CLIENT", "STATUS", "BREAKER", "POOL", "REQUESTS", "ERRORS", "LAST", "60S", "LAST", "ERROR"]


def invoke(app: Flask, *args: str) -> Any:
    return app.test_cli_runner().invoke(args=["outbound", *args])


def test_the_group_is_added_to_the_app_cli(make_app: AppFactory) -> None:
    app = make_app({"services": {}})
    assert app.cli.commands["outbound"] is outbound_cli
    result = invoke(app, "--help")
    assert result.exit_code == 0
    assert "status" in result.output
    assert "probe" in result.output


def test_status_table_when_ok(make_app: AppFactory, upstream: Upstream) -> None:
    app = make_app(services(upstream, billing={"critical": True}, search={"client": "httpx"}))
    app.extensions["outbound"].session("billing").get("ok")

    result = invoke(app, "status")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == HEADER
    assert lines[1].split()[:8] == ["billing", "*", "requests", "ok", "closed", "0/20", "1", "0"]
    assert lines[2].split()[:3] == ["search", "httpx", "ok"]
    assert lines[-1] == "overall: ok   (* critical)"


def test_status_degraded_exits_0(make_app: AppFactory, upstream: Upstream) -> None:
    app = make_app(services(upstream, billing=TRIPS_ON_FIRST_FAILURE))
    open_breaker(app.extensions["outbound"], "billing")

    result = invoke(app, "status")

    assert result.exit_code == 0, result.output
    assert "overall: degraded" in result.stdout
    assert "HTTPStatus: GET http://127.0.0.1:" in result.stdout
    assert "/status/503 -> HTTP 503" in result.stdout


def test_status_down_exits_1(make_app: AppFactory, upstream: Upstream) -> None:
    app = make_app(services(upstream, billing={**TRIPS_ON_FIRST_FAILURE, "critical": True}, search={}))
    open_breaker(app.extensions["outbound"], "billing")

    result = invoke(app, "status")

    assert result.exit_code == 1, result.output
    assert "overall: down" in result.stdout


def test_status_json_is_the_full_report(make_app: AppFactory, upstream: Upstream) -> None:
    app = make_app(services(upstream, billing={**TRIPS_ON_FIRST_FAILURE, "critical": True}))
    open_breaker(app.extensions["outbound"], "billing")

    result = invoke(app, "status", "--json")

    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["status"] == "down"
    assert set(report["services"]) == {"billing"}
    assert set(report["services"]["billing"]) == set(app.extensions["outbound"].health()["services"]["billing"])
    assert report["services"]["billing"]["breaker"]["state"] == "open"


def test_status_for_one_service(make_app: AppFactory, upstream: Upstream) -> None:
    app = make_app(services(upstream, billing={**TRIPS_ON_FIRST_FAILURE, "critical": True}, search={}))
    open_breaker(app.extensions["outbound"], "billing")

    healthy = invoke(app, "status", "--service", "search", "--json")
    assert healthy.exit_code == 0, healthy.output
    assert json.loads(healthy.stdout)["status"] == "ok"
    assert set(json.loads(healthy.stdout)["services"]) == {"search"}

    down = invoke(app, "status", "--service", "billing")
    assert down.exit_code == 1
    assert "search" not in down.stdout
    assert "overall: down" in down.stdout


def test_status_for_one_non_critical_down_service_is_degraded(make_app: AppFactory, upstream: Upstream) -> None:
    app = make_app(services(upstream, billing=TRIPS_ON_FIRST_FAILURE))
    open_breaker(app.extensions["outbound"], "billing")
    result = invoke(app, "status", "--service", "billing", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["status"] == "degraded"


def test_unknown_service_is_a_usage_error(make_app: AppFactory, upstream: Upstream) -> None:
    app = make_app(services(upstream, billing={}))
    for command in ("status", "probe"):
        result = invoke(app, command, "--service", "biling")
        assert result.exit_code == 2
        assert "unknown outbound service 'biling'; did you mean 'billing'?" in result.stderr


def test_status_on_an_app_without_the_extension_exits_2() -> None:
    app = Flask("bare")
    app.cli.add_command(outbound_cli)
    result = invoke(app, "status")
    assert result.exit_code == 2
    assert "Error: outbound is not set up on app 'bare': did you forget init_app(app)?" in result.stderr


def broken_factory() -> Flask:
    # An app factory whose OUTBOUND is invalid: init_app raises, so Flask cannot load the app.
    app = Flask("broken")
    app.config["OUTBOUND"] = {"services": {"billing": {"base_url": "ftp://billing/"}}}
    Outbound(app)
    return app


def test_status_exits_2_with_the_core_message_when_the_factory_fails() -> None:
    # The group installed as a Flask CLI plugin (entry point "flask.commands") is available even though the app
    # cannot load; this FlaskGroup is what `flask` builds then.
    cli = FlaskGroup(create_app=broken_factory, add_default_commands=False, load_dotenv=False)
    cli.add_command(outbound_cli)

    for args in (["outbound", "status"], ["outbound", "status", "--json"], ["outbound", "probe"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, result.output
        assert result.stdout == ""
        assert "Error: OUTBOUND[services.billing.base_url]: must use http or https, got scheme 'ftp'" in result.stderr


def test_status_through_a_flask_group_that_loads_the_app(make_app: AppFactory, upstream: Upstream) -> None:
    app = make_app(services(upstream, billing={}))
    cli = FlaskGroup(create_app=lambda: app, add_default_commands=False, load_dotenv=False)
    result = CliRunner().invoke(cli, ["outbound", "status"])
    assert result.exit_code == 0, result.output
    assert "overall: ok" in result.stdout


def test_probe_reports_each_service(make_app: AppFactory, upstream: Upstream) -> None:
    app = make_app(
        services(
            upstream,
            billing={"critical": True, "probe": "ok"},
            search={"client": "httpx", "probe": "status/503", "retry": None},
            ledger={},
        )
    )

    result = invoke(app, "probe")

    assert result.exit_code == 0, result.output  # only a non-critical probe failed
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert rows["billing"].split()[1:4] == ["*", "ok", "200"]
    assert f"{upstream.url}ok" in rows["billing"]
    assert rows["search"].split()[1:3] == ["FAILED", "503"]
    assert rows["ledger"].split()[1] == "skipped"
    assert "no 'probe' path configured" in rows["ledger"]
    assert upstream.hits_by_path["/ok"] == 1
    assert upstream.hits_by_path["/status/503"] == 1


def test_probe_exits_1_when_a_critical_service_fails(make_app: AppFactory, upstream: Upstream) -> None:
    app = make_app(services(upstream, billing={"critical": True, "probe": "health", "retry": None}))
    upstream.set_mode("failing", status=503)

    result = invoke(app, "probe", "--json")

    assert result.exit_code == 1, result.output
    [entry] = json.loads(result.stdout)
    assert entry == {
        "service": "billing",
        "critical": True,
        "url": f"{upstream.url}health",
        "ok": False,
        "status": 503,
        "latency_ms": entry["latency_ms"],
        "error": None,
    }


def test_probe_of_an_unreachable_critical_service(make_app: AppFactory, upstream: Upstream) -> None:
    app = make_app(
        services(
            upstream, billing={"critical": True, "probe": "ok", "retry": None, "timeout": 2}, search={"probe": "ok"}
        )
    )
    upstream.set_mode("refuse")

    result = invoke(app, "probe", "--service", "billing")

    assert result.exit_code == 1, result.output
    assert "search" not in result.stdout
    assert "FAILED" in result.stdout
    assert "billing: connect error on GET" in result.stdout


def test_the_real_flask_command(upstream: Upstream) -> None:
    # `flask --app ... outbound status` in a subprocess: the factory runs for the CLI call, as in production.
    env = {**os.environ, "OUTBOUND_E2E_UPSTREAM": upstream.url}
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "tests.flask.e2e_app:create_app", "outbound", "status"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "backend *" in result.stdout
    assert "overall: ok" in result.stdout


def test_the_real_flask_command_with_the_plugin_entry_point_exits_2_on_a_config_error(tmp_path: Path) -> None:
    # Installed as a "flask.commands" entry point, the group exists even though the factory raises ConfigError.
    # A dist-info directory on PYTHONPATH declares that entry point for this subprocess only.
    dist_info = tmp_path / "outbound_flask_cli_plugin-0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: outbound-flask-cli-plugin\nVersion: 0\n")
    (dist_info / "entry_points.txt").write_text("[flask.commands]\noutbound = outbound_flask.cli:outbound_cli\n")
    (tmp_path / "broken_app.py").write_text(
        textwrap.dedent(
            """
            from flask import Flask
            from outbound_flask import Outbound

            def create_app():
                app = Flask("broken")
                app.config["OUTBOUND"] = {"services": {"billing": {"base_url": "ftp://billing/"}}}
                Outbound(app)
                return app
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}

    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "broken_app:create_app", "outbound", "status"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.strip() == (
        "Error: OUTBOUND[services.billing.base_url]: must use http or https, got scheme 'ftp'"
    )


def test_cli_help_is_plain_text(make_app: AppFactory) -> None:
    # Click prints docstrings as they are: reStructuredText markup would show as ``backquotes``.
    runner = make_app({"services": {}}).test_cli_runner()
    for args in (["outbound", "--help"], ["outbound", "status", "--help"], ["outbound", "probe", "--help"]):
        result = runner.invoke(args=args)
        assert result.exit_code == 0
        assert "``" not in result.output, args


def test_isolate_and_reset_commands(make_app: AppFactory, upstream: Upstream, redis_url: str) -> None:
    local = make_app(services(upstream, billing={}))
    refused = invoke(local, "isolate", "billing")
    assert refused.exit_code == 2
    assert "shared state backend" in refused.output
    fleet = make_app({**services(upstream, billing={}), "state": {"backend": "redis", "url": redis_url}})
    assert invoke(fleet, "isolate", "billing", "--for", "5").exit_code == 0
    assert fleet.extensions["outbound"].report().services["billing"].breaker.state == "isolated"
    assert invoke(fleet, "reset").exit_code == 0
    assert fleet.extensions["outbound"].report().services["billing"].breaker.state == "closed"
    assert invoke(fleet, "isolate", "nope").exit_code == 2


def test_chaos_and_enforce_commands(make_app: AppFactory, upstream: Upstream, redis_url: str) -> None:
    local = make_app(services(upstream, billing={}))
    assert invoke(local, "chaos", "billing").exit_code == 2
    fleet = make_app(
        {**services(upstream, billing={}), "state": {"backend": "redis", "url": redis_url, "prefix": "fl"}}
    )
    result = invoke(fleet, "chaos", "billing", "--rate", "0.1", "--kind", "status", "--for", "10m")
    assert result.exit_code == 0, result.output
    client = redis.Redis.from_url(redis_url)
    assert 590_000 < client.pttl("fl:chaos:billing") <= 600_000
    assert invoke(fleet, "chaos", "--off").exit_code == 0
    assert client.exists("fl:chaos:billing") == 0
    assert invoke(fleet, "enforce", "billing").exit_code == 0
    assert client.get("fl:enforce:billing") == b"1"
    assert invoke(fleet, "chaos", "billing", "--for", "forever").exit_code == 2
    assert invoke(fleet, "chaos", "nope").exit_code == 2
