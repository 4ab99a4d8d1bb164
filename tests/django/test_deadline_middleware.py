"""``DeadlineMiddleware`` in a live Django: WSGIHandler under wsgiref and ASGIHandler under uvicorn, in a thread.

The views report ``outbound.time_left()``, so each test sees the budget the request ran under: from each header
format, cut to ``deadline.max``, from a view's ``@default_deadline`` (function, async and class-based views) or from
``deadline.default``, and none when a header is malformed (logged once, without its value). This module is the
servers' URLconf.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
import requests
import uvicorn
from asgiref.sync import iscoroutinefunction
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views import View

import outbound
from outbound_django import default_deadline, get_registry, session
from outbound_django import middleware as deadline_middleware
from tests.upstream import Upstream, wait_until

if TYPE_CHECKING:
    from pytest_django import Settings

MIDDLEWARE = "outbound_django.middleware.DeadlineMiddleware"


def _left() -> JsonResponse:
    return JsonResponse({"left": outbound.time_left()})


def left(request: HttpRequest) -> JsonResponse:
    return _left()


async def left_async(request: HttpRequest) -> JsonResponse:
    await asyncio.sleep(0)
    return _left()


@default_deadline(30)
def report(request: HttpRequest) -> JsonResponse:
    return _left()


@default_deadline(20)
async def report_async(request: HttpRequest) -> JsonResponse:
    return _left()


@default_deadline(40)
class ReportView(View):
    def get(self, request: HttpRequest) -> JsonResponse:
        return _left()


def call(request: HttpRequest) -> JsonResponse:
    try:
        session("api").get("slow", params={"delay": 2})
    except outbound.OutboundError as error:
        return JsonResponse({"error": type(error).__name__})
    return JsonResponse({"error": None})


urlpatterns = [
    path("left", left),
    path("left-async", left_async),
    path("report", report),
    path("report-async", report_async),
    path("report-cbv", ReportView.as_view()),
    path("call", call),
]


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve_wsgi() -> tuple[str, Callable[[], None]]:
    server: WSGIServer = make_server("127.0.0.1", 0, WSGIHandler(), handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="django-wsgi", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)

    return f"http://127.0.0.1:{server.server_port}", stop


def _serve_asgi() -> tuple[str, Callable[[], None]]:
    # Django's ASGI handler refuses the lifespan scope; log_config=None leaves the test's logging alone.
    config = uvicorn.Config(
        ASGIHandler(), host="127.0.0.1", port=0, lifespan="off", log_config=None, log_level="warning", ws="none"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="django-asgi", daemon=True)
    thread.start()
    assert wait_until(lambda: server.started, timeout=10), "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)

    return f"http://127.0.0.1:{port}", stop


Live = Callable[..., str]


@pytest.fixture(params=["wsgi", "asgi"])
def live(request: pytest.FixtureRequest, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Live]:
    """``live(deadline={...}, services={...})``: set the settings, start the server; returns its base URL."""
    monkeypatch.setattr(deadline_middleware, "_warned", set())  # a fresh process, as far as "logged once" goes
    stops: list[Callable[[], None]] = []

    def start(*, deadline: dict[str, Any] | None = None, services: dict[str, Any] | None = None) -> str:
        settings.ROOT_URLCONF = __name__
        settings.MIDDLEWARE = [MIDDLEWARE, *settings.MIDDLEWARE]
        settings.OUTBOUND = {"services": services or {}, "deadline": deadline or {}}
        base, stop = _serve_wsgi() if request.param == "wsgi" else _serve_asgi()
        stops.append(stop)
        return base

    yield start
    for stop in stops:
        stop()


def left_in(url: str, **headers: str) -> float | None:
    """What ``outbound.time_left()`` said inside the view at ``url``."""
    response = requests.get(url, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    left: float | None = response.json()["left"]
    return left


VIEWS = pytest.mark.parametrize("view", ["left", "left-async"])


@VIEWS
@pytest.mark.parametrize(
    ("header", "value"),
    [("grpc-timeout", "1500m"), ("X-Request-Timeout", "1.5"), ("x-envoy-expected-rq-timeout-ms", "1500")],
)
def test_each_header_format_sets_the_views_budget(live: Live, view: str, header: str, value: str) -> None:
    base = live()
    left = left_in(f"{base}/{view}", **{header: value})
    assert left is not None
    assert 1.0 < left <= 1.5


@VIEWS
def test_without_a_budget_there_is_no_deadline(live: Live, view: str) -> None:
    assert left_in(f"{live()}/{view}") is None


def test_the_first_configured_header_wins_and_the_order_is_the_settings(live: Live) -> None:
    base = live(deadline={"headers": ["x-request-timeout", "grpc-timeout"]})
    left = left_in(f"{base}/left", **{"grpc-timeout": "9S", "X-Request-Timeout": "2"})
    assert left is not None
    assert 1.5 < left <= 2


def test_a_client_cannot_ask_for_more_than_the_cap(live: Live) -> None:
    base = live(deadline={"max": 2})
    left = left_in(f"{base}/left", **{"grpc-timeout": "1H"})
    assert left is not None
    assert 1.5 < left <= 2


def test_a_zero_budget_leaves_no_time(live: Live) -> None:
    left = left_in(f"{live()}/left", **{"grpc-timeout": "0n"})
    assert left is not None
    assert left <= 0


@VIEWS
def test_a_malformed_header_is_ignored_and_logged_once_without_its_value(
    live: Live, view: str, caplog: pytest.LogCaptureFixture
) -> None:
    base = live(deadline={"default": 5})
    caplog.set_level(logging.WARNING, logger="outbound_django.middleware")
    for value in ("1.5 S", "-1S", "12345678901S"):
        left = left_in(f"{base}/{view}", **{"grpc-timeout": value})
        assert left is not None
        assert 4.5 < left <= 5  # the settings' default, not anything read from the header
    records = [r for r in caplog.records if r.name == "outbound_django.middleware"]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    message = records[0].getMessage()
    assert "grpc-timeout" in message
    assert "1.5 S" not in message


def test_a_malformed_header_does_not_hide_a_good_one(live: Live) -> None:
    left = left_in(f"{live()}/left", **{"grpc-timeout": "soon", "X-Request-Timeout": "1.5"})
    assert left is not None
    assert 1.0 < left <= 1.5


@pytest.mark.parametrize(("view", "default"), [("report", 30), ("report-async", 20), ("report-cbv", 40)])
def test_a_views_default_applies_when_the_request_sends_no_budget(live: Live, view: str, default: float) -> None:
    base = live(deadline={"default": 5, "max": 10})
    left = left_in(f"{base}/{view}")
    assert left is not None
    assert default - 1 < left <= default  # over the settings' default, and not cut by the cap (that is for clients)
    sent = left_in(f"{base}/{view}", **{"grpc-timeout": "2S"})
    assert sent is not None
    assert 1.5 < sent <= 2  # a budget the request sends wins


def test_the_settings_default_applies_to_other_views(live: Live) -> None:
    left = left_in(f"{live(deadline={'default': 5})}/left-async")
    assert left is not None
    assert 4.5 < left <= 5


def test_the_deadline_ends_with_the_request(live: Live) -> None:
    base = live()
    assert left_in(f"{base}/left", **{"grpc-timeout": "2S"}) is not None
    assert left_in(f"{base}/left") is None  # the server's thread keeps nothing of the last request


def test_invalid_settings_leave_requests_without_a_deadline(live: Live, settings: Settings) -> None:
    base = live()
    settings.OUTBOUND = {"services": {}, "deadline": {"max": -1}}
    with pytest.raises(outbound.ConfigError):
        get_registry()
    assert left_in(f"{base}/left", **{"grpc-timeout": "2S"}) is None


def test_the_inbound_budget_cuts_the_views_outbound_call(live: Live, upstream: Upstream) -> None:
    base = live(services={"api": {"base_url": upstream.url, "retry": {"total": 0}}})
    started = time.monotonic()
    response = requests.get(f"{base}/call", headers={"grpc-timeout": "300m"}, timeout=10)
    elapsed = time.monotonic() - started
    assert response.json()["error"] in ("ReadTimeoutError", "DeadlineExceededError")
    assert elapsed < 0.3 + 0.5, f"the request took {elapsed:.2f}s"


def test_the_middleware_is_async_under_an_async_chain_and_sync_under_a_sync_one() -> None:
    async def async_view(request: HttpRequest) -> JsonResponse:
        return JsonResponse({})

    def sync_view(request: HttpRequest) -> JsonResponse:
        return JsonResponse({})

    assert iscoroutinefunction(deadline_middleware.DeadlineMiddleware(async_view))
    assert not iscoroutinefunction(deadline_middleware.DeadlineMiddleware(sync_view))


@pytest.mark.parametrize("seconds", [0, -1, float("inf"), float("nan"), "2", None, True])
def test_the_decorator_wants_a_positive_finite_number(seconds: Any) -> None:
    with pytest.raises(ValueError, match="default deadline"):
        default_deadline(seconds)
