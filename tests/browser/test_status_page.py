"""The status page in a real browser: Debian's Chromium, driven by Playwright, against a live Flask server (in a
thread of this process) and a live Django server (uvicorn in a subprocess), both calling the shared test upstream.

What a person would check: every service is listed, an open breaker reads "open", its countdown moves, the critical
service is marked, each pool is a labelled bar, the page refreshes itself, every text is readable (contrast in light
and dark mode, no sideways scrolling on a phone) and nothing on it breaks the page's own Content-Security-Policy;
without the token only the overall status shows, and anything that is not a browser still gets the JSON, byte for
byte. Each test saves screenshots under its temporary directory.

Chromium is required, never skipped: without it these tests fail and say how to install it.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask
from playwright.sync_api import Browser, ConsoleMessage, Error, Page, Playwright, expect, sync_playwright
from werkzeug.serving import make_server

from outbound import Registry
from outbound_flask import Outbound
from tests.conftest import open_breaker
from tests.django.test_e2e import Server
from tests.django.test_e2e import get as get_closing
from tests.upstream import Upstream, wait_until

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "browser-test-health-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REFRESH_SECONDS = 5  # outbound._page.REFRESH_SECONDS, which the Django server's page uses too
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 360, "height": 740}
FAST = {"retry": None, "timeout": {"connect": 2.0, "read": 5.0, "total": 10.0}}
STAYS_OPEN = {"fail_max": 1, "reset_timeout": 300.0}


@dataclass(frozen=True)
class Expected:
    """What the page of a live server must show."""

    url: str
    services: tuple[str, ...]
    open_service: str
    critical: str
    overall: str
    status: int
    failing: str | None  # a service whose calls fail while its breaker stays closed
    hidden: str  # what the page says in place of the cards without authorization


# -- the browser ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    """Debian's Chromium, headless, with a fresh profile (Playwright gives each launch a new user data dir)."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"Chromium is required for the status page tests and {CHROMIUM} does not exist: "
            "install Debian's package with `apt-get install -y chromium` (.ci/run does)",
            pytrace=False,
        )
    try:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
    except Error as error:
        pytest.fail(
            f"{CHROMIUM} did not start ({error}); reinstall it with `apt-get install -y chromium`", pytrace=False
        )
    try:
        yield launched
    finally:
        launched.close()


class Problems:
    """Script errors and console errors (a Content-Security-Policy violation is one) of a page."""

    def __init__(self, page: Page) -> None:
        self.seen: list[str] = []
        page.on("pageerror", lambda error: self.seen.append(f"page error: {error}"))
        page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        # Chromium logs every 503 it loads, and a down report is answered with one: that is the page working.
        if message.type == "error" and "responded with a status of 503" not in message.text:
            self.seen.append(f"console error: {message.text}")


# Every element with text of its own: the text, its colour and the first opaque background behind it.
TEXT_COLOURS = """() => {
  const channels = (colour) => colour.match(/[\\d.]+/g).map(Number);
  const found = [];
  const seen = new Set();
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const element = walker.currentNode.parentElement;
    if (!walker.currentNode.textContent.trim() || seen.has(element) || element.closest("script, style, noscript")) {
      continue;
    }
    seen.add(element);
    let behind = element;
    let background = "rgb(255, 255, 255)";
    while (behind) {
      const value = getComputedStyle(behind).backgroundColor;
      const parts = channels(value);
      if (parts.length < 4 || parts[3] === 1) { background = value; break; }
      behind = behind.parentElement;
    }
    found.push([walker.currentNode.textContent.trim().slice(0, 40), getComputedStyle(element).color, background]);
  }
  return found;
}"""


def contrast(foreground: str, background: str) -> float:
    def luminance(colour: str) -> float:
        red, green, blue = (float(c) / 255 for c in re.findall(r"[\d.]+", colour)[:3])
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in (red, green, blue)]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    lighter, darker = sorted((luminance(foreground), luminance(background)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def assert_readable(page: Page, scheme: str) -> None:
    texts = page.evaluate(TEXT_COLOURS)
    assert len(texts) > 20, texts  # the check saw the page
    low = [(text, fg, bg, round(contrast(fg, bg), 2)) for text, fg, bg in texts if contrast(fg, bg) < 4.5]
    assert low == [], f"text below 4.5:1 contrast in {scheme} mode: {low}"


def countdown(page: Page, service: str) -> tuple[str, int]:
    """The open breaker's ``retry_in`` as the server sent it, and the seconds the page shows now."""
    element = page.get_by_role("article", name=service).locator(".countdown")
    sent, text = element.evaluate("element => [element.getAttribute('data-retry-in'), element.textContent]")
    match = re.fullmatch(r"trial in (\d+) s", text)
    assert match, f"the countdown reads {text!r}"
    return sent, int(match.group(1))


def assert_counts_down(page: Page, service: str) -> None:
    """The countdown drops by two seconds or more while the report it started from stays the same: the page counts
    down by itself (a refresh in between starts the comparison again)."""
    start = countdown(page, service)

    def dropped() -> bool:
        nonlocal start
        now = countdown(page, service)
        if now[0] != start[0]:
            start = now
        return now[1] <= start[1] - 2

    assert wait_until(dropped, timeout=3.0 * REFRESH_SECONDS), f"the countdown stayed at {start[1]} s"


def check_status_page(browser: Browser, expected: Expected, screenshots: Path) -> Page:
    """Load the page with the token and check what a person would; returns the page, still open."""
    context = browser.new_context(extra_http_headers=AUTH, viewport=DESKTOP, color_scheme="light")
    page = context.new_page()
    problems = Problems(page)
    response = page.goto(expected.url)
    assert response is not None
    assert response.status == expected.status
    assert response.headers["content-type"] == "text/html; charset=utf-8"

    # The overall status, in words, in the title and the header.
    expect(page).to_have_title(f"Outbound status: {expected.overall}")
    expect(page.get_by_role("status").filter(has_text="Overall")).to_have_text(f"Overall {expected.overall}")
    # Landmarks and structure: one banner, one main, one h1, a named article per service.
    expect(page.get_by_role("banner")).to_have_count(1)
    expect(page.get_by_role("main")).to_have_count(1)
    expect(page.get_by_role("heading", level=1)).to_have_text("Outbound status")
    expect(page.get_by_role("article")).to_have_count(len(expected.services))
    for name in expected.services:
        card = page.get_by_role("article", name=name)
        expect(card.get_by_role("heading", level=2)).to_have_text(name)
        bar = card.get_by_role("img", name=re.compile(r"^Connection pool: \d+ in use, \d+ idle, \d+ waiting, of \d+"))
        expect(bar).to_have_count(1)
        expect(card.get_by_role("rowheader", name="Requests")).to_have_count(1)
        expect(card.get_by_role("rowheader", name="p99")).to_have_count(1)
        expect(card.locator(".critical")).to_have_count(1 if name == expected.critical else 0)
    expect(page.get_by_role("article", name=expected.critical).locator(".critical")).to_have_text("Critical")

    # The open breaker says so, and its countdown to the next trial runs between refreshes.
    broken = page.get_by_role("article", name=expected.open_service)
    expect(broken.locator(".breaker")).to_have_text("open")
    expect(broken.locator(".badge").first).to_have_text("down")
    assert_counts_down(page, expected.open_service)

    # A service whose calls fail under a closed breaker: its own word and colour, and the figures behind it.
    if expected.failing is not None:
        failing = page.get_by_role("article", name=expected.failing)
        expect(failing.locator(".badge").first).to_have_text("failing")
        expect(failing.locator(".badge.fail")).to_have_count(1)
        expect(failing.locator(".breaker")).to_have_text("closed")
        expect(failing.get_by_text(re.compile(r"^\d+ of \d+ calls failed \(100%\)$"))).to_have_count(1)

    # Readable: contrast in light and dark mode, no sideways scrolling on a phone, no motion when asked for none.
    assert_readable(page, "light")
    page.emulate_media(color_scheme="dark")
    assert_readable(page, "dark")
    page.screenshot(path=screenshots / "status-page-dark.png", full_page=True)
    page.emulate_media(color_scheme="light")
    page.set_viewport_size(PHONE)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "wider than a phone"
    page.screenshot(path=screenshots / "status-page-phone.png", full_page=True)
    page.set_viewport_size(DESKTOP)
    pulse = "getComputedStyle(document.querySelector('.badge.bad .dot')).animationName"
    assert page.evaluate(pulse) == "pulse"
    page.emulate_media(reduced_motion="reduce")
    assert page.evaluate(pulse) == "none"
    page.emulate_media(reduced_motion="no-preference")

    # A browser can still ask for the JSON.
    as_json = context.request.get(f"{expected.url}?format=json")
    assert as_json.headers["content-type"] == "application/json"
    assert set(json.loads(as_json.body())["services"]) == set(expected.services)

    page.screenshot(path=screenshots / "status-page.png", full_page=True)
    assert problems.seen == []
    return page


def check_summary_page(browser: Browser, expected: Expected) -> None:
    """Without the token: the overall status and nothing about any service."""
    context = browser.new_context(viewport=DESKTOP)
    try:
        page = context.new_page()
        problems = Problems(page)
        response = page.goto(expected.url)
        assert response is not None
        assert response.status == expected.status
        expect(page.get_by_role("status").filter(has_text="Overall")).to_have_text(f"Overall {expected.overall}")
        expect(page.get_by_role("main")).to_have_text(expected.hidden)
        expect(page.get_by_role("article")).to_have_count(0)
        text = page.locator("body").inner_text()
        assert [name for name in expected.services if name in text] == []
        assert problems.seen == []
    finally:
        context.close()


def check_json_unchanged(url: str, expected_anonymous: bytes) -> dict[str, Any]:
    """What curl and load balancers get: the JSON, as ``registry.health()`` gives it; returns the detailed one."""
    anonymous = httpx.get(url, timeout=10)
    assert anonymous.headers["content-type"] == "application/json"
    assert anonymous.headers["vary"] == "Accept"
    assert anonymous.content == expected_anonymous
    detailed = httpx.get(url, headers=AUTH, timeout=10)
    assert detailed.headers["content-type"] == "application/json"
    report: dict[str, Any] = json.loads(detailed.content)
    assert detailed.content == json.dumps(report).encode()  # json.dumps of the report, keys in their order
    return report


def without_retry_in(report: dict[str, Any]) -> dict[str, Any]:
    """The report without the one field that changes by the millisecond."""
    copy = json.loads(json.dumps(report))
    for service in copy["services"].values():
        service["breaker"].pop("retry_in")
    return copy


# -- Flask: a live server in a thread of this process -----------------------------------------------------------------


def flask_app(upstream: Upstream) -> Flask:
    app = Flask(__name__)
    app.config["OUTBOUND"] = {
        "services": {
            "payments": {"base_url": upstream.url, "critical": True, **FAST},
            "search": {"base_url": upstream.url, "client": "httpx", **FAST},
            "recommendations": {"base_url": upstream.url, "breaker": STAYS_OPEN, **FAST},
            # A rate breaker short of its minimum_calls: every call fails, the breaker stays closed.
            "ledger": {"base_url": upstream.url, "breaker": {"mode": "rate", "minimum_calls": 100}, **FAST},
        },
        "health": {"token": TOKEN},
    }
    Outbound(app)
    return app


@contextmanager
def live_flask(app: Flask) -> Iterator[str]:
    """Serve ``app`` on a free port of 127.0.0.1 from a thread; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="flask-live-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def flask_registry(upstream: Upstream) -> Iterator[tuple[Registry, str]]:
    app = flask_app(upstream)
    registry: Registry = app.extensions["outbound"]
    try:
        with live_flask(app) as base:
            yield registry, base
    finally:
        registry.close()


def traffic(registry: Registry) -> None:
    """A few calls, so latency and pools have something to show, and a breaker that opens and stays open."""
    for _ in range(5):
        registry.session("payments").get("ok")
    for _ in range(3):
        registry.client("search").get("ok")
    open_breaker(registry, "recommendations")
    for _ in range(6):
        registry.session("ledger").get("status/500")


def test_flask_status_page(browser: Browser, flask_registry: tuple[Registry, str], tmp_path: Path) -> None:
    registry, base = flask_registry
    traffic(registry)
    expected = Expected(
        url=f"{base}/health/outbound",
        services=("payments", "search", "recommendations", "ledger"),
        open_service="recommendations",
        critical="payments",
        overall="degraded",
        status=200,
        failing="ledger",
        hidden=(
            "Details of each service are shown to authorized requests only. To see them, send the header "
            "Authorization: Bearer <token> with the health.token of the app's outbound settings."
        ),
    )
    page = check_status_page(browser, expected, tmp_path)

    # The page fetches itself again: a call made now shows up without a reload.
    requests_cell = page.get_by_role("article", name="payments").get_by_role("row", name=re.compile("^Requests"))
    expect(requests_cell).to_have_text(re.compile(r"Requests\s*5$"))
    registry.session("payments").get("ok")
    expect(requests_cell).to_have_text(re.compile(r"Requests\s*6$"), timeout=3 * REFRESH_SECONDS * 1000)
    page.context.close()

    check_summary_page(browser, expected)
    report = check_json_unchanged(expected.url, json.dumps(registry.health(details=False)).encode())
    assert without_retry_in(report) == without_retry_in(registry.health())
    assert (tmp_path / "status-page.png").stat().st_size > 10_000


# -- Django: uvicorn in a subprocess ----------------------------------------------------------------------------------


@pytest.fixture
def django_server(upstream: Upstream) -> Iterator[str]:
    """The browser tests' Django project under uvicorn (one process: one breaker per service); yields its URL."""
    root = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory(prefix="ob") as home:
        env = {
            **os.environ,
            "PYTHONPATH": str(root),
            "DJANGO_SETTINGS_MODULE": "tests.browser.django_settings",
            "OUTBOUND_E2E_UPSTREAM": upstream.url,
            "OUTBOUND_HEALTH_TOKEN": TOKEN,
            "HOME": home,
        }
        args = [
            "uvicorn",
            "--host=127.0.0.1",
            "--port=0",
            "--lifespan=off",
            "tests.django.e2e_project.asgi:application",
        ]
        server = Server([sys.executable, "-m", *args], env)
        try:
            base = server.wait_for_output(r"Uvicorn running on (http://127\.0\.0\.1:\d+)").group(1)
            yield base
        finally:
            server.stop()


def until(step: Callable[[], bool], what: str) -> None:
    assert wait_until(step, 30.0), f"timed out waiting until {what}"


def test_django_status_page(browser: Browser, django_server: str, upstream: Upstream, tmp_path: Path) -> None:
    base = django_server
    assert get_closing(f"{base}/call-async").status_code == 200
    assert get_closing(f"{base}/call").status_code == 200
    upstream.set_mode("failing", status=503)
    until(lambda: get_closing(f"{base}/call").json().get("circuit_open") is True, "the orders breaker opened")
    upstream.set_mode("healthy")
    expected = Expected(
        url=f"{base}/health/outbound",
        services=("orders", "catalog", "inventory"),
        open_service="orders",
        critical="orders",
        overall="down",
        status=503,
        failing=None,
        # The project has no AuthenticationMiddleware: no staff login to offer, the token alone.
        hidden=(
            "Details of each service are shown to authorized requests only. To see them, send the header "
            "Authorization: Bearer <token> with the health.token of the app's outbound settings."
        ),
    )
    page = check_status_page(browser, expected, tmp_path)

    # The page fetches itself again, 503 and all: the time it was updated moves on.
    updated = page.locator("#meta time")
    first = updated.get_attribute("datetime")
    expect(updated).not_to_have_attribute("datetime", first or "", timeout=3 * REFRESH_SECONDS * 1000)
    expect(page.get_by_role("article", name="orders").locator(".breaker")).to_have_text("open")
    page.context.close()

    check_summary_page(browser, expected)
    report = check_json_unchanged(expected.url, json.dumps({"status": "down"}).encode())
    assert list(report["services"]) == ["orders", "catalog", "inventory"]
    assert report["services"]["orders"]["breaker"]["state"] == "open"
    assert report["services"]["orders"]["critical"] is True
    assert (tmp_path / "status-page.png").stat().st_size > 10_000
