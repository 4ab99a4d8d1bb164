"""The app config and the accessors: startup without network, idempotence, settings changes, exit, bad settings."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import requests
from asgiref.sync import async_to_sync
from django.apps import apps
from django.test import AsyncClient, Client, override_settings

import outbound
import outbound_django
from outbound_django import async_client, client, conf, get_registry, session
from outbound_django.apps import OutboundAppConfig
from tests.django.conftest import Configure, service
from tests.upstream import Upstream

ROOT = Path(__file__).resolve().parents[2]

if TYPE_CHECKING:  # pytest-django exports the fixture's type only in recent versions
    from pytest_django import Settings


def test_app_config_is_found() -> None:
    app = apps.get_app_config("outbound_django")
    assert isinstance(app, OutboundAppConfig)


def test_registry_built_from_settings_at_startup() -> None:
    registry = get_registry()
    assert registry.services == ("local",)
    assert registry is get_registry()
    assert registry["local"].config.critical


def test_ready_is_idempotent_and_opens_no_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    connects: list[Any] = []

    def no_network(*args: Any, **kwargs: Any) -> None:
        connects.append(args)
        raise AssertionError("ready() must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    before = get_registry()
    app = apps.get_app_config("outbound_django")
    app.ready()  # runserver's reloader runs it twice; every management command runs it once
    app.ready()
    assert get_registry() is before
    assert connects == []


def test_registry_is_closed_at_exit() -> None:
    # atexit runs handlers last-in first-out: one registered before django.setup() runs after the app's.
    code = """
import atexit, django
from outbound_django import get_registry
atexit.register(lambda: print("closed at exit:", get_registry().closed))
django.setup()
print("open after setup:", not get_registry().closed)
"""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.django.settings", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["open after setup: True", "closed at exit: True"]


def test_close_keeps_the_closed_registry(configure: Configure, upstream: Upstream) -> None:
    registry = configure(svc=service(upstream))
    conf.close()
    assert registry.closed
    assert get_registry() is registry  # not silently rebuilt after shutdown
    with pytest.raises(outbound.RegistryClosedError):
        session("svc")


def test_override_settings_rebuilds_the_registry(upstream: Upstream) -> None:
    original = get_registry()
    with override_settings(OUTBOUND={"services": {"other": {"base_url": upstream.url}}}):
        inside = get_registry()
        assert inside is not original
        assert inside.services == ("other",)
        assert session("other").get("ok").text == "ok"
    assert inside.closed  # leaving the override closes the registry it built
    restored = get_registry()
    assert restored.services == ("local",)
    assert not restored.closed


def test_settings_fixture_rebuilds_the_registry(settings: Settings, upstream: Upstream) -> None:
    settings.OUTBOUND = {"services": {"a": {"base_url": upstream.url}}}
    first = get_registry()
    settings.OUTBOUND = {"services": {"b": {"base_url": upstream.url}}}
    assert first.closed
    assert get_registry().services == ("b",)


def test_other_setting_changes_keep_the_registry(settings: Settings) -> None:
    registry = get_registry()
    settings.DEBUG = True
    assert get_registry() is registry
    assert not registry.closed


def test_missing_setting_gives_an_empty_registry(settings: Settings) -> None:
    # Deleting a setting sends no setting_changed signal (Django's override_settings neither): reset by hand.
    del settings.OUTBOUND
    conf.reset()
    try:
        assert get_registry().services == ()
        with pytest.raises(outbound.ServiceLookupError, match="OUTBOUND"):
            session("billing")
    finally:
        settings._finalize()
        conf.reset()
    assert get_registry().services == ("local",)


def test_bad_settings_do_not_crash_ready_but_accessors_raise(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings.OUTBOUND = {"services": {"billing": {"base_url": "ftp://billing"}}}
    apps.get_app_config("outbound_django").ready()  # must not raise: `manage.py check` has to run afterwards
    assert "OUTBOUND[services.billing.base_url]" in caplog.text
    for accessor in (get_registry, lambda: session("billing"), lambda: client("billing")):
        with pytest.raises(outbound.ConfigError) as caught:
            accessor()
        assert caught.value.service == "billing"
        assert caught.value.key == "base_url"
        assert caught.value.code == "url"


def test_session_accessor_calls_the_upstream(configure: Configure, upstream: Upstream) -> None:
    configure(svc=service(upstream))
    response = session("svc").get("ok")
    assert isinstance(response, requests.Response)
    assert response.text == "ok"
    assert session("svc") is get_registry().session("svc")


def test_client_accessor_calls_the_upstream(configure: Configure, upstream: Upstream) -> None:
    configure(svc=service(upstream, client="httpx"))
    response = client("svc").get("ok")
    assert isinstance(response, httpx.Response)
    assert response.text == "ok"


def test_wrong_accessor_for_the_client_kind(configure: Configure, upstream: Upstream) -> None:
    configure(req=service(upstream), hx=service(upstream, client="httpx"))
    with pytest.raises(outbound.ServiceLookupError, match="client"):
        client("req")
    with pytest.raises(outbound.ServiceLookupError, match="session"):
        session("hx")


def test_async_client_inside_async_to_sync_bridges(configure: Configure, upstream: Upstream) -> None:
    configure(svc=service(upstream, client="httpx"))

    async def call() -> str:
        response = await async_client("svc").get("ok")
        return response.text

    # Each async_to_sync call runs its own event loop; an AsyncClient of a closed loop must not be reused
    # ("Event loop is closed").
    assert [async_to_sync(call)() for _ in range(3)] == ["ok"] * 3
    assert upstream.hits == 3


def test_async_client_needs_a_running_loop(configure: Configure, upstream: Upstream) -> None:
    configure(svc=service(upstream, client="httpx"))
    with pytest.raises(RuntimeError, match="event loop"):
        async_client("svc")


def test_views_call_upstreams_under_wsgi_and_asgi(configure: Configure, upstream: Upstream) -> None:
    configure(requests_service=service(upstream), httpx_service=service(upstream, client="httpx"))
    wsgi = Client()
    for path in ("/call/sync", "/call/async", "/call/async"):  # the async view runs in a new loop each time
        assert wsgi.get(path).json() == {"status": 200, "body": "ok"}

    async def over_asgi() -> list[Any]:
        asgi = AsyncClient()
        return [(await asgi.get(path)).json() for path in ("/call/sync", "/call/async", "/call/async")]

    assert asyncio.run(over_asgi()) == [{"status": 200, "body": "ok"}] * 3
    assert asyncio.run(over_asgi()) == [{"status": 200, "body": "ok"}] * 3
    assert upstream.hits == 9


def test_public_names() -> None:
    assert outbound_django.__all__ == sorted(outbound_django.__all__)
    assert set(outbound_django.__all__) == {"async_client", "client", "default_deadline", "get_registry", "session"}


def test_pytest_django_with_invalid_settings_runs_and_only_tests_using_outbound_fail(tmp_path: Path) -> None:
    # Only a server loading wsgi.py / asgi.py refuses to start: a test run collects every test, and those that use
    # outbound fail with the core's message naming the service and key.
    (tmp_path / "test_app.py").write_text(
        "def test_unrelated():\n"
        "    assert True\n\n\n"
        "def test_uses_outbound():\n"
        "    from outbound_django import session\n\n"
        '    session("billing")\n',
        encoding="utf-8",
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--ds=tests.django.broken_settings", "test_app.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed, 1 passed" in result.stdout
    assert "FAILED test_app.py::test_uses_outbound" in result.stdout
    assert "E           outbound._errors.ConfigError: OUTBOUND[services.billing.base_url]" in result.stdout
    assert "INTERNALERROR" not in result.stdout + result.stderr
    assert "ImproperlyConfigured" not in result.stdout + result.stderr


SERVE = """
import ast
import importlib
import sys

from django.conf import settings

outbound_settings, kind = ast.literal_eval(sys.argv[1]), sys.argv[2]
settings.configure(
    INSTALLED_APPS=["outbound_django"], OUTBOUND=outbound_settings, SILENCED_SYSTEM_CHECKS=["outbound.W005"]
)
getattr(importlib.import_module(f"django.core.{kind}"), f"get_{kind}_application")()
print("serving")
"""


def load_for_a_server(outbound_settings: str, kind: str) -> subprocess.CompletedProcess[str]:
    """Build Django's WSGI or ASGI handler in a new process, as a server does when it loads wsgi.py / asgi.py."""
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-c", SERVE, outbound_settings, kind],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_a_server_loading_invalid_settings_fails_with_every_mistake(kind: str) -> None:
    result = load_for_a_server(
        '{"services": {"billing": {"base_url": "ftp://billing/"}, "search": {"base_url": "http://a/", "retry": 1}}}',
        kind,
    )
    assert result.returncode == 1
    assert "serving" not in result.stdout
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line == "(`manage.py check` explains each mistake in the OUTBOUND setting)"
    assert "django.core.exceptions.ImproperlyConfigured: OUTBOUND[services.billing.base_url]" in result.stderr
    assert "  - OUTBOUND[services.search.retry]" in result.stderr


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_a_server_loading_valid_settings_logs_the_warnings_checks_would_give(kind: str) -> None:
    # Django runs no system checks under a server: the outbound ones are logged once, silenced ones excepted.
    result = load_for_a_server(
        '{"services": {"billing": {"base_url": "http://a/", "retry": {"budget": None}}}, "health": {"token": "short"}}',
        kind,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "serving\n"
    assert "OUTBOUND[health.token] is shorter than 16 characters" in result.stderr
    assert "(outbound.W008)" in result.stderr
    assert "W005" not in result.stderr
