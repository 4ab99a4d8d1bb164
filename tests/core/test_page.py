"""The status page: what it shows of a report, escaping, and the content negotiation of ``health.respond``.

Pure unit tests on hand-built reports; tests/browser/ loads the page from live servers in Chromium.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from outbound import HealthConfig, _page
from outbound.health import (
    STATUSES,
    BreakerSnapshot,
    HealthReport,
    LastError,
    LatencySnapshot,
    PoolSnapshot,
    RecentCalls,
    ServiceHealth,
    StateBackendHealth,
    StatsSnapshot,
    build_report,
    respond,
    service_status,
)

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 21, 8, 0, 3, tzinfo=timezone.utc)
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
TOKEN = "page-test-token-0123456789"
HOSTILE = "<script>alert('x')</script>\"><img src=x onerror=alert(1)>&amp;"


def service(
    name: str,
    *,
    state: str = "closed",
    critical: bool = False,
    retry_in: float | None = None,
    pool: PoolSnapshot | None = None,
    last_error: LastError | None = None,
    latency: LatencySnapshot | None = None,
    base_url: str | None = None,
    recent: RecentCalls | None = None,
) -> ServiceHealth:
    down = state in ("open", "isolated")
    recent = recent or RecentCalls(calls=40, errors=2)
    return ServiceHealth(
        name=name,
        status=service_status(state, pool or PoolSnapshot(max_connections=20), recent=recent),
        client="requests",
        base_url=base_url or f"https://{name}.internal/api/",
        critical=critical,
        breaker=BreakerSnapshot(
            state=state,
            failures=2 if down else 0,
            opened_at=NOW - timedelta(seconds=3) if down else None,
            retry_in=retry_in,
        ),
        pool=pool or PoolSnapshot(max_connections=20, in_use=1, idle=3),
        stats=StatsSnapshot(
            requests=1520,
            errors=3,
            retries=4,
            short_circuited=7,
            pool_timeouts=1,
            recent=recent,
            latency_ms=latency or LatencySnapshot(12.1, 48.0, 95.3),
        ),
        last_error=last_error,
    )


def page(report: HealthReport | dict[str, Any], *, details: bool = True, **access: Any) -> str:
    data = report.as_dict(details=details) if isinstance(report, HealthReport) else report
    return _page.render_page(data, now=NOW, **access)


def without_code(html: str) -> str:
    """The page without its style sheet and script."""
    return re.sub(r"<(style|script)>.*?</\1>", "", html, flags=re.S)


def card(html: str, name: str) -> str:
    """The ``<article>`` of one service."""
    match = re.search(
        rf'<article [^>]*>\n<div class="card-head"><h2 [^>]*>{re.escape(name)}</h2>.*?</article>', html, re.S
    )
    assert match, f"no card for {name!r}"
    return match.group(0)


class Markup(HTMLParser):
    """Every start tag with its attributes, and whether every element that was opened was closed in order."""

    VOID = frozenset({"meta", "link", "br", "img", "input", "hr"})

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.open: list[str] = []
        self.mismatched: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open.pop() != tag:
            self.mismatched.append(tag)


# -- what the page shows ---------------------------------------------------------------------------------------------


def test_details_show_a_card_per_service_with_every_figure() -> None:
    report = build_report(
        [
            service("billing", critical=True),
            service(
                "search",
                state="open",
                retry_in=27.2,
                last_error=LastError("HTTPStatus", "503 Service Unavailable from GET https://search/q", NOW),
            ),
        ]
    )
    html = page(report)

    assert "<title>Outbound status: degraded</title>" in html
    assert re.search(r'id="overall"[^>]*>Overall <span class="badge warn">.*degraded</span>', html)
    assert "2 services: 1 down, 1 ok" in html
    billing, search = card(html, "billing"), card(html, "search")
    assert '<span class="critical">Critical</span>' in billing
    assert "Critical" not in search
    # Status and breaker state in words, coloured by class.
    assert re.search(r'<dt>Status</dt><dd><span class="badge bad">.*?down</span>', search)
    assert re.search(r'<dt>Breaker</dt><dd><span class="badge bad breaker">.*?open</span>', search)
    assert re.search(r'<span class="badge ok breaker">.*?closed</span>', billing)
    assert '<span class="countdown" data-retry-in="27.200">trial in 28 s</span>' in search
    assert "data-retry-in" not in billing
    assert "2 failures" in search
    assert '<time datetime="2026-11-21T08:00:00+00:00">2026-11-21 08:00:00 UTC</time>' in search
    # The pool as a bar with a label, and in words.
    assert 'role="img" aria-label="Connection pool: 1 in use, 3 idle, 0 waiting, of 20 connections"' in billing
    assert '<span class="in-use" style="width: 5.0%"></span><span class="idle" style="width: 15.0%"></span>' in billing
    for label, value in [
        ("Requests", "1,520"),
        ("Errors", "3"),
        ("Retries", "4"),
        ("Short-circuited", "7"),
        ("Pool timeouts", "1"),
        ("p50", "12.1 ms"),
        ("p95", "48.0 ms"),
        ("p99", "95.3 ms"),
    ]:
        assert f'<th scope="row">{label}</th><td>{value}</td>' in billing
    assert "<h3>Last error</h3>" in search
    assert "<strong>HTTPStatus</strong>: 503 Service Unavailable from GET https://search/q" in search
    assert "Last error" not in billing
    assert "Updated <time" in html
    assert "08:00:03 UTC" in html
    assert "Scope: this process" in html


def test_summary_only_shows_the_overall_status_alone() -> None:
    report = build_report([service("billing", critical=True, state="open", retry_in=5.0)])
    html = without_code(page(report, details=False, token=True))
    assert re.search(r'id="overall"[^>]*>Overall <span class="badge bad">.*down</span>', html)
    assert "shown to authorized requests only" in html
    for hidden in ("billing", "<article", "Scope", "Pool", "data-retry-in", "Critical"):
        assert hidden not in html


def test_a_failing_service_shows_its_word_its_colour_and_why() -> None:
    failing = service("ledger", recent=RecentCalls(calls=12, errors=9))
    html = page(build_report([service("billing"), failing, service("search", state="open", retry_in=3.0)]))
    ledger = card(html, "ledger")
    assert ledger.startswith('<article class="card is-fail"')
    assert re.search(
        r'<dt>Status</dt><dd><span class="badge fail"><span class="dot" aria-hidden="true"></span>'
        r"failing</span></dd>",
        ledger,
    )
    assert '<span class="badge ok breaker">' in ledger  # the breaker is closed: the calls fail all the same
    assert "<dt>Last 60 s</dt><dd>9 of 12 calls failed (75%)</dd>" in ledger
    assert "<dt>Last 60 s</dt><dd>2 of 40 calls failed (5%)</dd>" in card(html, "billing")
    assert "3 services: 1 down, 1 failing, 1 ok" in html  # worst first
    assert re.search(r'id="overall"[^>]*>Overall <span class="badge warn">.*degraded</span>', html)


def test_the_last_minute_reads_plainly_at_any_count() -> None:
    def line(recent: RecentCalls) -> str:
        html = card(page(build_report([service("api", recent=recent)])), "api")
        [text] = re.findall(r"<dt>Last 60 s</dt><dd>(.*?)</dd>", html)
        return str(text)

    assert line(RecentCalls()) == "no calls"
    assert line(RecentCalls(calls=1, errors=0)) == "0 of 1 call failed"
    assert line(RecentCalls(calls=1500, errors=3)) == "3 of 1,500 calls failed (under 1%)"  # not "0%"


def test_every_status_has_a_colour_in_both_schemes() -> None:
    tones = {status: _page._STATUS_TONES[status] for status in STATUSES}
    assert len(set(tones.values())) == len(STATUSES)  # four statuses, four colours
    template = (resources.files("outbound") / "templates" / "health.html").read_text(encoding="utf-8")
    light, dark = template.split("@media (prefers-color-scheme: dark)", 1)
    for tone in tones.values():
        assert f".{tone} {{ color: var(--{tone}-fg); background: var(--{tone}-bg); }}" in template
        if tone != "ok":
            assert f".card.is-{tone} {{ border-left-color: var(--{tone}-fg); }}" in template
        for scheme in (light, dark.split("</style>")[0]):
            assert f"--{tone}-fg: #" in scheme
            assert f"--{tone}-bg: #" in scheme


def test_no_services() -> None:
    assert "No services are configured." in page(build_report([]))


def test_a_waiting_pool_and_a_half_open_breaker_are_flagged() -> None:
    pool = PoolSnapshot(max_connections=4, in_use=4, idle=0, waiting=3)
    html = card(page(build_report([service("busy", state="half-open", pool=pool)])), "busy")
    assert '<span class="waiting">3 waiting</span>' in html
    assert re.search(r'<span class="badge warn breaker">.*?half-open</span>', html)
    assert 'style="width: 100.0%"' in html


def test_pool_bar_widths_stay_within_the_bar() -> None:
    pool = PoolSnapshot(max_connections=10, in_use=12, idle=5)
    html = card(page(build_report([service("over", pool=pool)])), "over")
    assert '<span class="in-use" style="width: 100.0%"></span><span class="idle" style="width: 0.0%"></span>' in html
    empty = card(page(build_report([service("none", pool=PoolSnapshot(max_connections=0))])), "none")
    assert 'style="width: 0.0%"' in empty


def test_a_trial_that_is_due_reads_due() -> None:
    html = page(build_report([service("x", state="open", retry_in=0.0)]))
    assert '<span class="countdown" data-retry-in="0.000">trial due</span>' in html


def test_latency_before_the_first_call_reads_no_data() -> None:
    html = page(build_report([service("new", latency=LatencySnapshot())]))
    assert (
        '<th scope="row">p95</th><td><span aria-hidden="true">&ndash;</span><span class="vh">no data</span></td>'
        in html
    )


def test_fleet_fields_show_when_present() -> None:
    report = HealthReport(
        status="ok",
        services={"billing": service("billing")},
        scope="fleet",
        workers=4,
        state_backend=StateBackendHealth(backend="redis", status="unreachable", last_error="ConnectionError: refused"),
    )
    html = page(report)
    assert "Scope: fleet" in html
    assert "4 workers" in html
    assert re.search(
        r'State backend redis <span class="badge bad">.*?unreachable</span> ConnectionError: refused', html
    )


def test_fleet_fields_are_skipped_when_absent() -> None:
    html = without_code(page(build_report([service("billing")])))
    assert "worker" not in html
    assert "State backend" not in html


def test_fields_this_page_does_not_know_are_listed_as_they_come() -> None:
    data = build_report([service("billing")]).as_dict()
    billing = data["services"]["billing"]
    billing["bulkhead"] = {"max_in_flight": 10, "in_flight": 2}
    billing["rates"] = {"failure_rate": 0.25, "window": {"calls": 40}}
    billing["stats"]["rejected"] = {"bulkhead_full": 3}
    billing["breaker"]["slow_call_rate"] = 0.5
    data["region"] = "eu-west"
    html = page(data)
    billing_card = card(html, "billing")
    assert '<caption>Bulkhead</caption><tbody><tr><th scope="row">Max in flight</th><td>10</td></tr>' in billing_card
    assert '<th scope="row">Failure rate</th><td>0.25</td>' in billing_card
    assert '<th scope="row">Window · Calls</th><td>40</td>' in billing_card
    assert '<th scope="row">Rejected (bulkhead full)</th><td>3</td>' in billing_card
    assert "slow 50%" not in billing_card  # a consecutive breaker's rates are not its facts
    assert '<caption>Report</caption><tbody><tr><th scope="row">Region</th><td>eu-west</td></tr>' in html


def test_a_rate_breaker_shows_its_rates_and_a_pause_counts_down() -> None:
    data = build_report([service("billing")]).as_dict()
    billing = data["services"]["billing"]
    billing["breaker"].update(mode="rate", calls=100, failure_rate=0.03, slow_call_rate=0.1)
    billing["paused_for"] = 2.5
    billing_card = card(page(data), "billing")
    assert "failure rate 3% · slow 10% over 100 calls" in billing_card
    assert "<dt>Paused</dt>" in billing_card
    assert 'data-retry-in="2.500" data-counting="{s} s left" data-done="over">3 s left</span>' in billing_card
    billing["breaker"].update(calls=0, failure_rate=None, slow_call_rate=None)
    del billing["paused_for"]
    quiet = card(page(data), "billing")
    assert "no calls in the window yet" in quiet
    assert "Paused" not in quiet


def test_every_value_from_the_report_is_escaped() -> None:
    hostile_error = LastError(HOSTILE, HOSTILE, NOW)
    report = HealthReport(
        status="down",
        services={HOSTILE: service(HOSTILE, critical=True, state="open", retry_in=3, last_error=hostile_error)},
        scope="fleet",
        workers=2,
        state_backend=StateBackendHealth(backend=HOSTILE, status="unreachable", last_error=HOSTILE),
    )
    data = report.as_dict()
    data["services"][HOSTILE]["base_url"] = HOSTILE
    data["services"][HOSTILE]["client"] = HOSTILE
    data["services"][HOSTILE]["breaker"]["state"] = HOSTILE
    data["services"][HOSTILE]["breaker"]["opened_at"] = HOSTILE
    data["services"][HOSTILE][HOSTILE] = {HOSTILE: HOSTILE}
    data["services"][HOSTILE]["stats"]["rejected"] = {HOSTILE: 1}
    data["scope"] = HOSTILE
    data["status"] = HOSTILE
    html = page(data)

    markup = Markup(html)
    assert [tag for tag, _ in markup.tags].count("script") == 1  # the page's own
    assert "img" not in {tag for tag, _ in markup.tags}
    assert not [name for _, attrs in markup.tags for name in attrs if name.startswith("on")]
    assert "alert(" in html  # shown, as text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&quot;&gt;&lt;img" in html
    assert "&amp;amp;" in html  # an entity in the data is shown as typed, not decoded
    assert markup.open == []
    assert markup.mismatched == []


def test_the_page_is_well_formed() -> None:
    report = build_report(
        [service("a", critical=True), service("b", state="open", retry_in=1, last_error=LastError("E", "m", NOW))]
    )
    for html in (page(report), page(report, details=False)):
        markup = Markup(html)
        assert markup.open == []
        assert markup.mismatched == []
        tags = [tag for tag, _ in markup.tags]
        assert tags.count("main") == 1
        assert tags.count("header") == 1
        assert tags.count("h1") == 1
        assert ("meta", {"name": "viewport", "content": "width=device-width, initial-scale=1"}) in markup.tags
        assert markup.tags[0] == ("html", {"lang": "en"})
    # Every article is named by its heading, and ids are unique.
    markup = Markup(page(report))
    ids = [attrs["id"] for _, attrs in markup.tags if "id" in attrs]
    assert len(ids) == len(set(ids))
    labelled = [attrs["aria-labelledby"] for tag, attrs in markup.tags if tag == "article"]
    assert labelled == ["svc-1", "svc-2"]
    assert set(labelled) <= set(ids)


def test_the_template_is_package_data() -> None:
    assert (resources.files("outbound") / "templates" / "health.html").is_file()
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    table = re.search(r"^\[tool\.setuptools\.package-data\]\n(.*?)(?=^\[)", pyproject, re.M | re.S)
    assert table
    assert re.search(r'^outbound = \[[^\]]*"templates/\*\.html"', table.group(1), re.M)


def test_the_policy_allows_exactly_the_page_script() -> None:
    html = page(build_report([service("a")]))
    [script] = re.findall(r"<script>(.*?)</script>", html, re.S)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    policy = _page.page_headers()["Content-Security-Policy"]
    assert f"script-src 'sha256-{digest}';" in policy
    assert "default-src 'none'" in policy
    assert "frame-ancestors 'none'" in policy


# -- negotiation ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "fmt", "html"),
    [
        pytest.param(BROWSER_ACCEPT, None, True, id="chrome"),
        pytest.param("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", None, True, id="firefox"),
        pytest.param("text/html", None, True, id="html"),
        pytest.param("TEXT/HTML", None, True, id="case-insensitive"),
        pytest.param("text/*", None, True, id="text-wildcard"),
        pytest.param("application/json;q=0.5, text/html", None, True, id="html-preferred"),
        pytest.param("application/json", None, False, id="json"),
        pytest.param("*/*", None, False, id="anything"),
        pytest.param(None, None, False, id="no-accept"),
        pytest.param("", None, False, id="empty"),
        pytest.param("text/html, application/json", None, False, id="tie-keeps-json"),
        pytest.param("text/html;q=0.5, application/json", None, False, id="json-preferred"),
        pytest.param("text/html;q=0, */*", None, False, id="html-refused"),
        pytest.param("text/html;q=abc", None, False, id="bad-quality-ignored"),
        pytest.param("text/html;q=2", None, False, id="out-of-range-quality-ignored"),
        pytest.param("text/html;q=nan", None, False, id="nan-quality-ignored"),
        pytest.param("garbage, ;;, /", None, False, id="garbage"),
        pytest.param("application/xhtml+xml", None, False, id="xhtml-alone"),
        pytest.param(BROWSER_ACCEPT, "json", False, id="format-json-wins"),
        pytest.param(BROWSER_ACCEPT, " JSON ", False, id="format-json-any-case"),
        pytest.param("application/json", "html", True, id="format-html-wins"),
        pytest.param(None, "html", True, id="format-html-alone"),
        pytest.param(BROWSER_ACCEPT, "xml", True, id="unknown-format-ignored"),
        pytest.param(None, "", False, id="empty-format"),
    ],
)
def test_wants_html(accept: str | None, fmt: str | None, html: bool) -> None:
    assert _page.wants_html(accept, format=fmt) is html


@dataclass
class FakeRegistry:
    """What ``respond`` needs of a registry: the health settings and a report."""

    reported: HealthReport
    health_config: HealthConfig = field(default_factory=lambda: HealthConfig(token=TOKEN))

    def report(self, *, service: str | None = None) -> HealthReport:
        return self.reported


@pytest.fixture
def down() -> FakeRegistry:
    return FakeRegistry(build_report([service("billing", critical=True, state="open", retry_in=9.0)]))


@pytest.mark.parametrize("accept", [None, "*/*", "application/json", "text/html, application/json"])
@pytest.mark.parametrize("authorization", [None, f"Bearer {TOKEN}"])
def test_json_answers_keep_their_bytes_and_say_they_vary(
    down: FakeRegistry, accept: str | None, authorization: str | None
) -> None:
    answer = respond(down, authorization=authorization, accept=accept)
    details = authorization is not None
    # Exactly what the endpoint answered before the page existed.
    assert answer.body == json.dumps(down.reported.as_dict(details=details)).encode()
    assert answer.status == 503
    assert dict(answer.headers) == {"Content-Type": "application/json", "Cache-Control": "no-store", "Vary": "Accept"}


def test_format_json_forces_json_for_a_browser(down: FakeRegistry) -> None:
    answer = respond(down, authorization=None, accept=BROWSER_ACCEPT, format="json")
    assert (answer.status, answer.body) == (503, b'{"status": "down"}')


@pytest.mark.parametrize(
    ("accept", "fmt"), [(BROWSER_ACCEPT, None), ("application/json", "html")], ids=["browser", "format-html"]
)
def test_the_page_has_the_same_status_and_access_rules(down: FakeRegistry, accept: str, fmt: str | None) -> None:
    anonymous = respond(down, authorization=None, accept=accept, format=fmt)
    detailed = respond(down, authorization=f"Bearer {TOKEN}", accept=accept, format=fmt)
    allowed = respond(down, authorization=None, authorized=lambda: True, accept=accept, format=fmt)
    for answer in (anonymous, detailed, allowed):
        assert answer.status == 503
        assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
        assert answer.headers["Cache-Control"] == "no-store"
        assert answer.headers["Vary"] == "Accept"
        assert "Content-Security-Policy" in answer.headers
        assert answer.body.startswith(b"<!doctype html>")
    assert b"billing" not in anonymous.body
    assert b"shown to authorized requests only" in anonymous.body
    assert b'<h2 id="svc-1">billing</h2>' in detailed.body
    assert b'<h2 id="svc-1">billing</h2>' in allowed.body


def test_the_page_follows_show_details(down: FakeRegistry) -> None:
    down.health_config = HealthConfig(show_details="never", token=TOKEN)
    never = respond(down, authorization=f"Bearer {TOKEN}", accept=BROWSER_ACCEPT)
    assert b"<article" not in never.body
    down.health_config = HealthConfig(show_details="always")
    assert b"<article" in respond(down, authorization=None, accept=BROWSER_ACCEPT).body


def test_a_healthy_page_is_200() -> None:
    answer = respond(FakeRegistry(build_report([service("a")])), authorization=None, accept=BROWSER_ACCEPT)
    assert answer.status == 200
    assert b"Outbound status: ok" in answer.body


def notice(answer: Any) -> str:
    """The text in place of the cards, tags stripped."""
    [text] = re.findall(r'<p class="notice">(.*?)</p>', answer.body.decode(), re.S)
    return re.sub(r"<[^>]+>", "", text)


def test_the_summary_says_how_to_see_the_details_and_never_the_token(down: FakeRegistry) -> None:
    django = respond(
        down,
        authorization=None,
        authorized=lambda: False,
        sign_in="sign in to this site as a staff user",
        accept=BROWSER_ACCEPT,
    )
    assert notice(django) == (
        "Details of each service are shown to authorized requests only. To see them, sign in to this site as a staff "
        "user, or send the header Authorization: Bearer &lt;token&gt; with the health.token of the app's outbound "
        "settings."
    )
    assert "<code>Authorization: Bearer &lt;token&gt;</code>" in django.body.decode()
    # A wrong token gets the same page: it says how, never what the token is.
    wrong = respond(down, authorization="Bearer nope", sign_in="sign in", accept=BROWSER_ACCEPT)
    for answer in (django, wrong):
        assert TOKEN.encode() not in answer.body
        assert b"billing" not in answer.body


def test_the_summary_names_only_the_ways_that_can_work(down: FakeRegistry) -> None:
    # Flask without an authorize callable: signing in cannot help, the token can.
    flask = respond(
        down, authorization=None, authorized=None, sign_in="sign in as this app requires", accept="text/html"
    )
    assert "sign in" not in notice(flask)
    assert "To see them, send the header Authorization: Bearer" in notice(flask)
    # No token set: signing in is the one way.
    down.health_config = HealthConfig()
    staff = respond(down, authorization=None, authorized=lambda: False, sign_in="sign in as staff", accept="text/html")
    assert notice(staff).endswith("To see them, sign in as staff.")
    # Nothing can authorize: the page says what to set, and where else to look.
    alone = respond(down, authorization=None, accept="text/html")
    assert notice(alone).startswith("Details of each service are not shown on this page: nothing is set up")
    assert "health.token" in notice(alone)
    assert "outbound status" in notice(alone)
    # "never": no request gets them, whatever it sends, so no way is offered.
    down.health_config = HealthConfig(show_details="never", token=TOKEN)
    never = respond(down, authorization=None, authorized=lambda: True, sign_in="sign in", accept="text/html")
    assert notice(never).startswith("Details of each service are not shown on this page")
    assert TOKEN.encode() not in never.body
