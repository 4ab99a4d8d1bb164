"""What ``manage.py outbound`` and ``flask outbound`` do, written once so the two print and exit alike.

Each function returns an ``Output``: the text to print and the exit code. Exit codes: 0 ok (or degraded, or done);
1 down, or a critical probe failed; 2 a settings mistake, an unknown service, or an action that cannot work here;
3 the fleet's shared state could not be read (``status`` then shows one process's own view; ``isolate`` and
``reset`` change nothing).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TextIO

from . import health
from ._errors import redact_url
from ._registry import Registry
from .health import (
    BreakerSnapshot,
    BulkheadSnapshot,
    HealthReport,
    HistorySnapshot,
    LastError,
    PoolSnapshot,
    ProbeResult,
    RateLimitSnapshot,
    ServiceHealth,
    StateBackendHealth,
    StatsSnapshot,
    Status,
    build_report,
)

__all__ = [
    "CONFIG_ERROR_EXIT_CODE",
    "FLEET_UNREACHABLE_EXIT_CODE",
    "MAX_GAME_DAY",
    "REMOTE_TIMEOUT",
    "STATUS_EXIT_CODES",
    "Output",
    "chaos",
    "duration",
    "enforce",
    "isolate",
    "probe",
    "probe_exit_code",
    "remote_status",
    "render_probe",
    "render_status",
    "reset",
    "status",
    "status_exit_code",
    "watch_status",
]

STATUS_EXIT_CODES: Mapping[Status, int] = {"ok": 0, "degraded": 0, "failing": 0, "down": 1}
CONFIG_ERROR_EXIT_CODE = 2
FLEET_UNREACHABLE_EXIT_CODE = 3

REMOTE_TIMEOUT = 10.0  # seconds for `status --url`: a person is waiting at a terminal
_WIDTH = 100  # columns of the scope lines: a terminal's width, so nothing wraps mid-word


@dataclass(frozen=True, slots=True)
class Output:
    """What a command prints, and the exit code it ends with; ``error``: the text is an error message (for stderr)."""

    text: str
    code: int = 0
    error: bool = False


def _error(message: str) -> Output:
    return Output(f"Error: {message}", CONFIG_ERROR_EXIT_CODE, error=True)


def status(registry: Registry, *, service: str | None = None, as_json: bool = False) -> Output:
    """The registry's report as a table (or JSON). Without a fleet, the table says it shows this process only."""
    report = registry.report(service=service)
    if as_json:
        return Output(json.dumps(report.as_dict(), indent=2), status_exit_code(report))
    return Output(_with_scope(report, _scope_line(report)), status_exit_code(report))


def remote_status(url: str, *, token: str | None = None, service: str | None = None, as_json: bool = False) -> Output:
    """A running server's report, read from its ``/health/outbound`` (``--url``), with ``--token`` for details."""
    found = _read_remote(url, token=token, service=service)
    if isinstance(found, Output):
        return found
    data, report = found
    if as_json:
        # The server's own JSON, narrowed to what was asked: nothing it reports is lost in a round trip.
        shown = {
            **data,
            "status": report.status,
            "services": {name: data["services"][name] for name in report.services},
        }
        return Output(json.dumps(shown, indent=2), status_exit_code(report))
    return Output(_with_scope(report, _scope_line(report, source=redact_url(url))), status_exit_code(report))


def watch_status(
    registry: Registry | None,
    *,
    url: str | None = None,
    token: str | None = None,
    service: str | None = None,
    out: TextIO | None = None,
    frames: int | None = None,
) -> Output:
    """``status --watch``: the table and a sparkline per service, redrawn every second until Ctrl-C (exit 0). From
    ``registry`` (this process, or the fleet's shared state), or from the server at ``url`` (its history asked for
    with ``?history=1``)."""
    from . import _watch

    def read() -> HealthReport | str:
        if url is not None:
            found = _read_remote(url, token=token, service=service, history=True)
            return found.text if isinstance(found, Output) else found[1]
        assert registry is not None  # one of the two is given
        return registry.report(service=service, history=True)

    def render(report: HealthReport) -> str:
        return _with_scope(report, _scope_line(report, source=redact_url(url) if url is not None else None))

    return Output("", _watch.watch(read, render, out=out or sys.stdout, frames=frames))


def _read_remote(
    url: str, *, token: str | None, service: str | None, history: bool = False
) -> tuple[dict[str, Any], HealthReport] | Output:
    # The server's JSON and its report (narrowed to ``service``), or the Output that says why there is none.
    import httpx  # imported here: the other commands, and importing this module, need no HTTP client

    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        params = {"history": "1"} if history else None
        answer = httpx.get(url, headers=headers, params=params, timeout=REMOTE_TIMEOUT, follow_redirects=True)
        data = answer.json()
    except (httpx.HTTPError, ValueError) as error:
        return _error(f"could not read {redact_url(url)}: {type(error).__name__}: {error}")
    if not isinstance(data, dict) or data.get("status") not in health.STATUSES:
        return _error(f"{redact_url(url)} did not answer with an outbound health report")
    if "services" not in data:
        hint = "pass --token with the health.token of its settings" if not token else "the token was not accepted"
        return Output(f"overall: {data['status']}   (details hidden: {hint})", status_exit_code(data))
    try:
        report = _report(data)
    except (KeyError, TypeError, ValueError) as error:
        return _error(f"{redact_url(url)} answered with a health report this version cannot read ({error!r})")
    if service is not None:
        if service not in report.services:
            return _error(f"the server has no service {service!r}")
        alone = build_report([report.services[service]])  # the same status rules, for this service alone
        report = dataclasses.replace(report, status=alone.status, services=alone.services)
    return data, report


def probe(registry: Registry, *, service: str | None = None, as_json: bool = False) -> Output:
    """One GET to each service's probe path (``Registry.probe``)."""
    results = registry.probe(service)
    if as_json:
        return Output(json.dumps([result.as_dict() for result in results], indent=2), probe_exit_code(results))
    return Output(render_probe(results), probe_exit_code(results))


def isolate(registry: Registry, name: str, seconds: float | None) -> Output:
    """Force ``name``'s breaker open for the fleet (``Registry.isolate``); exit 3, changing nothing, when the fleet's
    state backend does not answer."""
    if (refusal := _fleet_refusal(registry, name, "isolate")) is not None:
        return refusal
    registry.isolate(name, seconds)
    until = f"for {seconds:g}s" if seconds is not None else "until `outbound reset`"
    return Output(f"{name}: isolated {until}; calls fail fast in every process sharing this state")


MAX_GAME_DAY = 86_400.0  # a fleet's game day ends within a day, whatever the operator typed


def duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``10m`` or ``2h`` (raises ``ValueError``)."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    text = text.strip().lower()
    scale = units.get(text[-1:])
    number = text[:-1] if scale is not None else text
    seconds = float(number) * (scale or 1.0)
    if not 0 < seconds <= MAX_GAME_DAY:
        raise ValueError(f"must be between 0 and {MAX_GAME_DAY:g} seconds (24h), got {text!r}")
    return seconds


def chaos(
    registry: Registry,
    name: str | None,
    *,
    kind: str = "status",
    rate: float = 0.05,
    seconds: float = 600.0,
    status: int = 503,
    retry_after: float | None = None,
    fault_seconds: float = 0.5,
    off: bool = False,
) -> Output:
    """Start (or, with ``off``, end) a game day: inject one fault into ``name``'s calls in every process sharing the
    state that allows chaos, for ``seconds``; Redis's clock ends it even if nobody runs ``--off``. Exit 2 for a bad
    fault or without a fleet, 3 when the fleet's state backend does not answer (nothing changed)."""
    from ._chaos import fault
    from ._errors import ConfigError
    from ._state.switches import FleetSwitches

    if name is not None and name not in registry:
        return _error(f"unknown outbound service {name!r}")
    if (refusal := _fleet_refusal(registry, name, "chaos")) is not None:
        return refusal
    switches = FleetSwitches(registry.config.state)
    try:
        if off:
            switches.clear_chaos(name, [service.name for service in registry])
            return Output(f"{name or 'every service'}: fault injection ended in every process sharing this state")
        if name is None:
            return _error("`outbound chaos` needs a service NAME (or --off to end every game day)")
        try:
            injected = fault(kind, rate, status=status, retry_after=retry_after, seconds=fault_seconds)
        except ConfigError as error:
            return _error(str(error).replace("chaos.faults[0].", "--").replace("service 's': ", ""))
        switches.set_chaos(name, [injected], seconds)
    finally:
        switches.close()
    return Output(
        _wrap(
            f"{name}: injecting {kind} faults into {rate:g} of its calls for {seconds:g}s, in every process sharing "
            "this state that allows chaos (OUTBOUND_CHAOS=1 or chaos.allow); it ends by itself (or: outbound chaos "
            "--off)"
        )
    )


def enforce(registry: Registry, name: str, *, off: bool = False) -> Output:
    """Make ``name``'s observe-only protections (``enforce: false``) enforce in every process, without a restart;
    ``off``: back to what the settings say."""
    from ._state.switches import FleetSwitches

    if name not in registry:
        return _error(f"unknown outbound service {name!r}")
    if (refusal := _fleet_refusal(registry, name, "enforce")) is not None:
        return refusal
    switches = FleetSwitches(registry.config.state)
    try:
        switches.set_enforce(name, not off)
    finally:
        switches.close()
    if off:
        return Output(f"{name}: its protections follow the settings again (enforce: false observes) in every process")
    return Output(f"{name}: its observe-only protections now enforce in every process sharing this state")


def reset(registry: Registry, name: str | None = None) -> Output:
    """Close the breaker(s) and clear the counts for the fleet (``Registry.reset``); exit 3, changing nothing, when
    the fleet's state backend does not answer."""
    if (refusal := _fleet_refusal(registry, name, "reset")) is not None:
        return refusal
    registry.reset(name)
    return Output(f"{name or 'every service'}: breaker closed and counts cleared in every process sharing this state")


def _fleet_refusal(registry: Registry, name: str | None, action: str) -> Output | None:
    """Why ``outbound ACTION`` cannot reach the fleet from here, or ``None``."""
    return _needs_fleet(registry, action) or _needs_reachable_fleet(registry, name, action)


def _needs_fleet(registry: Registry, action: str) -> Output | None:
    # Run from a shell, this process is a new one: acting on its own breakers would change nothing that serves.
    if registry.config.state.backend == "redis":
        return None
    return _error(
        f"`outbound {action}` acts on the running processes through a shared state backend, and these settings "
        "have none (state.backend is 'memory'): a command run from a shell would only change its own new process. "
        'Set OUTBOUND["state"] = {"backend": "redis", "url": ...}, or call registry.%s() in the app.' % action
    )


def _needs_reachable_fleet(registry: Registry, name: str | None, action: str) -> Output | None:
    # Run from a shell, this process ends right after the command: a change the fleet did not receive now is lost.
    backend = registry.report(service=name).state_backend
    if backend is None or backend.status == "ok":
        return None
    cause = f" ({backend.last_error})" if backend.last_error else ""
    text = (
        f"Error: the fleet's state backend ({backend.backend}) does not answer{cause}, so `outbound {action}` "
        "changed nothing. Try again when it answers; an app can still call registry.%s(), which the fleet "
        "receives when the backend is back." % action
    )
    return Output(_wrap(text), FLEET_UNREACHABLE_EXIT_CODE, error=True)


def _with_scope(report: HealthReport, scope: str) -> str:
    # Above the closing "overall:" line, which stays last (scripts read it).
    lines = render_status(report).splitlines()
    return "\n".join([*lines[:-1], _wrap(scope), lines[-1]])


def _wrap(text: str) -> str:
    return textwrap.fill(text, _WIDTH, subsequent_indent="  ", break_on_hyphens=False)


def _scope_line(report: HealthReport, source: str | None = None) -> str:
    backend = report.state_backend
    if backend is not None and backend.status != "ok":
        # Cut off from the fleet: the figures are one process's own, whatever a fleet shows elsewhere.
        who = f"the process that answered at {source}" if source is not None else "this process"
        fresh = "" if source is not None else " (a new one: every breaker closed, nothing called)"
        cause = f": {backend.last_error}" if backend.last_error else ""
        story = f"; {backend.story()}" if backend.story() else ""
        return (
            f"scope: {who} only{fresh}. The fleet's shared state could not be read (state backend "
            f"{backend.backend} {backend.status}{cause}{story}); exit code {FLEET_UNREACHABLE_EXIT_CODE}"
        )
    if source is not None:
        where = f"read from {source}"
    elif report.scope == "process":
        return (
            "scope: this process only — a new one, so every breaker is closed and nothing was called; with a shared "
            "state backend (state.backend: redis) this shows the fleet, and `status --url URL --token TOKEN` reads "
            "a running server's /health/outbound"
        )
    else:
        where = "from the fleet's shared state"
    if report.scope == "fleet":
        state = f"; state backend {backend.backend} {backend.status}" if backend is not None else ""
        story = backend.story() if backend is not None else ""
        state += f"; {story}" if story else ""
        return f"scope: fleet ({report.workers or 0} workers{state}), {where}"
    return f"scope: one process, {where}"


def _report(data: dict[str, Any]) -> HealthReport:
    # The JSON of HealthReport.as_dict(), typed again.
    services = {name: _service(name, service) for name, service in data["services"].items()}
    backend = data.get("state_backend")
    return HealthReport(
        status=data["status"],
        services=services,
        scope=data.get("scope", "process"),
        workers=data.get("workers"),
        state_backend=StateBackendHealth.from_dict(backend) if backend else None,
    )


def _service(name: str, data: dict[str, Any]) -> ServiceHealth:
    breaker, pool, stats, last = data["breaker"], data["pool"], data["stats"], data.get("last_error")
    opened_at = datetime.fromisoformat(breaker["opened_at"]) if breaker.get("opened_at") else None
    opened_by = _last_error(breaker["opened_by"]) if breaker.get("opened_by") else None
    return ServiceHealth(
        name=name,
        status=data["status"],
        client=data["client"],
        base_url=data["base_url"],
        critical=data["critical"],
        breaker=BreakerSnapshot(**{**breaker, "opened_at": opened_at, "opened_by": opened_by}),
        pool=PoolSnapshot(**pool),
        stats=StatsSnapshot.from_dict(stats),
        last_error=_last_error(last) if last else None,
        bulkhead=BulkheadSnapshot(**data["bulkhead"]) if "bulkhead" in data else None,
        rate_limit=RateLimitSnapshot(**data["rate_limit"]) if "rate_limit" in data else None,
        paused_for=data.get("paused_for"),
        endpoints=data.get("endpoints"),
        observing=tuple(str(p) for p in data.get("observing") or ()),
        would_reject={str(k): int(v) for k, v in data["would_reject"].items()} if "would_reject" in data else None,
        would_reject_last_hour=data.get("would_reject_last_hour"),
        chaos=data["chaos"] if isinstance(data.get("chaos"), dict) else None,
        cache=data.get("cache"),
        history=HistorySnapshot.from_dict(data["history"]) if data.get("history") else None,
    )


def _last_error(data: dict[str, Any]) -> LastError:
    return LastError.from_dict(data)


# -- the tables and exit codes ---------------------------------------------------------------------------------

# -- CLI --------------------------------------------------------------------------------------------------------------


def status_exit_code(report: HealthReport | Mapping[str, Any]) -> int:
    """0 when ``ok`` or ``degraded`` (or ``failing``, for one service's status), 1 when ``down``; 3
    (``FLEET_UNREACHABLE_EXIT_CODE``) whatever the status when the report's state backend was unreachable: it is
    then one process's view, not the fleet's."""
    if isinstance(report, HealthReport):
        status, backend = report.status, report.state_backend.status if report.state_backend else None
    else:
        found = report.get("state_backend")
        status, backend = report["status"], found.get("status") if isinstance(found, Mapping) else None
    if backend == "unreachable":
        return FLEET_UNREACHABLE_EXIT_CODE
    return STATUS_EXIT_CODES[status]


# Columns render_status keeps its lines within: a terminal's width, so nothing wraps mid-word.
_STATUS_WIDTH = 100


def render_status(report: HealthReport) -> str:
    """A plain-text table of a report, as ``outbound status`` prints it (``LAST 60S``: of the calls that finished in
    the last minute, those that failed).

    The table names the last error's class; below it, each service's last error and the failure that opened its
    breaker are written out in full, wrapped to 100 columns, so a refusal never hides its cause.
    """
    rows = [
        (
            "SERVICE",
            "CLIENT",
            "STATUS",
            "BREAKER",
            "POOL",
            "REQUESTS",
            "ERRORS",
            f"LAST {health.RECENT_SECONDS:g}S",
            "LAST ERROR",
        )
    ]
    details: list[str] = []
    for name, service in sorted(report.services.items()):
        breaker = service.breaker.state
        if service.breaker.retry_in is not None:
            breaker += f" ({service.breaker.retry_in:.0f}s)"
        last, recent, opened_by = service.last_error, service.stats.recent, service.breaker.opened_by
        rows.append(
            (
                name + (" *" if service.critical else ""),
                service.client,
                service.status,
                breaker,
                f"{service.pool.in_use}/{service.pool.max_connections}",
                str(service.stats.requests),
                str(service.stats.errors),
                f"{recent.errors}/{recent.calls} failed" if recent.calls else "-",
                last.type if last else "-",
            )
        )
        if last is not None:
            details.append(_wrapped(f"{name}: last error {_error_text(last)}"))
        if opened_by is not None:
            details.append(_wrapped(f"{name}: breaker opened by {_error_text(opened_by)}"))
        for url, endpoint in (service.endpoints or {}).items():
            left = endpoint.get("ejected_for")
            state = f"ejected for {left:.0f}s" if isinstance(left, int | float) else endpoint.get("state")
            details.append(
                _wrapped(
                    f"{name}: endpoint {url} {state}, {endpoint.get('in_flight')} in flight, "
                    f"{endpoint.get('errors')}/{endpoint.get('calls')} failed"
                )
            )
        if service.observing:
            would = sum((service.would_reject or {}).values())
            hour = service.would_reject_last_hour
            details.append(
                _wrapped(
                    f"{name}: observe-only ({', '.join(service.observing)}): would have refused {would} "
                    f"call{'' if would == 1 else 's'} so far"
                    + (f" ({hour} in the last hour)" if hour is not None else "")
                    + f"; nothing was refused (outbound enforce {name})"
                )
            )
        if service.adaptive:
            details.append(_wrapped(f"{name}: adaptive: {_adaptive_text(service.adaptive)}"))
        chaos = service.chaos
        if chaos is not None and chaos.get("active"):
            kinds = ", ".join(f"{f['kind']} at {f['rate']:g}" for f in chaos.get("faults", ()))
            ends = chaos.get("ends_in")
            until = f", ends in {ends:.0f}s" if isinstance(ends, int | float) else ""
            details.append(_wrapped(f"{name}: FAULT INJECTION ON ({chaos.get('source')}: {kinds}{until})"))
    lines = _table(rows)
    if details:
        lines += ["", *details]
    lines.append(f"overall: {report.status}   (* critical)")
    return "\n".join(lines)


def _adaptive_text(learned: Mapping[str, Mapping[str, Any]]) -> str:
    """What the adaptive stages learned, in words: the limit and in flight, the throttle's refusal share, the tokens."""
    parts = []
    limit = learned.get("concurrency")
    if limit is not None:
        share = f" (this worker's share {limit.get('share')})" if "share" in limit else ""
        parts.append(f"limit {limit.get('limit')}{share}, {limit.get('in_flight')} in flight")
    throttle = learned.get("throttle")
    if throttle is not None:
        parts.append(f"throttle refuses {100 * float(throttle.get('probability') or 0):.0f}% of first attempts")
    tokens = learned.get("retry_tokens")
    if tokens is not None:
        parts.append(f"retry tokens {tokens.get('tokens')}/{tokens.get('max')}")
    return "; ".join(parts)


def _error_text(error: LastError) -> str:
    at = error.at.astimezone(timezone.utc) if error.at.tzinfo is not None else error.at
    return f"{error.type}: {error.message} (at {at:%Y-%m-%d %H:%M:%S} UTC)"


def _wrapped(text: str) -> str:
    # Long words (a URL) are broken too: no line of the output runs past the width.
    return textwrap.fill(text, _STATUS_WIDTH, subsequent_indent="    ", break_on_hyphens=False)


def render_probe(results: Iterable[ProbeResult]) -> str:
    """A plain-text table of probe results, as ``outbound probe`` prints it."""
    rows = [("SERVICE", "RESULT", "STATUS", "LATENCY", "URL / ERROR")]
    for result in results:
        verdict = "skipped" if result.ok is None else "ok" if result.ok else "FAILED"
        latency = f"{result.latency_ms:.1f} ms" if result.latency_ms is not None else "-"
        detail = result.error or result.url or "no 'probe' path configured"
        rows.append(
            (
                result.service + (" *" if result.critical else ""),
                verdict,
                str(result.status or "-"),
                latency,
                detail,
            )
        )
    return "\n".join(_table(rows))


def probe_exit_code(results: Iterable[ProbeResult]) -> int:
    """1 when a critical service's probe failed, else 0."""
    return 1 if any(r.critical and r.ok is False for r in results) else 0


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
