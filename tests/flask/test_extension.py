"""The extension: both setup patterns, per-app registries, config errors, accessors and the lifecycle."""

from __future__ import annotations

import asyncio
import gc
import logging
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import httpx
import pytest
from flask import Flask

import outbound
from outbound_flask import Outbound
from tests.flask import e2e_app
from tests.flask.conftest import AppFactory, services
from tests.upstream import Upstream

ROOT = Path(__file__).resolve().parents[2]


def test_direct_pattern(upstream: Upstream) -> None:
    app = Flask(__name__)
    app.config["OUTBOUND"] = services(upstream, billing={})
    ext = Outbound(app)
    try:
        registry = app.extensions["outbound"]
        assert isinstance(registry, outbound.Registry)
        assert registry.services == ("billing",)
        with app.app_context():
            assert ext.registry is registry
            assert ext.session("billing").get("ok").text == "ok"
        assert not hasattr(ext, "app")  # per-app state lives in app.extensions only
    finally:
        registry.close()


def test_factory_pattern(make_app: AppFactory, upstream: Upstream) -> None:
    ext = Outbound()

    def create_app() -> Flask:
        return make_app(services(upstream, search={"client": "httpx"}), extension=ext)

    app = create_app()

    @app.get("/search")
    def search() -> dict[str, object]:
        return {"status": ext.client("search").get("ok").status_code}

    assert app.test_client().get("/search").json == {"status": 200}
    assert upstream.hits_by_path["/ok"] == 1


def test_one_extension_serves_several_apps_each_with_its_own_registry(make_app: AppFactory, upstream: Upstream) -> None:
    ext = Outbound()
    first = make_app(services(upstream, billing={}), extension=ext)
    second = make_app(services(upstream, billing={}, search={"client": "httpx"}), extension=ext)

    with first.app_context():
        first_registry = ext.registry
        first_session = ext.session("billing")
    with second.app_context():
        second_registry = ext.registry
        second_session = ext.session("billing")
        assert ext.registry.services == ("billing", "search")

    assert first_registry is not second_registry
    assert first_session is not second_session
    with first.app_context(), pytest.raises(outbound.ServiceLookupError, match="unknown outbound service 'search'"):
        ext.client("search")


def test_init_app_twice_is_refused(make_app: AppFactory, upstream: Upstream) -> None:
    ext = Outbound()
    app = make_app(services(upstream, billing={}), extension=ext)
    registry = app.extensions["outbound"]

    with pytest.raises(RuntimeError, match=r"already registered on app .*once per app"):
        ext.init_app(app)
    with pytest.raises(RuntimeError, match="already registered"):
        Outbound(app)
    assert app.extensions["outbound"] is registry
    assert not registry.closed


def test_config_error_surfaces_at_init_app_with_the_core_message() -> None:
    app = Flask(__name__)
    app.config["OUTBOUND"] = {"services": {"billing": {"base_url": "http://billing/", "retry": {"totl": 3}}}}

    with pytest.raises(outbound.ConfigError) as caught:
        Outbound().init_app(app)

    assert caught.value.service == "billing"
    assert caught.value.key == "retry.totl"
    assert str(caught.value).startswith("OUTBOUND[services.billing.retry.totl]: unknown key; did you mean 'total'?")
    # Nothing half-registered: fixing the config and calling init_app again works.
    assert "outbound" not in app.extensions
    assert "outbound" not in app.blueprints
    app.config["OUTBOUND"] = {"services": {"billing": {"base_url": "http://billing/"}}}
    Outbound().init_app(app)
    app.extensions["outbound"].close()


def test_config_error_for_a_missing_base_url() -> None:
    app = Flask(__name__)
    app.config["OUTBOUND"] = {"services": {"search": {"client": "httpx"}}}
    with pytest.raises(outbound.ConfigError, match=r"OUTBOUND\[services\.search\.base_url\]: is required") as caught:
        Outbound(app)
    assert (caught.value.service, caught.value.key, caught.value.code) == ("search", "base_url", "missing")


def test_missing_config_gives_an_empty_registry_and_a_warning(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="outbound_flask"):
        app = make_app(None)
    assert app.extensions["outbound"].services == ()
    assert "app.config['OUTBOUND'] is not set" in caplog.text
    assert app.test_client().get("/health/outbound").json == {"status": "ok"}


def test_questionable_settings_are_logged_once_at_startup(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # Django reports these as system checks (outbound.W002 ...); Flask has none, so init_app logs them.
    breaker = {"mode": "rate", "window": {"type": "time", "seconds": 2}}
    services = {"api": {"base_url": "http://127.0.0.1:1/", "timeout": {"total": 5}, "breaker": breaker}}
    with caplog.at_level(logging.WARNING, logger="outbound_flask"):
        make_app({"services": services})
    [record] = [r for r in caplog.records if "outbound.W" in r.getMessage()]
    assert "OUTBOUND[services.api.breaker.window.seconds] is 2s" in record.getMessage()
    assert record.getMessage().endswith("(outbound.W010)")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="outbound_flask"):
        make_app({"services": {"api": {"base_url": "http://127.0.0.1:1/"}}})
    assert caplog.records == []  # the defaults raise no question


def test_accessors_outside_an_app_context_say_what_to_do() -> None:
    ext = Outbound()
    for access in (lambda: ext.registry, lambda: ext.session("x"), lambda: ext.client("x")):
        with pytest.raises(RuntimeError, match=r"outside of an application context.*app\.app_context\(\).*init_app"):
            access()


def test_accessors_on_an_app_without_init_app_say_what_to_do() -> None:
    ext = Outbound()
    with Flask("bare").app_context(), pytest.raises(RuntimeError, match="not set up on app 'bare': did you forget"):
        ext.session("billing")


def test_accessors_pass_on_the_core_lookup_errors(make_app: AppFactory, upstream: Upstream) -> None:
    ext = Outbound()
    app = make_app(services(upstream, billing={}), extension=ext)
    with app.app_context():
        with pytest.raises(outbound.ServiceLookupError, match="did you mean 'billing'"):
            ext.session("biling")
        with pytest.raises(outbound.ServiceLookupError, match="uses client 'requests'"):
            ext.client("billing")


def test_pools_survive_requests_because_nothing_closes_them_at_teardown(
    make_app: AppFactory, upstream: Upstream
) -> None:
    ext = Outbound()
    app = make_app(services(upstream, billing={}), extension=ext)
    seen = []

    @app.get("/call")
    def call() -> str:
        session = ext.session("billing")
        seen.append(session)
        return session.get("ok").text

    client = app.test_client()
    for _ in range(3):
        assert client.get("/call").text == "ok"

    assert seen[0] is seen[1] is seen[2]
    assert not app.extensions["outbound"].closed
    # One keep-alive connection served all three calls: the pool outlived each request's app context.
    assert upstream.connections_total == 1


def test_async_view_uses_a_fresh_client_on_each_request_loop(make_app: AppFactory, upstream: Upstream) -> None:
    ext = Outbound()
    app = make_app(services(upstream, search={"client": "httpx"}), extension=ext)
    loops: list[int] = []

    @app.get("/async")
    async def search() -> dict[str, object]:
        loops.append(id(asyncio.get_running_loop()))
        client = ext.async_client("search")
        assert ext.async_client("search") is client  # one client per loop
        first = await client.get("echo")
        rest = await asyncio.gather(*(client.get("ok") for _ in range(3)))
        return {"statuses": [first.status_code, *(r.status_code for r in rest)]}

    http = app.test_client()
    for _ in range(4):
        response = http.get("/async")
        assert response.status_code == 200, response.text
        assert response.json == {"statuses": [200, 200, 200, 200]}

    assert upstream.hits == 16
    assert len(loops) == 4  # each request ran on a loop of its own (asgiref's async_to_sync)
    # Each loop's client was closed when its loop shut down: no pooled connection is left behind ...
    pool = app.extensions["outbound"].health()["services"]["search"]["pool"]
    assert (pool["in_use"], pool["idle"]) == (0, 0)
    # ... and nothing is left for the garbage collector to warn about (filterwarnings = error).
    gc.collect()


def test_async_client_in_a_sync_view_explains_itself(make_app: AppFactory, upstream: Upstream) -> None:
    ext = Outbound()
    app = make_app(services(upstream, search={"client": "httpx"}), extension=ext)
    with app.app_context(), pytest.raises(RuntimeError, match="needs a running event loop"):
        ext.async_client("search")


def test_async_client_errors_keep_the_httpx_identity(make_app: AppFactory, upstream: Upstream) -> None:
    ext = Outbound()
    config = services(upstream, search={"client": "httpx", "retry": None, "breaker": {"fail_max": 1}})
    app = make_app(config, extension=ext)

    @app.get("/async")
    async def search() -> dict[str, object]:
        client = ext.async_client("search")
        await client.get("status/503")
        try:
            await client.get("ok")
        except httpx.TransportError as error:
            return {"circuit_open": isinstance(error, outbound.CircuitOpenError)}
        return {"circuit_open": False}

    # Caught by the caller's `except httpx.TransportError`, and it is outbound's CircuitOpenError too.
    assert app.test_client().get("/async").json == {"circuit_open": True}


def test_registry_is_closed_when_the_app_is_garbage_collected(upstream: Upstream) -> None:
    app = Flask(__name__)
    app.config["OUTBOUND"] = services(upstream, billing={})
    Outbound(app)
    registry = app.extensions["outbound"]
    with app.app_context():
        registry.session("billing").get("ok")
    app_ref = weakref.ref(app)

    del app
    gc.collect()

    assert app_ref() is None  # the extension kept no strong reference to the app
    assert registry.closed


def test_registry_is_closed_at_process_exit(upstream: Upstream) -> None:
    # The check is registered with atexit before anything else, so it runs last (atexit is LIFO).
    script = textwrap.dedent(
        f"""
        import atexit
        state = {{}}
        atexit.register(lambda: print("closed at exit:", state["registry"].closed))

        from flask import Flask
        from outbound_flask import Outbound

        app = Flask("exit_check")
        app.config["OUTBOUND"] = {{"services": {{"billing": {{"base_url": {upstream.url!r}}}}}}}
        Outbound(app)
        state["registry"] = app.extensions["outbound"]
        with app.app_context():
            print("call:", state["registry"].session("billing").get("ok").text)
        print("closed before exit:", state["registry"].closed)
        """
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["call: ok", "closed before exit: False", "closed at exit: True"]


def test_health_path_is_configurable_or_off(make_app: AppFactory) -> None:
    moved = make_app({"services": {}}, extension=Outbound(health_path="/internal/outbound"))
    assert moved.test_client().get("/internal/outbound").status_code == 200
    assert moved.test_client().get("/health/outbound").status_code == 404

    off = make_app({"services": {}}, extension=Outbound(health_path=None))
    assert off.test_client().get("/health/outbound").status_code == 404
    assert "outbound" not in off.blueprints
    assert "outbound" in off.cli.commands  # the CLI is there either way


def test_the_factory_can_run_again_and_building_does_no_network_io(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reloader and every `flask` CLI call run the factory again: each run builds its own registry, cheaply.
    monkeypatch.setenv(e2e_app.UPSTREAM_ENV, upstream.url)
    first, second = e2e_app.create_app(), e2e_app.create_app()
    try:
        assert first.extensions["outbound"] is not second.extensions["outbound"]
        assert upstream.hits == 0
        assert upstream.connections_total == 0
    finally:
        first.extensions["outbound"].close()
        second.extensions["outbound"].close()


def test_chaos_outside_debug_mode_is_logged_at_startup(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OUTBOUND_CHAOS", raising=False)
    services = {"api": {"base_url": "http://127.0.0.1:1/", "chaos": {"faults": [{"kind": "reset"}]}}}
    with caplog.at_level(logging.WARNING, logger="outbound_flask"):
        make_app({"services": services})
    assert "(outbound.W013)" in caplog.text
