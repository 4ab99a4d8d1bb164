"""The commands both CLIs run (``outbound.cli``): status and its scope, --url against a live server, isolate, reset."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from flask import Flask

from outbound import Registry, cli
from outbound_flask import Outbound
from tests.conftest import RegistryFactory, open_breaker
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
