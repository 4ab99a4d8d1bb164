"""What a fleet reads back from Redis, validated: every message, breaker record, stats record and number in them.

Redis is shared ground: another version of this library, a person with ``redis-cli``, a bug or a torn write may
have put anything under the prefix. Nothing read from it is trusted. Each reader here returns a typed value, or
``None`` for a record to skip, and never raises; every number comes out bounded (seconds finite and at most
``MAX_SECONDS``, counts whole and at most ``MAX_COUNT``, times no later than the year 9999, with a UTC offset) and
every text cut to a length a report can show. A skipped record is logged once per kind of record (``Complaints``),
not once per read: the fleet re-reads the same bad key every ``sync_interval``.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from .._breaker import CLOSED, ISOLATED, OPEN
from .._parse import INVALID, LAST_MS, MAX_COUNT, MAX_NAME, bad, digits, error, json_value, seconds, text, whole
from .._stats import StatsRecord
from ..health import LastError

if TYPE_CHECKING:
    from .._history import HistoryRecord

_WORKER = re.compile(r"\S{1,180}:\d{1,10}:[0-9a-f]{6}")  # host:pid:random, as RedisState names itself
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


class PublishedStats(NamedTuple):
    """One worker's published stats of one service, and the last fleet reset it had applied (``epoch``, 0: none)."""

    record: StatsRecord
    epoch: int
    history: HistoryRecord | None = None  # its buckets, when health.history keeps one


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


# -- records ----------------------------------------------------------------------------------------------------------


def read_breaker(flat: Any, where: str, complain: Complaints) -> BreakerRecord | None:
    """A breaker hash (``HGETALL``'s flat list); ``None`` when there is none (closed) or it is bad (logged)."""
    if not flat:
        return None
    try:
        if not isinstance(flat, list) or len(flat) % 2 or len(flat) > 64:
            bad("not a hash of a few fields")
        fields = {text(flat[i], MAX_NAME): flat[i + 1] for i in range(0, len(flat), 2)}
        state = text(fields.get("state", b""), MAX_NAME)
        if state not in (OPEN, ISOLATED):
            bad(f"state {state[:40]!r}")
        cause = None
        if fields.get("cause"):
            try:
                cause = error(json_value(fields["cause"]))
            except INVALID as problem:
                complain(f"the cause in {where}", str(problem))  # the opening stands; only its cause is unknown
        return BreakerRecord(
            state=state,
            until=digits(fields["until"], 0, LAST_MS) if "until" in fields else None,
            opened=digits(fields["opened"], 0, LAST_MS) if "opened" in fields else None,
            reason=text(fields.get("reason", b"")),
            cause=cause,
        )
    except INVALID as problem:
        complain(where, str(problem))
        return None


def read_stats(
    raw: Any,
    services: Mapping[str, object],
    complain: Complaints,
    histories: Mapping[str, tuple[float, int]] | None = None,
) -> dict[str, PublishedStats]:
    """A worker's stats record: the valid entries of the ``services`` it names (a bad entry alone is skipped).

    ``histories`` gives the ``(interval, buckets)`` of the services that keep a history: their entries' histories
    are read too, and a bad one is skipped alone (the entry's stats are kept)."""
    if not raw:
        return {}
    try:
        record = json_value(raw)
        if not isinstance(record, dict):
            bad("not a JSON object")
    except INVALID as problem:
        complain("a worker's stats record", str(problem))
        return {}
    entries: dict[str, PublishedStats] = {}
    for name in services:
        entry = record.get(name)
        if entry is None:
            continue
        try:
            if not isinstance(entry, Mapping):
                bad("not a JSON object")
            entries[name] = PublishedStats(StatsRecord.from_dict(entry), millis(entry.get("epoch", 0)))
        except INVALID as problem:
            complain(f"a worker's stats of {name!r}", str(problem))
            continue
        shape = (histories or {}).get(name)
        if shape is not None and entry.get("history") is not None:
            entries[name] = entries[name]._replace(history=_history(entry["history"], name, shape, complain))
    return entries


def _history(raw: Any, name: str, shape: tuple[float, int], complain: Complaints) -> HistoryRecord | None:
    from .._history import HistoryRecord

    try:
        return HistoryRecord.from_dict(raw, interval=shape[0], size=shape[1])
    except INVALID as problem:
        complain(f"a worker's history of {name!r}", str(problem))
        return None


def millis(value: Any) -> int:
    """A time in ms since the epoch on Redis's clock."""
    return whole(value, 0, LAST_MS)


def read_message(data: Any, complain: Complaints) -> Transition | PauseMessage | None:
    """A message of the fleet's channel; ``None`` when it is bad (logged)."""
    try:
        message = json_value(data)
        if not isinstance(message, dict):
            bad("not a JSON object")
        worker, service = text(message.get("worker"), MAX_NAME), text(message.get("service"), MAX_NAME)
        if message.get("resume") is True:  # the previous version's end of a pause (a rolling deploy mixes them)
            return PauseMessage(worker=worker, service=service, seconds=0.0)
        if "pause" in message:
            pause = seconds(message["pause"])
            if not pause > 0:
                bad("a pause of 0 seconds")
            return PauseMessage(worker=worker, service=service, seconds=pause)
        state = text(message.get("state"), MAX_NAME)
        if state not in _STATES:
            bad(f"state {state[:40]!r}")
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
    except INVALID as problem:
        complain("a message on the fleet's channel", str(problem))
        return None


def read_worker(raw: Any, complain: Complaints) -> str | None:
    """A live worker's id (``host:pid:random``); ``None`` when it is not one (logged)."""
    try:
        worker = text(raw, MAX_NAME)
        if not _WORKER.fullmatch(worker):
            bad(f"{worker[:60]!r} is not host:pid:random")
        return worker
    except INVALID as problem:
        complain("a worker id", str(problem))
        return None


def read_number(raw: Any, where: str, complain: Complaints, *, low: int = 0, high: int = MAX_COUNT) -> int | None:
    """A number Redis returned (a counter, a TTL, an epoch); ``None`` when absent or bad (logged)."""
    if raw is None or raw == b"":
        return None
    try:
        return digits(raw, low, high)
    except INVALID as problem:
        complain(where, str(problem))
        return None
