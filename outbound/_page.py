"""The status page: ``/health/outbound`` for a person with a browser.

``wants_html(accept, format=...)`` is the content negotiation ``health.respond`` applies: HTML only when the
``Accept`` header prefers ``text/html`` to ``application/json`` (a browser's does) or ``format`` is ``"html"``;
``format="json"``, no ``Accept``, ``*/*`` and whatever else curl or a load balancer sends keep the JSON.

``render_page(report)`` fills ``templates/health.html`` from the JSON-ready report (``HealthReport.as_dict(...)``),
not from the dataclasses, so that what only some reports carry (a fleet's ``workers``, a service's ``bulkhead``)
shows when it is there without this module knowing every field. Every value taken from the report is escaped, and
the Content-Security-Policy of ``page_headers()`` allows the page's one script by its hash alone: a script in an
upstream's error message could not run even if the escaping missed it.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from functools import cache
from importlib import resources
from string import Template
from typing import Any, TypeGuard

from . import _trends, health  # health imports this module too: its names are read when a page is rendered, not before

REFRESH_SECONDS = 5
"""How often the page fetches itself again."""

# Status words (health.STATUSES, and the state backend's "unreachable") to the CSS class of their colours; anything
# else is shown in neutral grey, with its word. "failing" has a colour of its own, between a warning and "down": the
# calls fail, but the breaker still lets them through.
_STATUS_TONES = {"ok": "ok", "degraded": "warn", "failing": "fail", "down": "bad", "unreachable": "bad"}
_BREAKER_TONES = {"closed": "ok", "half-open": "warn", "open": "bad", "isolated": "bad"}
_PAUSE_TONES = {"paused": "warn"}

# What each part of the report shows in a dedicated place; any other key is listed generically.
_SERVICE_KEYS = frozenset(
    {"status", "client", "base_url", "critical", "breaker", "pool", "stats", "last_error", "paused_for", "history"}
)
_BREAKER_KEYS = frozenset(
    {"state", "mode", "failures", "opened_at", "opened_by", "retry_in", "calls", "failure_rate", "slow_call_rate"}
)
_REPORT_KEYS = frozenset({"status", "scope", "workers", "state_backend", "services"})
_COUNTERS = (
    ("requests", "Requests"),
    ("errors", "Errors"),
    ("retries", "Retries"),
    ("short_circuited", "Short-circuited"),
    ("pool_timeouts", "Pool timeouts"),
)
_STATS_KEYS = frozenset({key for key, _ in _COUNTERS} | {"rejected", "recent", "latency_ms"})


# -- negotiation ------------------------------------------------------------------------------------------------------


def wants_html(accept: str | None, *, format: str | None = None) -> bool:
    """Whether a health request gets the page rather than the JSON.

    Args:
        accept: the request's ``Accept`` header. HTML only when it gives ``text/html`` a higher quality than
            ``application/json``: a tie (``*/*``, both listed) keeps the JSON every existing client expects.
        format: the ``format`` query parameter; ``"json"`` or ``"html"`` decides whatever ``Accept`` says, any
            other value is ignored.
    """
    chosen = (format or "").strip().lower()
    if chosen in ("json", "html"):
        return chosen == "html"
    if not accept:
        return False
    return _quality(accept, "text", "html") > _quality(accept, "application", "json")


def _quality(accept: str, main: str, sub: str) -> float:
    """The quality ``accept`` gives ``main/sub``: that of its most specific matching range (RFC 9110, 12.5.1)."""
    best = (-1, 0.0)
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        kind, _, subtype = media.lower().partition("/")
        specificity = {("*", "*"): 0, (main, "*"): 1, (main, sub): 2}.get((kind, subtype))
        quality = _q(params)
        if specificity is None or quality is None:
            continue
        best = max(best, (specificity, quality))
    return best[1]


def _q(params: Iterable[str]) -> float | None:
    """The ``q`` parameter's value (1 when absent), or ``None`` when it is not a number from 0 to 1."""
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                quality = float(value.strip())
            except ValueError:
                return None
            return quality if 0 <= quality <= 1 else None  # also refuses nan
    return 1.0


# -- the page ---------------------------------------------------------------------------------------------------------


@cache
def _template_text() -> str:
    return (resources.files("outbound") / "templates" / "health.html").read_text(encoding="utf-8")


def page_headers() -> dict[str, str]:
    """The headers of the page: never cached, varying with ``Accept``, and a policy that runs only its own script."""
    return {
        "Content-Type": "text/html; charset=utf-8",
        "Cache-Control": "no-store",
        "Vary": "Accept",
        "Content-Security-Policy": _content_security_policy(),
        "X-Content-Type-Options": "nosniff",
    }


@cache
def _content_security_policy() -> str:
    [script] = re.findall(r"<script>(.*?)</script>", _template_text(), re.DOTALL)
    assert "$" not in script, "a placeholder in the script would change it after its hash is taken"
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    # Inline styles stay allowed: the pool bars' widths are style attributes, and CSS cannot run code.
    return (
        f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; connect-src 'self'; "
        "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def render_page(
    report: Mapping[str, Any], *, now: datetime | None = None, sign_in: str | None = None, token: bool = False
) -> str:
    """The status page of a JSON-ready report: the overall status, then a card per service when it has them.

    Args:
        report: ``HealthReport.as_dict(details=...)``; without ``services`` (the summary an unauthorized request
            gets) the page shows the overall status alone, and says how to see the rest.
        now: when the report was taken (default: now), shown as "Updated ... UTC".
        sign_in: for the summary, the framework's way to authorize, in words ("sign in as a staff user").
        token: for the summary, whether the bearer token (``health.token``) authorizes.
    """
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    status = str(report.get("status", "unknown"))
    services = report.get("services")
    meta = [
        f'Updated <time datetime="{_e(now.isoformat(timespec="seconds"))}">{now:%H:%M:%S} UTC</time>',
        f"refreshes every {REFRESH_SECONDS} s",
    ]
    if isinstance(services, Mapping):
        meta.extend(_fleet(report))
        content = (
            _banners(services)
            + _services(services)
            + _extras("Report", {k: v for k, v in report.items() if k not in _REPORT_KEYS})
        )
    else:
        content = _details_hidden(sign_in, token)
    return Template(_template_text()).substitute(
        title=_e(f"Outbound status: {status}"),
        refresh=REFRESH_SECONDS,
        overall=f"Overall {_badge(status, _STATUS_TONES)}",
        meta=" · ".join(meta),
        content=content,
    )


def _banners(services: Mapping[str, Any]) -> str:
    """A banner above the cards for each service injecting faults, and one for each that only observes: what the
    page shows is then not what the upstream did, or not what the settings would have done."""
    lines = []
    for name, service in services.items():
        chaos = service.get("chaos")
        if isinstance(chaos, Mapping) and chaos.get("active"):
            kinds = ", ".join(
                f"{_e(f.get('kind'))} at {_number(f.get('rate'))}"
                for f in chaos.get("faults") or ()
                if isinstance(f, Mapping)
            )
            ends = chaos.get("ends_in")
            until = f", ends in {math.ceil(float(ends))} s" if _is_number(ends) else ""
            lines.append(
                f'<p class="notice banner chaos"><strong>Fault injection is on</strong> for {_e(name)} '
                f"({_e(chaos.get('source'))}: {kinds}{until}): some of its failures are injected, not the "
                "upstream's.</p>"
            )
        observing = service.get("observing")
        if observing:
            would = service.get("would_reject") or {}
            total = sum(v for v in would.values() if _is_number(v)) if isinstance(would, Mapping) else 0
            lines.append(
                f'<p class="notice banner observing"><strong>Observe-only</strong>: {_e(name)}\'s '
                f"{_e(', '.join(str(p) for p in observing))} refuse nothing; they would have refused "
                f"{_number(total)} call{'' if total == 1 else 's'} so far"
                + (
                    f" ({_number(service['would_reject_last_hour'])} in the last hour)"
                    if _is_number(service.get("would_reject_last_hour"))
                    else ""
                )
                + ".</p>"
            )
    return "\n".join(lines) + ("\n" if lines else "")


def _details_hidden(sign_in: str | None, token: bool) -> str:
    """What the summary says in place of the cards: the ways to see them that can work here, never a secret."""
    ways = [_e(sign_in)] if sign_in else []
    if token:
        ways.append(
            "send the header <code>Authorization: Bearer &lt;token&gt;</code> with the <code>health.token</code> of "
            "the app's outbound settings"
        )
    if not ways:
        return (
            '<p class="notice">Details of each service are not shown on this page: nothing is set up to authorize '
            "a request for them (see <code>health.show_details</code> and <code>health.token</code> in the app's "
            "outbound settings). The <code>outbound status</code> command prints them on the server.</p>"
        )
    return (
        '<p class="notice">Details of each service are shown to authorized requests only. To see them, '
        f"{', or '.join(ways)}.</p>"
    )


def _fleet(report: Mapping[str, Any]) -> list[str]:
    parts = []
    scope = report.get("scope")
    if scope is not None:
        parts.append("Scope: this process" if scope == "process" else f"Scope: {_e(scope)}")
    workers = report.get("workers")
    if workers is not None:
        parts.append(f"{_number(workers)} worker{'' if workers == 1 else 's'}")
    backend = report.get("state_backend")
    if isinstance(backend, Mapping):
        text = f"State backend {_e(backend.get('backend', '?'))} {_badge(str(backend.get('status')), _STATUS_TONES)}"
        if backend.get("last_error"):
            text += f" {_e(backend['last_error'])}"
        try:  # what happened (an outage, a failover); a report read from elsewhere may not say, or say it badly
            story = health.StateBackendHealth.from_dict(backend).story()
        except (KeyError, TypeError, ValueError, AttributeError):
            story = ""
        if story:
            text += f" ({_e(story)})"
        parts.append(text)
    return parts


def _services(services: Mapping[str, Any]) -> str:
    if not services:
        return '<p class="notice">No services are configured.</p>'
    counts = Counter(str(service.get("status")) for service in services.values())
    worst_first = sorted(counts, key=lambda status: (_severity(status), status), reverse=True)
    summary = ", ".join(f"{counts[status]} {_e(status)}" for status in worst_first)
    total = len(services)
    cards = "\n".join(_card(index, name, service) for index, (name, service) in enumerate(services.items(), 1))
    return (
        f'<p class="counts">{total} service{"" if total == 1 else "s"}: {summary}</p>\n'
        f'<div class="cards">\n{cards}\n</div>'
    )


def _severity(status: str) -> int:
    ranks: dict[str, int] = {word: rank for rank, word in enumerate(health.STATUSES)}
    return ranks.get(status, -1)


def _card(index: int, name: str, service: Mapping[str, Any]) -> str:
    status = str(service.get("status"))
    heading = f"svc-{index}"  # not the name: any text is a valid service name, not every one a valid id
    critical = ' <span class="critical">Critical</span>' if service.get("critical") else ""
    where = " · ".join(_e(service[key]) for key in ("client", "base_url") if service.get(key))
    stats = service.get("stats") or {}
    extras = {k: v for k, v in service.items() if k not in _SERVICE_KEYS}
    return (
        f'<article class="card is-{_STATUS_TONES.get(status, "unknown")}" aria-labelledby="{heading}">\n'
        f'<div class="card-head"><h2 id="{heading}">{_e(name)}</h2>{critical}</div>\n'
        f'<p class="where muted">{where}</p>\n'
        '<dl class="states">\n'
        f"<dt>Status</dt><dd>{_badge(status, _STATUS_TONES)}</dd>\n"
        f"{_recent(stats.get('recent'))}"
        f"{_breaker(service.get('breaker') or {})}"
        f"{_paused(service.get('paused_for'))}"
        "</dl>\n"
        f"{_pool(service.get('pool') or {})}"
        f"{_trends.trends(service.get('history'), (service.get('breaker') or {}).get('state'), status)}"
        f'<div class="tables">{_counters(stats)}{_latency(stats.get("latency_ms") or {})}</div>\n'
        f"{_last_error(service.get('last_error'), (service.get('breaker') or {}).get('opened_by'))}"
        f"{''.join(_extras(_label(key), value) for key, value in extras.items())}"
        "</article>"
    )


def _recent(recent: Any) -> str:
    """The last minute's calls and how many failed: what a ``failing`` status is judged on."""
    if not isinstance(recent, Mapping) or not _is_number(recent.get("calls")):
        return ""
    calls, errors, rate = recent["calls"], recent.get("errors"), recent.get("error_rate")
    if not calls:
        text = "no calls"
    else:
        # The share only when some failed, and never a "0%" for a few failures among many calls.
        share = ""
        if _is_number(rate) and rate > 0:
            share = f" ({rate:.0%})" if rate >= 0.01 else " (under 1%)"
        text = f"{_number(errors)} of {_number(calls)} call{'' if calls == 1 else 's'} failed{share}"
    return f"<dt>Last {_number(recent.get('seconds'))} s</dt><dd>{text}</dd>\n"


def _breaker(breaker: Mapping[str, Any]) -> str:
    state = breaker.get("state")
    if state is None:
        return ""
    parts = [_badge(str(state), _BREAKER_TONES, css="breaker")]
    retry_in = breaker.get("retry_in")
    if _is_number(retry_in):
        left = max(float(retry_in), 0.0)
        text = f"trial in {math.ceil(left)} s" if left > 0 else "trial due"
        parts.append(f'<span class="countdown" data-retry-in="{left:.3f}">{text}</span>')
    facts = []
    if breaker.get("opened_at"):
        facts.append(f"opened {_time(str(breaker['opened_at']))}")
    if breaker.get("mode") == "rate":
        # A rate breaker: its window's rates say more than a count of failures.
        calls = breaker.get("calls")
        rates = [
            f"{label} {float(rate):.0%}"
            for label, rate in (("failure rate", breaker.get("failure_rate")), ("slow", breaker.get("slow_call_rate")))
            if _is_number(rate)
        ]
        facts.append(f"{' · '.join(rates)} over {_number(calls)} calls" if rates else "no calls in the window yet")
    elif breaker.get("failures"):
        failures = breaker["failures"]
        facts.append(f"{_number(failures)} failure{'' if failures == 1 else 's'}")
    facts.extend(f"{_e(_label(k))}: {_value(v)}" for k, v in breaker.items() if k not in _BREAKER_KEYS)
    if facts:
        parts.append(f'<span class="muted">{" · ".join(facts)}</span>')
    return f"<dt>Breaker</dt><dd>{' '.join(parts)}</dd>\n"


def _paused(paused_for: Any) -> str:
    if not _is_number(paused_for):
        return ""
    left = max(float(paused_for), 0.0)
    countdown = (
        f'<span class="countdown" data-retry-in="{left:.3f}" data-counting="{{s}} s left" data-done="over">'
        f"{math.ceil(left)} s left</span>"
    )
    return f"<dt>Paused</dt><dd>{_badge('paused', _PAUSE_TONES)} the upstream asked for a pause; {countdown}</dd>\n"


def _pool(pool: Mapping[str, Any]) -> str:
    if "max_connections" not in pool:
        return ""
    size, in_use, idle, waiting = (_int(pool.get(key)) for key in ("max_connections", "in_use", "idle", "waiting"))
    in_use_width = _share(in_use, size)
    idle_width = min(_share(idle, size), 100 - in_use_width)
    label = f"Connection pool: {in_use} in use, {idle} idle, {waiting} waiting, of {size} connections"
    waiting_text = f'<span class="waiting">{waiting} waiting</span>' if waiting else "0 waiting"
    return (
        '<div class="pool">\n'
        f'<p>Pool: {in_use} in use · {idle} idle · {waiting_text} <span class="muted">of {size}</span></p>\n'
        f'<div class="bar" role="img" aria-label="{_e(label)}">'
        f'<span class="in-use" style="width: {in_use_width:.1f}%"></span>'
        f'<span class="idle" style="width: {idle_width:.1f}%"></span></div>\n'
        "</div>\n"
    )


def _counters(stats: Mapping[str, Any]) -> str:
    rows = [(label, stats[key]) for key, label in _COUNTERS if key in stats]
    rejected = stats.get("rejected")
    if isinstance(rejected, Mapping):
        rows.extend((f"Rejected ({str(reason).replace('_', ' ')})", count) for reason, count in rejected.items())
    rows.extend((_label(key), value) for key, value in stats.items() if key not in _STATS_KEYS)
    return _table("Calls", rows) if rows else ""


def _latency(latency: Mapping[str, Any]) -> str:
    if not latency:
        return ""
    rows = [(key, f"{value:,.1f} ms" if _is_number(value) else _value(value)) for key, value in latency.items()]
    return _table("Latency", rows, escaped=True)


def _last_error(error: Any, opened_by: Any = None) -> str:
    # The failure that opened the breaker sits next to the last error: after the opening, the last error is often
    # a refusal (CircuitOpenError), and the upstream's own failure is the one worth reading.
    parts = [
        f"<h3>{title}</h3>\n{_error_line(found)}"
        for title, found in (("Last error", error), ("Breaker opened by", opened_by))
        if isinstance(found, Mapping)
    ]
    return f'<div class="last-error">\n{"".join(parts)}</div>\n' if parts else ""


def _error_line(error: Mapping[str, Any]) -> str:
    when = f' <span class="muted">at {_time(str(error["at"]))}</span>' if error.get("at") else ""
    return f"<p><strong>{_e(error.get('type', ''))}</strong>: {_e(error.get('message', ''))}{when}</p>\n"


def _extras(title: str, values: Mapping[str, Any] | Any) -> str:
    """A table of whatever this page has no dedicated place for (a service's ``bulkhead``, ``rates``...)."""
    if not isinstance(values, Mapping):
        values = {title: values}
    rows = list(_flatten(values))
    return _table(title, rows) if rows else ""


def _flatten(values: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in values.items():
        label = f"{prefix}{_label(key)}"
        if isinstance(value, Mapping):
            yield from _flatten(value, prefix=f"{label} · ")
        else:
            yield label, value


def _table(caption: str, rows: Iterable[tuple[str, Any]], *, escaped: bool = False) -> str:
    body = "".join(
        f'<tr><th scope="row">{_e(label)}</th><td>{value if escaped else _value(value)}</td></tr>'
        for label, value in rows
    )
    return f"<table><caption>{_e(caption)}</caption><tbody>{body}</tbody></table>\n"


def _badge(word: str, tones: Mapping[str, str], *, css: str = "") -> str:
    classes = f"badge {tones.get(word, 'unknown')} {css}".strip()
    return f'<span class="{classes}"><span class="dot" aria-hidden="true"></span>{_e(word)}</span>'


def _value(value: Any) -> str:
    """A report value as escaped text: numbers grouped, ``None`` as a dash that reads "no data"."""
    if value is None:
        return '<span aria-hidden="true">&ndash;</span><span class="vh">no data</span>'
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(_value(item) for item in value)
    return _number(value)


def _number(value: Any) -> str:
    """Thousands grouped; a float with at most three decimals (a rate of 0.125 stays 0.125, 2.500 reads 2.5)."""
    if not _is_number(value):
        return _e(value)
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".")
    return f"{value:,}"


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _share(part: int, whole: int) -> float:
    return min(100.0, 100.0 * part / whole) if whole else 0.0


def _time(iso: str) -> str:
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return _e(iso)
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return f'<time datetime="{_e(iso)}">{moment:%Y-%m-%d %H:%M:%S} UTC</time>'


def _label(key: str) -> str:
    if "://" in str(key):
        return str(key)  # a URL (an endpoint's) as it is
    return str(key).replace("_", " ").capitalize()


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)
