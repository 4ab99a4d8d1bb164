"""Make the documentation's screenshot of the status page: ``.venv/bin/python -m tests.browser.screenshot``.

A representative report (four services: the critical one fine, one with an open breaker, one failing under a closed
breaker) rendered by the page's own
code and served to Debian's Chromium with the page's real headers; written to ``docs/status-page.png`` unless another
path is given.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

from playwright.sync_api import Route, sync_playwright

from outbound import _page
from outbound.health import (
    BreakerSnapshot,
    HealthReport,
    LastError,
    LatencySnapshot,
    PoolSnapshot,
    RecentCalls,
    ServiceHealth,
    StatsSnapshot,
    build_report,
)
from tests.browser.test_status_page import CHROMIUM, CHROMIUM_ARGS, DESKTOP

URL = "https://app.example.com/health/outbound"


def report(now: datetime) -> HealthReport:
    usual = ServiceHealth(
        name="",
        status="ok",
        client="requests",
        base_url="",
        critical=False,
        breaker=BreakerSnapshot(state="closed", failures=0, opened_at=None, retry_in=None),
        pool=PoolSnapshot(max_connections=20, in_use=2, idle=4),
        stats=StatsSnapshot(
            requests=1520,
            errors=3,
            retries=4,
            recent=RecentCalls(calls=212, errors=1),
            latency_ms=LatencySnapshot(12.1, 48.0, 95.3),
        ),
        last_error=None,
    )
    return build_report(
        [
            replace(usual, name="billing", base_url="https://billing.internal/api/", critical=True),
            replace(
                usual,
                name="search",
                status="down",
                client="httpx",
                base_url="https://search.internal/",
                breaker=BreakerSnapshot(state="open", failures=5, opened_at=now - timedelta(seconds=2), retry_in=28.0),
                pool=PoolSnapshot(max_connections=10),
                stats=StatsSnapshot(
                    requests=871,
                    errors=41,
                    retries=17,
                    short_circuited=12,
                    recent=RecentCalls(calls=9, errors=9),
                    latency_ms=LatencySnapshot(35.2, 2010.4, 2030.0),
                ),
                last_error=LastError("ReadTimeout", "GET https://search.internal/q: no answer within 2.0 s", now),
            ),
            replace(
                usual,
                name="recommendations",
                base_url="https://recs.internal/v2/",
                pool=PoolSnapshot(max_connections=10, in_use=7, idle=1),
                stats=StatsSnapshot(
                    requests=312,
                    errors=1,
                    recent=RecentCalls(calls=31),
                    latency_ms=LatencySnapshot(48.7, 120.0, 180.9),
                ),
            ),
            replace(
                usual,
                name="ledger",
                status="failing",
                base_url="https://ledger.internal/",
                breaker=BreakerSnapshot(
                    state="closed",
                    failures=0,
                    opened_at=None,
                    retry_in=None,
                    mode="rate",
                    calls=14,
                    failure_rate=0.8571,
                    slow_call_rate=None,
                ),
                pool=PoolSnapshot(max_connections=20, in_use=3, idle=2),
                stats=StatsSnapshot(
                    requests=96,
                    errors=14,
                    recent=RecentCalls(calls=14, errors=12),
                    latency_ms=LatencySnapshot(5010.2, 7020.5, 7100.0),
                ),
                last_error=LastError(
                    "ReadTimeout", "POST https://ledger.internal/entries: no answer within 5.0 s", now
                ),
            ),
        ]
    )


def main(path: Path) -> None:
    now = datetime.now(timezone.utc)
    body = _page.render_page(report(now).as_dict(), now=now)

    def serve(route: Route) -> None:
        route.fulfill(status=200, headers=_page.page_headers(), body=body)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=DESKTOP, color_scheme="light", reduced_motion="reduce")
            page.route(URL, serve)
            page.goto(URL)
            page.screenshot(path=path, full_page=True)
        finally:
            browser.close()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/status-page.png"))
