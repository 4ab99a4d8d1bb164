"""The status page's trends in a real browser, through a scripted incident: healthy -> failing -> open -> recovered.

A live Flask server (a thread of this process) keeps a 1-second history of one service; the test drives that service
against the shared upstream and loads the page after each phase in Debian's Chromium, checking what a person would
read: the numbers beside each sparkline, the marks of the breaker's transitions on the time axis (and their list in
words), the "since" of the breaker's state, and a cached service's stale answer beside its errors; in light and dark
mode, on a desktop and a phone, with nothing against
the page's Content-Security-Policy. Screenshots of each phase are saved under the test's temporary directory.
"""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path

import pytest
from flask import Flask
from playwright.sync_api import Browser, Page, expect

import outbound
from outbound_flask import Outbound
from tests.browser.test_status_page import (  # noqa: F401 (pytest fixtures, used by name)
    AUTH,
    DESKTOP,
    PHONE,
    TOKEN,
    Problems,
    assert_readable,
    browser,
    live_flask,
    playwright,
)
from tests.upstream import Upstream

pytestmark = pytest.mark.e2e

RESET_SECONDS = 2.0


def _app(upstream: Upstream) -> Flask:
    app = Flask(__name__)
    app.config["OUTBOUND"] = {
        "services": {
            "api": {
                "base_url": upstream.url,
                "retry": None,
                "timeout": 5.0,
                "breaker": {"fail_max": 3, "reset_timeout": RESET_SECONDS},
            },
            "cached": {"base_url": upstream.url, "retry": None, "cache": {"ttl": 1, "stale_if_error": 60}},
        },
        "health": {"token": TOKEN, "history": {"interval": 1.0, "buckets": 60}},
    }
    Outbound(app)
    return app


def _load(page: Page, url: str) -> None:
    # Calls counted in the bucket still counting show in "now" once it is over: wait for the next second.
    time.sleep(1.1)
    response = page.goto(url)
    assert response is not None


def _now(page: Page, series: str) -> str:
    return page.get_by_role("article", name="api").locator(f'[data-series="{series}"] [data-now]').inner_text()


def _marks(page: Page, state: str) -> int:
    return page.locator(f'svg.spark [data-mark="{state}"]').count()


def test_a_scripted_incident_reads_on_the_page(browser: Browser, upstream: Upstream, tmp_path: Path) -> None:  # noqa: F811
    app = _app(upstream)
    registry: outbound.Registry = app.extensions["outbound"]
    session = registry.session("api")
    context = browser.new_context(extra_http_headers=AUTH, viewport=DESKTOP, color_scheme="light")
    page = context.new_page()
    problems = Problems(page)
    try:
        with live_flask(app) as base:
            url = f"{base}/health/outbound"

            # Healthy: traffic, no errors, no marks; the cached service stores an answer.
            for _ in range(6):
                session.get("ok")
            registry.session("cached").get("catalogue")
            _load(page, url)
            card = page.get_by_role("article", name="api")
            expect(card.locator(".badge").first).to_have_text("ok")
            assert re.fullmatch(r"\d+\.\d/s", _now(page, "requests")), _now(page, "requests")
            assert float(_now(page, "requests").removesuffix("/s")) > 0
            assert _now(page, "errors") == "0%"
            assert _now(page, "p95").endswith(" ms")
            expect(card.locator(".marks-none")).to_be_visible()
            expect(card.get_by_text("Breaker closed for all of the window")).to_be_visible()
            requests_svg = card.locator('[data-series="requests"] svg')
            assert "Requests/s over the last 60 s: now" in (requests_svg.get_attribute("aria-label") or "")
            page.screenshot(path=str(tmp_path / "1-healthy.png"), full_page=True)

            # Failing: two calls of three fail, the breaker (3 in a row) stays closed; half the minute's calls failed.
            for _ in range(6):
                session.get("status/503")
                session.get("status/503")
                session.get("ok")
            _load(page, url)
            expect(card.locator(".badge").first).to_have_text("failing")
            errors = int(_now(page, "errors").removesuffix("%"))
            assert 50 <= errors <= 67, errors  # 12 of 18, or of 24 with the healthy calls still in the last 10 s
            assert _marks(page, "open") == 0
            expect(card.get_by_text(re.compile(r"^Failing since \d\d:\d\d:\d\d$"))).to_be_visible()
            page.screenshot(path=str(tmp_path / "2-failing.png"), full_page=True)

            # Open: three failures in a row; calls are refused.
            for _ in range(3):
                session.get("status/503")
            with contextlib.suppress(outbound.CircuitOpenError):
                session.get("ok")
            _load(page, url)
            expect(card.locator(".badge").first).to_have_text("down")
            assert _marks(page, "open") == 3  # one line in each of the three sparklines
            expect(card.get_by_text(re.compile(r"^Breaker open since \d\d:\d\d:\d\d$"))).to_be_visible()
            expect(card.locator(".marks li")).to_have_count(1)
            expect(card.locator(".marks li").first).to_contain_text("breaker closed → open: 3 consecutive failures")
            page.screenshot(path=str(tmp_path / "3-open.png"), full_page=True)

            # Recovered: after reset_timeout a trial call succeeds and closes the breaker.
            time.sleep(RESET_SECONDS + 0.2)
            session.get("ok")
            for _ in range(5):
                session.get("ok")
            _load(page, url)
            expect(card.locator(".badge").first).to_have_text("ok")
            assert _marks(page, "open") == 3
            assert _marks(page, "closed") == 3
            expect(card.get_by_text(re.compile(r"^Breaker closed since \d\d:\d\d:\d\d$"))).to_be_visible()
            texts = card.locator(".marks li").all_inner_texts()
            assert [text.split(" ", 1)[1].split(":")[0] for text in texts][-1].endswith("→ closed"), texts
            # The marks are drawn in time order along the axis: the opening left of the closing.
            xs = [
                float(card.locator(f'[data-series="requests"] [data-mark="{state}"]').get_attribute("x1") or "nan")
                for state in ("open", "closed")
            ]
            assert xs[0] <= xs[1], xs
            page.screenshot(path=str(tmp_path / "4-recovered.png"), full_page=True)

            # The cached service's upstream fails: its stored answer (past its freshness) stands in for the error.
            layer = registry["cached"].policy.cache
            assert layer is not None
            stored = layer.now()
            layer.now = lambda: stored + 5
            upstream.set_mode("failing", status=503)
            assert registry.session("cached").get("catalogue").outbound_cache == "stale"  # type: ignore[attr-defined]
            _load(page, url)
            cached = page.get_by_role("article", name="cached")
            expect(cached.locator('[data-series="errors"] .stale')).to_have_text("1 stale answer")
            words = cached.locator('[data-series="errors"] svg').get_attribute("aria-label") or ""
            assert "1 stale answer from the cache in place of an error" in words, words
            expect(card.locator(".stale")).to_have_count(0)  # the other service had none
            page.screenshot(path=str(tmp_path / "4b-stale.png"), full_page=True)

            # The same page in dark mode and on a phone: readable, nothing scrolls sideways.
            dark = browser.new_context(extra_http_headers=AUTH, viewport=PHONE, color_scheme="dark")
            phone = dark.new_page()
            phone_problems = Problems(phone)
            response = phone.goto(url)
            assert response is not None
            assert_readable(phone, "dark")
            assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
            svg = phone.get_by_role("article", name="api").locator('[data-series="p95"] svg')
            assert (svg.bounding_box() or {"width": 0})["width"] > 200  # the sparkline spans the card
            phone.screenshot(path=str(tmp_path / "5-recovered-dark-phone.png"), full_page=True)
            dark.close()
            assert phone_problems.seen == []
    finally:
        context.close()
        registry.close()
    assert problems.seen == []
