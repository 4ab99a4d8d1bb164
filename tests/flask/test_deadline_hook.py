"""``Outbound(app, deadlines=True)`` in a live Flask app: Werkzeug's server in a thread, one request at a time.

The views report ``outbound.time_left()``, so each test sees the budget the request ran under: from each header
format, cut to ``deadline.max``, from a view's ``@default_deadline`` (function, async and class-based views) or from
``deadline.default``, and none when a header is malformed (logged once, without its value). The server handles
every request on one thread, so a deadline left behind by one request would show in the next.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from flask.views import MethodView
from werkzeug.serving import make_server

import outbound
from outbound import Registry
from outbound_flask import Outbound, default_deadline
from outbound_flask import deadlines as flask_deadlines
from tests.upstream import Upstream


def _left() -> ResponseReturnValue:
    return jsonify(left=outbound.time_left())


@default_deadline(40)
class ReportView(MethodView):
    def get(self) -> ResponseReturnValue:
        return _left()


def create_app(
    *, deadline: dict[str, Any] | None = None, services: dict[str, Any] | None = None, deadlines: bool = True
) -> Flask:
    app = Flask(__name__)
    app.config["OUTBOUND"] = {"services": services or {}, "deadline": deadline or {}}
    ext = Outbound(app, deadlines=deadlines)
    seen_before: list[float | None] = []

    @app.before_request
    def before() -> None:  # registered after init_app: its outbound calls share the budget too
        seen_before.append(outbound.time_left())

    @app.get("/left")
    def left() -> ResponseReturnValue:
        return _left()

    @app.get("/left-async")
    async def left_async() -> ResponseReturnValue:
        await asyncio.sleep(0)
        return _left()

    @app.get("/report")
    @default_deadline(30)
    def report() -> ResponseReturnValue:
        return _left()

    @default_deadline(20)  # above the route: the same function object, so it works either way
    @app.get("/report-async")
    async def report_async() -> ResponseReturnValue:
        return _left()

    app.add_url_rule("/report-cbv", view_func=ReportView.as_view("report_cbv"))

    @app.get("/before")
    def before_view() -> ResponseReturnValue:
        return jsonify(left=seen_before[-1])

    @app.get("/boom")
    def boom() -> ResponseReturnValue:
        raise RuntimeError("boom")

    @app.get("/call")
    def call() -> ResponseReturnValue:
        try:
            ext.session("api").get("slow", params={"delay": 2})
        except outbound.OutboundError as error:
            return jsonify(error=type(error).__name__)
        return jsonify(error=None)

    return app


Live = Callable[..., str]


@pytest.fixture
def live(monkeypatch: pytest.MonkeyPatch) -> Iterator[Live]:
    """``live(deadline={...}, ...)``: build the app and serve it on 127.0.0.1; returns its base URL."""
    monkeypatch.setattr(flask_deadlines, "_warned", set())  # a fresh process, as far as "logged once" goes
    started: list[tuple[Any, threading.Thread, Registry]] = []

    def start(**options: Any) -> str:
        app = create_app(**options)
        server = make_server("127.0.0.1", 0, app, threaded=False)
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="flask-live", daemon=True)
        thread.start()
        started.append((server, thread, app.extensions["outbound"]))
        return f"http://127.0.0.1:{server.port}"

    yield start
    for server, thread, registry in started:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        registry.close()


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
    left = left_in(f"{live()}/{view}", **{header: value})
    assert left is not None
    assert 1.0 < left <= 1.5


@VIEWS
def test_without_a_budget_there_is_no_deadline(live: Live, view: str) -> None:
    assert left_in(f"{live()}/{view}") is None


def test_the_hook_is_opt_in(live: Live) -> None:
    assert left_in(f"{live(deadlines=False)}/left", **{"grpc-timeout": "2S"}) is None


def test_the_first_configured_header_wins_and_the_order_is_the_settings(live: Live) -> None:
    base = live(deadline={"headers": ["x-request-timeout", "grpc-timeout"]})
    left = left_in(f"{base}/left", **{"grpc-timeout": "9S", "X-Request-Timeout": "2"})
    assert left is not None
    assert 1.5 < left <= 2


def test_a_client_cannot_ask_for_more_than_the_cap(live: Live) -> None:
    left = left_in(f"{live(deadline={'max': 2})}/left", **{"x-envoy-expected-rq-timeout-ms": "3600000"})
    assert left is not None
    assert 1.5 < left <= 2


def test_a_zero_budget_leaves_no_time(live: Live) -> None:
    left = left_in(f"{live()}/left-async", **{"grpc-timeout": "0n"})
    assert left is not None
    assert left <= 0


@VIEWS
def test_a_malformed_header_is_ignored_and_logged_once_without_its_value(
    live: Live, view: str, caplog: pytest.LogCaptureFixture
) -> None:
    base = live(deadline={"default": 5})
    caplog.set_level(logging.WARNING, logger="outbound_flask.deadlines")
    for value in ("1.5", "1e3", "-2"):
        left = left_in(f"{base}/{view}", **{"x-envoy-expected-rq-timeout-ms": value})
        assert left is not None
        assert 4.5 < left <= 5  # the settings' default, not anything read from the header
    records = [r for r in caplog.records if r.name == "outbound_flask.deadlines"]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    message = records[0].getMessage()
    assert "x-envoy-expected-rq-timeout-ms" in message
    assert "1.5" not in message


def test_a_malformed_header_does_not_hide_a_good_one(live: Live) -> None:
    left = left_in(f"{live()}/left", **{"grpc-timeout": "1.5S", "X-Request-Timeout": "1.5"})
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


def test_before_request_functions_registered_after_init_app_share_the_budget(live: Live) -> None:
    left = left_in(f"{live()}/before", **{"grpc-timeout": "2S"})
    assert left is not None
    assert 1.5 < left <= 2


def test_the_deadline_ends_with_the_request_even_when_the_view_raises(live: Live) -> None:
    base = live()
    assert left_in(f"{base}/left", **{"grpc-timeout": "2S"}) is not None
    assert left_in(f"{base}/left") is None  # the server's one thread keeps nothing of the last request
    assert requests.get(f"{base}/boom", headers={"grpc-timeout": "2S"}, timeout=10).status_code == 500
    assert left_in(f"{base}/left") is None


def test_an_unknown_url_still_gets_its_404(live: Live) -> None:
    base = live(deadline={"default": 5})
    assert requests.get(f"{base}/nowhere", headers={"grpc-timeout": "2S"}, timeout=10).status_code == 404
    assert requests.get(f"{base}/nowhere", timeout=10).status_code == 404


def test_the_decorator_wants_a_positive_finite_number() -> None:
    for seconds in (0, -1, float("inf"), float("nan"), "2", None, True):
        with pytest.raises(ValueError, match="default deadline"):
            default_deadline(seconds)  # type: ignore[arg-type]


def test_the_inbound_budget_cuts_the_views_outbound_call(live: Live, upstream: Upstream) -> None:
    base = live(services={"api": {"base_url": upstream.url, "retry": {"total": 0}}})
    started = time.monotonic()
    response = requests.get(f"{base}/call", headers={"grpc-timeout": "300m"}, timeout=10)
    elapsed = time.monotonic() - started
    assert response.json()["error"] in ("ReadTimeoutError", "DeadlineExceededError")
    assert elapsed < 0.3 + 0.5, f"the request took {elapsed:.2f}s"
