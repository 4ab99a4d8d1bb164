"""Health: typed snapshots and the status rules.

``Registry.report()`` returns a ``HealthReport`` of ``ServiceHealth`` snapshots (breaker, pool, stats, last error);
``as_dict()`` is the JSON ``/health/outbound`` and ``registry.health()`` give. The status words (``Status``) and both
status rules live here: ``service_status`` (one upstream) and ``overall_status`` (the report).

What is done with a report lives where it is used: answering an HTTP request for ``/health/outbound`` (``respond``,
the access rules, the status page) in ``outbound.serving``, the command-line tables and exit codes in
``outbound.cli``. Those names are still importable from here (``outbound.health.respond``, ``render_status``...).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, get_args

__all__ = [
    "COUNTERS",
    "FAILING_ERROR_RATE",
    "FAILING_MINIMUM_CALLS",
    "RECENT_SECONDS",
    "STATUSES",
    "BackendOutage",
    "BreakerSnapshot",
    "BulkheadSnapshot",
    "CallCounts",
    "HealthReport",
    "HistoryMark",
    "HistorySnapshot",
    "LastError",
    "LatencySnapshot",
    "PoolSnapshot",
    "PrimaryChange",
    "ProbeResult",
    "RateLimitSnapshot",
    "RecentCalls",
    "ServiceHealth",
    "StateBackendHealth",
    "StatsSnapshot",
    "Status",
    "build_report",
    "overall_status",
    "service_status",
    "worst",
]

Status = Literal["ok", "degraded", "failing", "down"]
"""A service's status, and the report's (which is never ``failing``: a failing service makes it ``degraded``)."""
STATUSES: tuple[Status, ...] = get_args(Status)
"""Every status, from the mildest to the worst."""
"""``outbound status`` could not read the fleet's shared state: what it shows is one process's own view."""

# The "failing" rule: of the calls that finished in the last RECENT_SECONDS, at least FAILING_MINIMUM_CALLS, and at
# least FAILING_ERROR_RATE of them ended in an error. A minute because a report answers "how is it now": long
# enough that a blip of two errors in a busy second is not an outage, short enough that an outage shows within a
# minute and a recovery clears within one, whatever the traffic (a window of the last N calls would keep a quiet
# service "failing" for hours after its last failed call). Five calls so that one or two failures of a quiet service
# decide nothing. Half, as a rate breaker's default (Resilience4j's 50 %): a service that fails every other call is
# not "ok" to anyone reading the report, and one failing a few percent is the error counters' business, not the
# status's.
RECENT_SECONDS = 60.0
"""Seconds of recent calls the ``failing`` status is judged on."""
FAILING_MINIMUM_CALLS = 5
"""Finished calls the recent window must hold before a service can be ``failing``."""
FAILING_ERROR_RATE = 0.5
"""The share of recent calls ending in an error from which a service is ``failing``."""


@dataclass(frozen=True, slots=True)
class LastError:
    """The last failed call of a service: the error's class name, its (redacted) message and when it happened."""

    type: str
    message: str
    at: datetime

    def as_dict(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message, "at": self.at.isoformat()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LastError:
        """``as_dict()`` read back; ``KeyError``, ``TypeError`` or ``ValueError`` when it is not one."""
        return cls(type=data["type"], message=data["message"], at=datetime.fromisoformat(data["at"]))


@dataclass(frozen=True, slots=True)
class LatencySnapshot:
    """Latency percentiles in milliseconds over the recent calls (``None`` before the first call)."""

    p50: float | None = None
    p95: float | None = None
    p99: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return {"p50": self.p50, "p95": self.p95, "p99": self.p99}


@dataclass(frozen=True, slots=True, kw_only=True)
class RecentCalls:
    """The calls that finished in the last ``seconds`` (calls interrupted by their caller or by ``close()`` left
    out): how many, and how many ended in an error (``StatsSnapshot.errors``'s kind of error)."""

    seconds: float = RECENT_SECONDS
    calls: int = 0
    errors: int = 0

    @property
    def error_rate(self) -> float | None:
        """``errors / calls``, from 0 to 1; ``None`` without calls."""
        return self.errors / self.calls if self.calls else None

    @property
    def failing(self) -> bool:
        """Whether these calls make the service ``failing`` (the rule of ``FAILING_MINIMUM_CALLS`` and
        ``FAILING_ERROR_RATE``)."""
        return self.calls >= FAILING_MINIMUM_CALLS and self.errors >= FAILING_ERROR_RATE * self.calls

    def as_dict(self) -> dict[str, Any]:
        rate = self.error_rate
        return {
            "seconds": self.seconds,
            "calls": self.calls,
            "errors": self.errors,
            "error_rate": round(rate, 4) if rate is not None else None,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class CallCounts:
    """Counters since start (or the last reset): calls, calls that ended in an error, extra attempts, calls refused
    by the breaker, calls that found no free connection; ``rejected`` counts other refusals by reason; ``recent``
    the calls of the last minute, which the ``failing`` status is judged on. What every stats shape holds: the
    report's ``StatsSnapshot`` and the record a fleet shares (``_stats.StatsRecord``)."""

    requests: int = 0
    errors: int = 0
    retries: int = 0
    short_circuited: int = 0
    pool_timeouts: int = 0
    rejected: Mapping[str, int] = field(default_factory=dict)
    recent: RecentCalls = field(default_factory=RecentCalls)


# The plain counters of ``CallCounts``, in the order reports show them.
COUNTERS: tuple[str, ...] = ("requests", "errors", "retries", "short_circuited", "pool_timeouts")


@dataclass(frozen=True, slots=True, kw_only=True)
class StatsSnapshot(CallCounts):
    """A service's ``CallCounts`` and the latency percentiles of its recent calls, as a report shows them."""

    latency_ms: LatencySnapshot = field(default_factory=LatencySnapshot)

    def as_dict(self) -> dict[str, Any]:
        counters: dict[str, Any] = {name: getattr(self, name) for name in COUNTERS}
        if self.rejected:
            counters["rejected"] = dict(self.rejected)
        counters["recent"] = self.recent.as_dict()
        counters["latency_ms"] = self.latency_ms.as_dict()
        return counters

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StatsSnapshot:
        """``as_dict()`` read back (a server's report, read by ``outbound status --url``).

        Raises:
            KeyError, TypeError, ValueError: it is not such a dict.
        """
        recent = data.get("recent")
        return cls(
            **{name: data[name] for name in COUNTERS},
            rejected=dict(data.get("rejected", {})),
            recent=RecentCalls(seconds=recent["seconds"], calls=recent["calls"], errors=recent["errors"])
            if recent
            else RecentCalls(),
            latency_ms=LatencySnapshot(**data["latency_ms"]),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerSnapshot:
    """``state`` is what the next call meets (an open breaker whose trial is due reads ``half-open``);
    ``retry_in`` the seconds until an open breaker admits a trial; ``opened_by`` the failed attempt that opened it
    (``None`` while closed, and for an isolation or an opening by slow calls).

    ``mode`` is the trip rule. For ``"rate"`` the window's ``calls`` and its current ``failure_rate`` and
    ``slow_call_rate`` (0 to 1; ``None`` before the window holds a call, and the slow rate when slowness is not judged)
    are shown too; ``failures`` is then the failed calls in the window.
    """

    state: str
    failures: int
    opened_at: datetime | None
    retry_in: float | None
    mode: str = "consecutive"
    calls: int | None = None
    failure_rate: float | None = None
    slow_call_rate: float | None = None
    opened_by: LastError | None = None

    def as_dict(self) -> dict[str, Any]:
        breaker: dict[str, Any] = {
            "state": self.state,
            "mode": self.mode,
            "failures": self.failures,
            "opened_at": self.opened_at.isoformat() if self.opened_at else None,
            "retry_in": round(self.retry_in, 3) if self.retry_in is not None else None,
        }
        if self.opened_by is not None:  # only while a failure holds it open: a closed breaker's report stays short
            breaker["opened_by"] = self.opened_by.as_dict()
        if self.mode == "rate":
            breaker["calls"] = self.calls
            breaker["failure_rate"] = self.failure_rate
            breaker["slow_call_rate"] = self.slow_call_rate
        return breaker


@dataclass(frozen=True, slots=True, kw_only=True)
class BulkheadSnapshot:
    """The service's bulkhead: calls in flight, against ``max_in_flight``, and calls waiting for room."""

    max_in_flight: int
    in_flight: int = 0
    waiting: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"max_in_flight": self.max_in_flight, "in_flight": self.in_flight, "waiting": self.waiting}


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitSnapshot:
    """The service's client-side rate limit: ``rate`` as configured, its ``scope``, and the permits left in the
    current window (``None`` for a fleet limit: reading it would ask Redis)."""

    rate: str
    scope: str
    remaining: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"rate": self.rate, "scope": self.scope, "remaining": self.remaining}


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolSnapshot:
    """Connections of the service's clients now: busy, kept idle, and calls waiting for one."""

    max_connections: int
    in_use: int = 0
    idle: int = 0
    waiting: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "max_connections": self.max_connections,
            "in_use": self.in_use,
            "idle": self.idle,
            "waiting": self.waiting,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryMark:
    """Something that happened on a service's time axis: a breaker transition (``kind`` ``"breaker"``, ``state`` the
    state it went to) or a pause the upstream asked for (``kind`` ``"pause"``, ``until`` its end)."""

    at: datetime
    kind: Literal["breaker", "pause"]
    state: str = ""
    text: str = ""
    until: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        mark: dict[str, Any] = {"at": self.at.isoformat(), "kind": self.kind}
        if self.kind == "breaker":
            mark["state"], mark["text"] = self.state, self.text
        if self.until is not None:
            mark["until"] = self.until.isoformat()
        return mark

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HistoryMark:
        """``as_dict()`` read back; ``KeyError``, ``TypeError`` or ``ValueError`` when it is not one."""
        kind = data["kind"]
        if kind not in ("breaker", "pause"):
            raise ValueError(f"unknown mark kind {kind!r}")
        until = data.get("until")
        return cls(
            at=datetime.fromisoformat(data["at"]),
            kind=kind,
            state=str(data.get("state", "")),
            text=str(data.get("text", "")),
            until=datetime.fromisoformat(until) if until else None,
        )


# The series of a history, each one value per bucket, oldest first.
_HISTORY_SERIES: tuple[str, ...] = ("calls", "errors", "refused", "retries", "stale", "p50_ms", "p95_ms", "p99_ms")


@dataclass(frozen=True, slots=True, kw_only=True)
class HistorySnapshot:
    """A service's recent history: one value per ``interval`` seconds in each series, oldest first, the last bucket
    the one still counting (it ends at ``end``); and the marks of the same window.

    ``calls`` are the calls that finished (as ``RecentCalls`` counts them), ``errors`` those of them that ended in an
    error, ``refused`` the calls and retries refused before sending, ``retries`` the retries scheduled, ``stale`` the
    calls the cache answered with a stored response in place of their error (stale-if-error: each is also one of
    ``errors``); ``p50_ms``, ``p95_ms`` and ``p99_ms`` the latency percentiles of the bucket's calls (``None`` without
    calls).
    """

    interval: float
    end: datetime
    calls: tuple[int, ...]
    errors: tuple[int, ...]
    refused: tuple[int, ...]
    retries: tuple[int, ...]
    stale: tuple[int, ...]
    p50_ms: tuple[float | None, ...]
    p95_ms: tuple[float | None, ...]
    p99_ms: tuple[float | None, ...]
    marks: tuple[HistoryMark, ...] = ()
    closed_json: tuple[str, ...] | None = field(default=None, repr=False, compare=False)
    """The JSON text of each series (in ``as_dict()``'s order) without its last value, when the history that made
    this snapshot had it at hand (a cache of the buckets that are over: ``as_json`` then encodes one value per
    series); ``None``: ``as_json`` encodes the whole."""

    def as_dict(self) -> dict[str, Any]:
        history: dict[str, Any] = {"interval": self.interval, "end": self.end.isoformat()}
        for name in _HISTORY_SERIES:
            history[name] = getattr(self, name)  # a tuple: JSON writes it as the array it is, without a copy
        history["marks"] = [mark.as_dict() for mark in self.marks]
        return history

    def as_json(self) -> str:
        """``json.dumps(self.as_dict())``, the same text, from ``closed_json`` when there is one (the values of a
        series are ints, finite floats and ``None``: ``repr`` writes the first two as JSON does)."""
        closed = self.closed_json
        if closed is None or len(closed) != len(_HISTORY_SERIES):
            return json.dumps(self.as_dict())
        parts = ['{"interval": ', repr(self.interval), ', "end": "', self.end.isoformat(), '"']
        for name, text in zip(_HISTORY_SERIES, closed, strict=True):
            last = getattr(self, name)[-1]
            parts += [', "', name, '": [', text, ", " if text else "", "null" if last is None else repr(last), "]"]
        parts += [', "marks": ', json.dumps([mark.as_dict() for mark in self.marks]) if self.marks else "[]", "}"]
        return "".join(parts)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HistorySnapshot:
        """``as_dict()`` read back (``outbound status --watch --url``); ``KeyError``, ``TypeError`` or
        ``ValueError`` when it is not one. A server that counts no stale answers yet sends no ``stale``: zeros."""
        if "stale" not in data and isinstance(data.get("calls"), list | tuple):
            data = {**data, "stale": [0] * len(data["calls"])}
        series = {name: tuple(data[name]) for name in _HISTORY_SERIES}
        if len({len(values) for values in series.values()}) != 1:
            raise ValueError("the series of a history differ in length")
        return cls(
            interval=float(data["interval"]),
            end=datetime.fromisoformat(data["end"]),
            marks=tuple(HistoryMark.from_dict(mark) for mark in data.get("marks", ())),
            **series,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceHealth:
    """One service's part of the report."""

    name: str
    status: Status
    client: str
    base_url: str
    critical: bool
    breaker: BreakerSnapshot
    pool: PoolSnapshot
    stats: StatsSnapshot
    last_error: LastError | None
    bulkhead: BulkheadSnapshot | None = None
    rate_limit: RateLimitSnapshot | None = None
    paused_for: float | None = None
    """Seconds left of a pause the upstream asked for (a 429 or 503 with ``Retry-After``); ``None``: not paused."""
    endpoints: Mapping[str, Mapping[str, Any]] | None = None
    """Per endpoint URL of a service with several (``_endpoints.py``): state, in flight, calls, errors, failures in
    a row, ejections and ``ejected_for`` (seconds left of its ejection); ``None``: one ``base_url``. This process's."""
    observing: tuple[str, ...] = ()
    """The protections that observe only (``enforce: false``): they decide and count, and refuse nothing."""
    would_reject: Mapping[str, int] | None = None
    """What the observing protections would have refused (or delayed) so far, by ``protection:reason``."""
    would_reject_last_hour: int | None = None
    """How many of those came in the last hour."""
    chaos: Mapping[str, Any] | None = None
    """The fault injection in force (``active``, ``source``, ``faults``, ``ends_in``, ``injected``); ``None``: no
    fault layer."""
    cache: Mapping[str, Any] | None = None
    """The cache's storage and counts (hits, misses, stale, ...) when the service has a cache or a fallback."""
    history: HistorySnapshot | None = None
    """The service's recent history, when ``health.history`` keeps one and the report was asked for it."""
    adaptive: Mapping[str, Mapping[str, Any]] | None = None
    """What the adaptive protections learned (issue 32), those configured only: ``concurrency`` (the limit, attempts
    in flight and waiting; with ``scope: "fleet"`` also this worker's ``share`` and the fleet's ``workers``),
    ``throttle`` (requests and accepts in its window, the share of first attempts it refuses now, sheddable and
    critical), ``retry_tokens`` (tokens left of ``max``, and whether retries may go out). This process's view."""

    def as_dict(self) -> dict[str, Any]:
        health = self._as_dict()
        if self.history is not None:
            health["history"] = self.history.as_dict()
        return health

    def as_json(self) -> str:
        """``json.dumps(self.as_dict())``, the same text, with the history encoded by ``HistorySnapshot.as_json``
        (the last key: spliced in before the closing brace)."""
        if self.history is None:
            return json.dumps(self._as_dict())
        return f'{json.dumps(self._as_dict())[:-1]}, "history": {self.history.as_json()}}}'

    def _as_dict(self) -> dict[str, Any]:
        # Everything but the history, which is the last key when there is one (as_json relies on it).
        health: dict[str, Any] = {
            "status": self.status,
            "client": self.client,
            "base_url": self.base_url,
            "critical": self.critical,
            "breaker": self.breaker.as_dict(),
            "pool": self.pool.as_dict(),
        }
        # Shown only when configured (a pause only while one lasts), so a plain service's report stays short.
        if self.bulkhead is not None:
            health["bulkhead"] = self.bulkhead.as_dict()
        if self.rate_limit is not None:
            health["rate_limit"] = self.rate_limit.as_dict()
        if self.paused_for is not None:
            health["paused_for"] = round(self.paused_for, 3)
        if self.endpoints is not None:
            health["endpoints"] = {url: dict(row) for url, row in self.endpoints.items()}
        if self.observing:
            health["observing"] = list(self.observing)
            health["would_reject"] = dict(self.would_reject or {})
            health["would_reject_last_hour"] = self.would_reject_last_hour
        if self.chaos is not None:
            health["chaos"] = dict(self.chaos)
        if self.cache is not None:
            health["cache"] = dict(self.cache)
        if self.adaptive is not None:
            health["adaptive"] = {name: dict(values) for name, values in self.adaptive.items()}
        health["stats"] = self.stats.as_dict()
        health["last_error"] = self.last_error.as_dict() if self.last_error else None
        return health


def _clock(at: datetime) -> str:
    # A time of day is enough in a one-line story (the JSON has the full timestamps); naive ones as they are.
    return at.astimezone(timezone.utc).strftime("%H:%M:%S UTC") if at.tzinfo is not None else at.isoformat()


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendOutage:
    """A time this process could not reach the fleet's state backend: from its first failed command to the first
    that answered again (``recovered_at`` ``None``: it goes on), and the error that started it."""

    unreachable_from: datetime
    recovered_at: datetime | None = None
    error: str | None = None

    def seconds(self, now: datetime | None = None) -> float:
        """How long it lasted (so far, while it goes on)."""
        end = self.recovered_at or now or datetime.now(self.unreachable_from.tzinfo)
        return max(0.0, (end - self.unreachable_from).total_seconds())

    def as_dict(self) -> dict[str, Any]:
        return {
            "unreachable_from": self.unreachable_from.isoformat(),
            "recovered_at": self.recovered_at.isoformat() if self.recovered_at else None,
            "seconds": round(self.seconds(), 3),
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BackendOutage:
        recovered = data.get("recovered_at")
        return cls(
            unreachable_from=datetime.fromisoformat(data["unreachable_from"]),
            recovered_at=datetime.fromisoformat(recovered) if recovered else None,
            error=data.get("error"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PrimaryChange:
    """The Redis serving the fleet's keys moved (a Sentinel failover, a cluster master lost): ``old`` and ``new``
    are ``host:port`` addresses (never credentials), ``at`` when this process first talked to ``new``."""

    old: str
    new: str
    at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {"from": self.old, "to": self.new, "at": self.at.isoformat()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrimaryChange:
        return cls(old=data["from"], new=data["to"], at=datetime.fromisoformat(data["at"]))


@dataclass(frozen=True, slots=True, kw_only=True)
class StateBackendHealth:
    """The fleet's state backend as this process sees it: ``status`` is ``"ok"`` or ``"unreachable"``, ``since``
    when it became so; ``outages`` counts the times it became unreachable, ``last_outage`` is the latest (going on,
    or over); ``primary`` is the address serving the fleet's keys behind Sentinel or on a cluster (``None`` for one
    Redis, which the settings name), and ``primary_changed`` its latest move. What a failover did, told by health."""

    backend: str
    status: Literal["ok", "unreachable"]
    last_error: str | None = None
    since: datetime | None = None
    outages: int = 0
    last_outage: BackendOutage | None = None
    primary: str | None = None
    primary_changed: PrimaryChange | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "status": self.status,
            "last_error": self.last_error,
            "since": self.since.isoformat() if self.since else None,
            "outages": self.outages,
            "last_outage": self.last_outage.as_dict() if self.last_outage else None,
            "primary": self.primary,
            "primary_changed": self.primary_changed.as_dict() if self.primary_changed else None,
        }

    def story(self) -> str:
        """What happened, in a line for the status page and ``outbound status``: the latest outage and the latest
        move of the primary (empty when there was neither)."""
        parts = []
        outage = self.last_outage
        if outage is not None:
            end = f"until {_clock(outage.recovered_at)}" if outage.recovered_at else "going on"
            count = f" (outage {self.outages})" if self.outages > 1 else ""
            parts.append(f"last outage{count}: {outage.seconds():.1f} s from {_clock(outage.unreachable_from)} {end}")
        if self.primary_changed is not None:
            change = self.primary_changed
            parts.append(f"primary moved from {change.old} to {change.new} at {_clock(change.at)}")
        elif self.primary is not None:
            parts.append(f"primary {self.primary}")
        return "; ".join(parts)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StateBackendHealth:
        """The JSON of ``as_dict`` typed again (a report read from a running server)."""
        since, outage, changed = data.get("since"), data.get("last_outage"), data.get("primary_changed")
        return cls(
            backend=data["backend"],
            status=data["status"],
            last_error=data.get("last_error"),
            since=datetime.fromisoformat(since) if since else None,
            outages=int(data.get("outages") or 0),
            last_outage=BackendOutage.from_dict(outage) if outage else None,
            primary=data.get("primary"),
            primary_changed=PrimaryChange.from_dict(changed) if changed else None,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthReport:
    """The whole report: the overall status and each service's health, in settings order.

    ``scope`` says whose state it is: ``"process"`` (this process alone) or ``"fleet"`` (every process sharing the
    state backend); with a fleet, ``workers`` counts the live processes. ``state_backend`` says how this process
    reaches a shared backend when the settings name one: ``"unreachable"`` with ``scope`` ``"process"`` means the
    fleet's state could not be read, and the figures are this process's own.
    """

    status: Status
    services: Mapping[str, ServiceHealth]
    scope: Literal["process", "fleet"] = "process"
    workers: int | None = None
    state_backend: StateBackendHealth | None = None

    def as_dict(self, *, details: bool = True) -> dict[str, Any]:
        """The JSON-ready report; ``details=False`` gives ``{"status": ...}`` only."""
        if not details:
            return {"status": self.status}
        report = self._head()
        report["services"] = {name: s.as_dict() for name, s in self.services.items()}
        return report

    def as_json(self, *, details: bool = True) -> str:
        """``json.dumps(self.as_dict(details=details))``, the same text, built service by service so that each
        history is encoded from what its buckets that are over already wrote (``HistorySnapshot.as_json``): the
        ``?history=1`` answer of fifty services costs a few joins per service, not 36,000 values encoded."""
        if not details or all(s.history is None for s in self.services.values()):
            return json.dumps(self.as_dict(details=details))
        services = ", ".join(f"{json.dumps(name)}: {s.as_json()}" for name, s in self.services.items())
        return f'{json.dumps(self._head())[:-1]}, "services": {{{services}}}}}'

    def _head(self) -> dict[str, Any]:
        # The report but its services, which are its last key (as_json relies on it).
        report: dict[str, Any] = {"status": self.status, "scope": self.scope}
        if self.workers is not None:
            report["workers"] = self.workers
        if self.state_backend is not None:
            report["state_backend"] = self.state_backend.as_dict()
        return report


def service_status(
    breaker_state: str,
    pool: PoolSnapshot,
    *,
    bulkhead: BulkheadSnapshot | None = None,
    paused: bool = False,
    recent: RecentCalls | None = None,
) -> Status:
    """The worst that applies: ``down`` while the breaker refuses calls (open or isolated); ``failing`` while at
    least half of the last minute's calls (five or more) ended in an error, whatever the breaker says (a breaker
    may stay closed through that: slow timeouts, a rate breaker short of ``minimum_calls``, errors that are not
    breaker failures, failures between successes); ``degraded`` while the breaker is half-open, calls wait for a
    connection or for the bulkhead, or the upstream asked for a pause; else ``ok``."""
    if breaker_state in ("open", "isolated"):
        return "down"
    if recent is not None and recent.failing:
        return "failing"
    if breaker_state == "half-open" or pool.waiting > 0 or paused:
        return "degraded"
    if bulkhead is not None and bulkhead.waiting > 0:
        return "degraded"
    return "ok"


def overall_status(services: Iterable[ServiceHealth]) -> Status:
    """``down`` only when a critical service is down (an open breaker elsewhere must not pull this instance out of
    its load balancer); ``degraded`` when any service is not ok (``failing`` included, critical or not: its calls
    fail, but this instance may still serve, and taking it out of rotation would not make them succeed); else
    ``ok``."""
    services = list(services)
    if any(s.status == "down" and s.critical for s in services):
        return "down"
    if any(s.status != "ok" for s in services):
        return "degraded"
    return "ok"


def build_report(services: Iterable[ServiceHealth]) -> HealthReport:
    services = list(services)
    return HealthReport(status=overall_status(services), services={s.name: s for s in services})


def worst(*statuses: Status) -> Status:
    """The worst of ``statuses`` (in the order of ``STATUSES``)."""
    return max(statuses, key=STATUSES.index)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One service's probe: ``ok`` is ``None`` when it has no ``probe`` path."""

    service: str
    critical: bool
    url: str | None
    ok: bool | None
    status: int | None = None
    latency_ms: float | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "critical": self.critical,
            "url": self.url,
            "ok": self.ok,
            "status": self.status,
            "latency_ms": self.latency_ms,
            "error": self.error,
        }


# Moved to where they are used; importable from here too, as they always were.
_MOVED = {
    **dict.fromkeys(
        ("HealthResponse", "Reporting", "bearer_token_matches", "http_status", "respond", "show_details"),
        "outbound.serving",
    ),
    **dict.fromkeys(
        (
            "CONFIG_ERROR_EXIT_CODE",
            "FLEET_UNREACHABLE_EXIT_CODE",
            "STATUS_EXIT_CODES",
            "probe_exit_code",
            "render_probe",
            "render_status",
            "status_exit_code",
        ),
        "outbound.cli",
    ),
}


def __getattr__(name: str) -> Any:
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
