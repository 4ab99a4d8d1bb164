"""What a fleet reads back from Redis, validated: every message, breaker record, stats record and number in them.

Redis is shared ground: another version of this library, a person with ``redis-cli``, a bug or a torn write may
have put anything under the prefix. Nothing read from it is trusted. Each reader here returns a typed value, or
``None`` for a record to skip, and never raises; every number comes out bounded (seconds finite and at most
``MAX_SECONDS``, counts whole and at most ``MAX_COUNT``, times no later than the year 9999, with a UTC offset) and
every text cut to a length a report can show. A skipped record is logged once per kind of record (``Complaints``),
not once per read: the fleet re-reads the same bad key every ``sync_interval``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, NoReturn

from .._breaker import CLOSED, ISOLATED, OPEN
from .._stats import LATENCY_BUCKETS_MS
from ..health import LastError

MAX_COUNT = 2**53 - 1
"""The largest counter a record may hold: JSON's exact integers, so a sum over a fleet still prints exactly."""
MAX_SECONDS = 366 * 86_400.0
"""The longest time (a year) a record may ask for; a breaker caps an opening further, a pause by its own cap."""
MAX_TEXT = 1_000
"""Characters kept of a reason or an error message read from the fleet."""
MAX_NAME = 200
"""Characters allowed in a worker id, an error class name, a rejection reason."""
MAX_RECORD_BYTES = 1_000_000
"""A message or stats record longer than this is skipped unread (the view's script drops it on Redis's side)."""
MAX_REASONS = 32
"""Rejection reasons kept per stats record."""
_LAST_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: later is not a time a process wrote

_WORKER = re.compile(r"\S{1,180}:\d{1,10}:[0-9a-f]{6}")  # host:pid:random, as RedisState names itself
_COUNTERS = ("requests", "errors", "retries", "short_circuited", "pool_timeouts")
_STATES = frozenset({OPEN, ISOLATED, CLOSED})


class Complaints:
    """Logs a skipped record once per ``where`` (a kind of record, per service where it has one), as a WARNING;
    later ones of the same kind at DEBUG. Bounded: ``where`` comes from a fixed vocabulary and the services."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, where: str, problem: str) -> None:
        with self._lock:
            first = where not in self._seen
            self._seen.add(where)
        self._logger.log(
            logging.WARNING if first else logging.DEBUG,
            "skipped %s from the fleet's Redis: %s (%s)",
            where,
            problem,
            "logged once; later ones at DEBUG" if first else "again",
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerRecord:
    """A service's breaker as the fleet holds it (``{p}:breaker:{s}``): ``until`` and ``opened`` in ms, Redis's
    clock (``until`` ``None``: an isolation without end)."""

    state: str
    until: int | None
    opened: int | None
    reason: str
    cause: LastError | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceStats:
    """One worker's published stats of one service; ``epoch`` the last fleet reset it had applied (0: none)."""

    requests: int
    errors: int
    retries: int
    short_circuited: int
    pool_timeouts: int
    rejected: Mapping[str, int]
    recent_calls: int
    recent_errors: int
    latency: Mapping[int, int]
    last_error: LastError | None
    epoch: int

    def as_dict(self) -> dict[str, Any]:
        """The record as a worker publishes it (what ``read_stats`` reads back)."""
        return {
            "requests": self.requests,
            "errors": self.errors,
            "retries": self.retries,
            "short_circuited": self.short_circuited,
            "pool_timeouts": self.pool_timeouts,
            "rejected": dict(self.rejected),
            "recent": {"calls": self.recent_calls, "errors": self.recent_errors},
            "latency": {str(index): count for index, count in self.latency.items()},
            "last_error": self.last_error.as_dict() if self.last_error is not None else None,
            "epoch": self.epoch,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Transition:
    """A breaker message: ``seconds`` left of an opening (``None``: no end), ``until``/``at`` on Redis's clock (ms),
    ``reset`` the epoch of an operator's reset."""

    worker: str
    service: str
    state: str
    seconds: float | None
    reason: str
    until: int | None
    at: int | None
    cause: LastError | None
    reset: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class PauseMessage:
    """Another process's upstream asked for a pause of ``seconds``; 0: the pause is over."""

    worker: str
    service: str
    seconds: float


class _Bad(Exception):
    pass


def _bad(problem: str) -> NoReturn:
    raise _Bad(problem)


# -- scalars ----------------------------------------------------------------------------------------------------------


def text(value: Any, limit: int = MAX_TEXT) -> str:
    """A text from Redis (bytes or str), cut to ``limit`` characters; anything else is a bad record."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        _bad(f"expected a text, got {type(value).__name__}")
    return value if len(value) <= limit else value[: limit - 1] + "…"


def whole(value: Any, low: int = 0, high: int = MAX_COUNT) -> int:
    """A whole number from JSON (an int, never a float, a boolean or a text), within ``low`` and ``high``."""
    if not isinstance(value, int) or isinstance(value, bool):
        _bad(f"expected a whole number, got {type(value).__name__}")
    if not low <= value <= high:
        _bad(f"{value} is out of range ({low} to {high})")
    return value


def digits(value: Any, low: int = 0, high: int = MAX_COUNT) -> int:
    """A whole number Redis returned (its decimal digits, or a script's integer) or a JSON object's key."""
    if isinstance(value, bytes | str):
        raw = value.decode("ascii", errors="replace") if isinstance(value, bytes) else value
        if not re.fullmatch(r"-?\d{1,19}", raw):
            _bad(f"expected a whole number, got {raw[:40]!r}")
        value = int(raw)
    return whole(value, low, high)


def seconds(value: Any, high: float = MAX_SECONDS) -> float:
    """A finite number of seconds from JSON, from 0 to ``high``."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        _bad(f"expected seconds, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or not 0 <= number <= high:
        _bad(f"{number} seconds is out of range (0 to {high:g})")
    return number


def moment(value: Any) -> datetime:
    """An ISO 8601 time with its UTC offset (as ``LastError.as_dict`` writes it), in UTC."""
    if not isinstance(value, str) or len(value) > 40:
        _bad("expected an ISO 8601 time")
    at = datetime.fromisoformat(value)  # ValueError: a bad record
    if at.tzinfo is None:
        _bad(f"{value!r} has no UTC offset")
    return at.astimezone(timezone.utc)


def millis(value: Any) -> int:
    """A time in ms since the epoch on Redis's clock."""
    return whole(value, 0, _LAST_MS)


def error(value: Any) -> LastError:
    """A ``LastError.as_dict()`` read back."""
    if not isinstance(value, Mapping):
        _bad("an error is not a JSON object")
    kind = text(value.get("type"), MAX_NAME)
    if not kind:
        _bad("an error without a type")
    return LastError(type=kind, message=text(value.get("message")), at=moment(value.get("at")))


def _json(raw: Any) -> Any:
    if isinstance(raw, str):
        raw = raw.encode("utf-8", errors="replace")
    if not isinstance(raw, bytes):
        _bad(f"expected JSON, got {type(raw).__name__}")
    if len(raw) > MAX_RECORD_BYTES:
        _bad(f"{len(raw)} bytes, more than {MAX_RECORD_BYTES}")
    return json.loads(raw)  # ValueError (and RecursionError for absurd nesting): a bad record


# -- records ----------------------------------------------------------------------------------------------------------

# Everything a reader may meet in a bad record; anything else would be a bug here, and is left to surface.
_SKIPPED = (_Bad, ValueError, TypeError, OverflowError, RecursionError)


def read_breaker(flat: Any, where: str, complain: Complaints) -> BreakerRecord | None:
    """A breaker hash (``HGETALL``'s flat list); ``None`` when there is none (closed) or it is bad (logged)."""
    if not flat:
        return None
    try:
        if not isinstance(flat, list) or len(flat) % 2 or len(flat) > 64:
            _bad("not a hash of a few fields")
        fields = {text(flat[i], MAX_NAME): flat[i + 1] for i in range(0, len(flat), 2)}
        state = text(fields.get("state", b""), MAX_NAME)
        if state not in (OPEN, ISOLATED):
            _bad(f"state {state[:40]!r}")
        cause = None
        if fields.get("cause"):
            try:
                cause = error(_json(fields["cause"]))
            except _SKIPPED as problem:
                complain(f"the cause in {where}", str(problem))  # the opening stands; only its cause is unknown
        return BreakerRecord(
            state=state,
            until=digits(fields["until"], 0, _LAST_MS) if "until" in fields else None,
            opened=digits(fields["opened"], 0, _LAST_MS) if "opened" in fields else None,
            reason=text(fields.get("reason", b"")),
            cause=cause,
        )
    except _SKIPPED as problem:
        complain(where, str(problem))
        return None


def read_stats(raw: Any, services: Mapping[str, object], complain: Complaints) -> dict[str, ServiceStats]:
    """A worker's stats record: the valid entries of the ``services`` it names (a bad entry alone is skipped)."""
    if not raw:
        return {}
    try:
        record = _json(raw)
        if not isinstance(record, dict):
            _bad("not a JSON object")
    except _SKIPPED as problem:
        complain("a worker's stats record", str(problem))
        return {}
    entries: dict[str, ServiceStats] = {}
    for name in services:
        entry = record.get(name)
        if entry is None:
            continue
        try:
            entries[name] = _service_stats(entry)
        except _SKIPPED as problem:
            complain(f"a worker's stats of {name!r}", str(problem))
    return entries


def _service_stats(entry: Any) -> ServiceStats:
    if not isinstance(entry, Mapping):
        _bad("not a JSON object")
    counters = {key: whole(entry.get(key, 0)) for key in _COUNTERS}
    rejected = entry.get("rejected") or {}
    latency = entry.get("latency") or {}
    if not isinstance(rejected, Mapping) or len(rejected) > MAX_REASONS:
        _bad("rejected is not a small JSON object")
    if not isinstance(latency, Mapping) or len(latency) > len(LATENCY_BUCKETS_MS):
        _bad("latency is not a JSON object of buckets")
    last = entry.get("last_error")
    recent = entry.get("recent") or {}
    if not isinstance(recent, Mapping):
        _bad("recent is not a JSON object")
    return ServiceStats(
        **counters,
        rejected={text(reason, MAX_NAME): whole(count) for reason, count in rejected.items()},
        recent_calls=whole(recent.get("calls", 0)),
        recent_errors=whole(recent.get("errors", 0)),
        latency={digits(index, 0, len(LATENCY_BUCKETS_MS) - 1): whole(count) for index, count in latency.items()},
        last_error=error(last) if last is not None else None,
        epoch=millis(entry.get("epoch", 0)),
    )


def read_message(data: Any, complain: Complaints) -> Transition | PauseMessage | None:
    """A message of the fleet's channel; ``None`` when it is bad (logged)."""
    try:
        message = _json(data)
        if not isinstance(message, dict):
            _bad("not a JSON object")
        worker, service = text(message.get("worker"), MAX_NAME), text(message.get("service"), MAX_NAME)
        if message.get("resume") is True:  # the previous version's end of a pause (a rolling deploy mixes them)
            return PauseMessage(worker=worker, service=service, seconds=0.0)
        if "pause" in message:
            pause = seconds(message["pause"])
            if not pause > 0:
                _bad("a pause of 0 seconds")
            return PauseMessage(worker=worker, service=service, seconds=pause)
        state = text(message.get("state"), MAX_NAME)
        if state not in _STATES:
            _bad(f"state {state[:40]!r}")
        cause = message.get("cause")
        return Transition(
            worker=worker,
            service=service,
            state=state,
            seconds=None if message.get("seconds") is None else seconds(message["seconds"]),
            reason=text(message.get("reason", "")),
            until=None if message.get("until") is None else millis(message["until"]),
            at=None if message.get("at") is None else millis(message["at"]),
            cause=None if cause is None else error(cause),
            reset=None if message.get("reset") is None else millis(message["reset"]),
        )
    except _SKIPPED as problem:
        complain("a message on the fleet's channel", str(problem))
        return None


def read_worker(raw: Any, complain: Complaints) -> str | None:
    """A live worker's id (``host:pid:random``); ``None`` when it is not one (logged)."""
    try:
        worker = text(raw, MAX_NAME)
        if not _WORKER.fullmatch(worker):
            _bad(f"{worker[:60]!r} is not host:pid:random")
        return worker
    except _SKIPPED as problem:
        complain("a worker id", str(problem))
        return None


def read_number(raw: Any, where: str, complain: Complaints, *, low: int = 0, high: int = MAX_COUNT) -> int | None:
    """A number Redis returned (a counter, a TTL, an epoch); ``None`` when absent or bad (logged)."""
    if raw is None or raw == b"":
        return None
    try:
        return digits(raw, low, high)
    except _SKIPPED as problem:
        complain(where, str(problem))
        return None
