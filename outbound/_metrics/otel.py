"""OpenTelemetry metrics (``"metrics": {"otel": true}``, extra ``outbound-http[otel]``).

The measurements of the Prometheus metrics as ``outbound.*`` instruments with an ``outbound.service`` attribute,
recorded through the meter API on the global ``MeterProvider`` (until the app's SDK installs one, the API's proxy
forwards nothing, then everything). Attributes follow the HTTP semantic conventions where one exists
(``http.request.method``, ``http.response.status_code``, ``http.connection.state``).

Recording stays off the calls' path. A synchronous measurement costs the SDK 10 to 30 microseconds in the middle of
a call (it copies, cleans and hashes the attributes, checks for an exemplar and aggregates under locks), which a call
to a nearby upstream notices. So the counters are asynchronous — outbound keeps the totals, an increment under a
lock per call, and the SDK reads them when it collects — and the duration histogram, which has no asynchronous form,
is handed to the SDK in batches by a daemon thread (``DeferredHistogram``), where the same work costs about a
third (measured: its code and data stay in the caches).

``http.client.request.duration`` is deliberately not recorded: opentelemetry-instrumentation-requests and -httpx
record it per attempt, and a second recording under the stable name would count calls twice. Ours is
``outbound.request.duration``: one per logical call, retries and their waits included.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from importlib import metadata
from typing import TYPE_CHECKING, Generic, TypeVar

from opentelemetry import metrics
from opentelemetry.context import Context, get_current
from opentelemetry.metrics import CallbackOptions, Histogram, Meter, MeterProvider, Observation
from opentelemetry.util.types import AttributeValue

from .._events import CallFinished, CallRejected, Observer, RetryDenied, RetryScheduled
from .._lifecycle import Daemon, hold_across_fork, on_fork
from .._outcome import Kind
from ..health import STATUSES
from . import _common as families
from ._common import CACHE_RESULTS, DURATION_BUCKETS, REJECTED, Family, call_outcome, method_label
from ._live import BREAKER_STATES, LiveRegistries

if TYPE_CHECKING:
    from .._registry import Registry

logger = logging.getLogger("outbound.observer")

SERVICE = "outbound.service"
FLUSH_SECONDS = 0.2  # how long a duration may wait for the thread (a collection takes the waiting ones at once)
MAX_PENDING = 10_000  # durations waiting at most; beyond, a call records its own (the thread fell behind)
YIELD_EVERY = 32  # durations recorded between two releases of the GIL while flushing
Attributes = dict[str, AttributeValue]
Key = TypeVar("Key", bound=Hashable)

_provider: MeterProvider | None = None
_cached: tuple[MeterProvider | None, OtelInstruments] | None = None


class _Making:
    """The lock the process's instruments are made under; a forked child gets a new one (another thread of the
    parent may have held it at the fork)."""

    def __init__(self) -> None:
        self._new_lock()
        on_fork(self, child=_Making._new_lock)

    def _new_lock(self) -> None:
        self.lock = threading.Lock()


_making = _Making()


def use_meter_provider(provider: MeterProvider | None) -> None:
    """Record the registries built from now on through ``provider`` (``None``: the global provider again).

    For tests, which cannot replace OpenTelemetry's global provider once it is set.
    """
    global _provider
    _provider = provider


def _version() -> str | None:
    try:
        return metadata.version("outbound-http")
    except metadata.PackageNotFoundError:
        return None


class Tally(Generic[Key]):
    """Cumulative counts by key, reported by an observable counter when the SDK collects.

    ``attributes(key)`` gives a key's attributes; it runs once per key.
    """

    def __init__(self, attributes: Callable[[Key], Attributes]) -> None:
        self._attributes = attributes
        self._lock = threading.Lock()
        self._counts: dict[Key, int] = {}
        self._attributes_of: dict[Key, Attributes] = {}

    def add(self, key: Key) -> None:
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            counts = list(self._counts.items())
        observations = []
        for key, count in counts:
            attributes = self._attributes_of.get(key)
            if attributes is None:
                attributes = self._attributes_of.setdefault(key, self._attributes(key))
            observations.append(Observation(count, attributes))
        return observations

    def reset_after_fork(self) -> None:
        """In a forked child: the parent's calls are the parent's to report; a parent's thread may have held the
        lock."""
        self._lock = threading.Lock()
        self._counts = {}


CallKey = tuple[str, str, int | None, str]  # service, method, status, outcome


class DeferredHistogram:
    """A histogram recorded off the calls' path: ``record()`` queues the value with its attributes and the caller's
    context (so exemplars still point at the call's trace), and a daemon thread hands the queue to the SDK every
    ``FLUSH_SECONDS``; a collection flushes first, so an export never misses a finished call.

    The thread starts with the first record of the process, ends once no registry it reports on is open, and a
    forked child starts its own (the parent's queue is the parent's to record).
    """

    def __init__(self, histogram: Histogram, live: LiveRegistries, interval: float = FLUSH_SECONDS) -> None:
        self._histogram = histogram
        self._live = live
        self._interval = interval
        # Older versions of the API's record() take no context (the exemplars then lack the call's trace).
        self._with_context = "context" in inspect.signature(histogram.record).parameters
        self._daemon = Daemon("outbound-otel-durations", self._run)
        self._reset()
        hold_across_fork(self, "_flushing", child=DeferredHistogram._reset)

    def _reset(self) -> None:
        self._pending: deque[tuple[float, Attributes, Context]] = deque()
        # Held while durations are handed to the SDK, and taken before a fork: a child must not inherit the SDK's
        # locks from the middle of a record by this thread.
        self._flushing = threading.Lock()

    @property
    def running(self) -> bool:
        return self._daemon.running

    @property
    def pending(self) -> int:
        """Measurements queued now."""
        return len(self._pending)

    def record(self, value: float, attributes: Attributes) -> None:
        """Queue one measurement (or record it at once when the queue is full)."""
        pending = self._pending
        if len(pending) >= MAX_PENDING:
            self._histogram.record(value, attributes)
            return
        pending.append((value, attributes, get_current()))
        self._daemon.ensure()

    def flush(self) -> None:
        """Hand every queued measurement to the SDK now."""
        with self._flushing:
            pending, record = self._pending, self._histogram.record
            for index in range(len(pending)):  # what is queued now: calls keep appending meanwhile
                value, attributes, context = pending.popleft()
                try:
                    if self._with_context:
                        record(value, attributes, context)
                    else:
                        record(value, attributes)
                except Exception:
                    # The API promises not to raise; a broken SDK or view must still not stop the others.
                    logger.exception("outbound could not record a duration through OpenTelemetry")
                if index % YIELD_EVERY == YIELD_EVERY - 1:
                    time.sleep(0)  # a caller whose response has arrived gets the GIL without waiting for the batch

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self._interval):
            self.flush()
            if self._daemon.exit_if(self._no_registry):
                return  # the next record of a new registry starts a new thread

    def _no_registry(self) -> bool:
        return not self._live.services()


Callback = Callable[[CallbackOptions], Iterable[Observation]]  # what an observable instrument calls to read


def _call_attributes(key: CallKey) -> Attributes:
    service, method, status, outcome = key
    attributes: Attributes = {SERVICE: service, "http.request.method": method, "outbound.outcome": outcome}
    if status is not None:
        attributes["http.response.status_code"] = status
    return attributes


def _retry_attributes(key: tuple[str, str]) -> Attributes:
    service, reason = key
    return {SERVICE: service, "outbound.retry.reason": reason}


def _service_attributes(service: str) -> Attributes:
    return {SERVICE: service}


class OtelInstruments:
    """outbound's instruments on one meter, the counts its counters report, and the registries its gauges read."""

    def __init__(self, meter: Meter) -> None:
        on_fork(self, child=OtelInstruments.reset_after_fork)
        self.live = LiveRegistries()
        self.requests: Tally[CallKey] = Tally(_call_attributes)
        self.retries: Tally[tuple[str, str]] = Tally(_retry_attributes)
        self.short_circuits: Tally[str] = Tally(_service_attributes)
        self.pool_timeouts: Tally[str] = Tally(_service_attributes)
        self.budget_exhausted: Tally[str] = Tally(_service_attributes)
        self.duration = DeferredHistogram(
            meter.create_histogram(
                families.DURATION.otel,
                unit=families.DURATION.unit,
                description=families.DURATION.description,
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
            ),
            self.live,
        )
        # Every observable instrument: how it is made and what it reads. The cumulative counters read their
        # tallies; the gauges and up-down counters read the live registries.
        observables: tuple[tuple[Callable[..., object], Family, Callback], ...] = (
            (meter.create_observable_counter, families.REQUESTS, self._flush_and_count_requests),
            (meter.create_observable_counter, families.RETRIES, self.retries.observe),
            (meter.create_observable_counter, families.SHORT_CIRCUITS, self.short_circuits.observe),
            (meter.create_observable_counter, families.POOL_TIMEOUTS, self.pool_timeouts.observe),
            (meter.create_observable_counter, families.BUDGET_EXHAUSTED, self.budget_exhausted.observe),
            (meter.create_observable_gauge, families.CIRCUIT_STATE, self._circuit_states),
            (meter.create_observable_gauge, families.SERVICE_STATUS, self._service_statuses),
            (meter.create_observable_up_down_counter, families.POOL_CONNECTIONS, self._pool_connections),
            (meter.create_observable_up_down_counter, families.POOL_WAITING, self._pool_waiting),
            (meter.create_observable_counter, families.CACHE_ANSWERS, self._cache_answers),
        )
        for create, family, callback in observables:
            create(family.otel, callbacks=[callback], unit=family.unit, description=family.description)

    def reset_after_fork(self) -> None:
        """In a forked child: the parent's counts are the parent's to report (the durations reset themselves)."""
        for tally in (self.requests, self.retries, self.short_circuits, self.pool_timeouts, self.budget_exhausted):
            tally.reset_after_fork()
        self.live.reset_after_fork()

    def _flush_and_count_requests(self, options: CallbackOptions) -> Iterable[Observation]:
        # The SDK calls the asynchronous instruments' callbacks before it reads the synchronous ones, and this is
        # the first callback registered: the durations still queued go into this collection.
        self.duration.flush()
        return self.requests.observe(options)

    def _names(self) -> list[str]:
        return list(dict.fromkeys(service.name for service in self.live.services()))

    def _circuit_states(self, options: CallbackOptions) -> Iterable[Observation]:
        for name in self._names():
            states = self.live.states(name)
            for state in BREAKER_STATES:
                yield Observation(1 if state in states else 0, {SERVICE: name, "outbound.breaker.state": state})

    def _service_statuses(self, options: CallbackOptions) -> Iterable[Observation]:
        for name in self._names():
            statuses = self.live.statuses(name)
            for status in STATUSES:
                yield Observation(1 if status in statuses else 0, {SERVICE: name, "outbound.health.status": status})

    def _pool_connections(self, options: CallbackOptions) -> Iterable[Observation]:
        for name in self._names():
            in_use, idle, _ = self.live.pool(name)
            yield Observation(in_use, {SERVICE: name, "http.connection.state": "active"})
            yield Observation(idle, {SERVICE: name, "http.connection.state": "idle"})

    def _pool_waiting(self, options: CallbackOptions) -> Iterable[Observation]:
        for name in self._names():
            yield Observation(self.live.pool(name)[2], {SERVICE: name})

    def _cache_answers(self, options: CallbackOptions) -> Iterable[Observation]:
        for name in self._names():
            counts = self.live.cache_counts(name)
            if counts is not None:
                for key, result in CACHE_RESULTS.items():
                    yield Observation(counts.get(key, 0), {SERVICE: name, "outbound.cache.result": result})


def _instruments() -> OtelInstruments:
    # One set of instruments per process (per provider a test injects): a second set under the same names would be
    # refused by the SDK's meter, and its callbacks never called. The global meter is the API's proxy until the app
    # installs a provider, and forwards to it from then on.
    global _cached
    provider = _provider
    with _making.lock:
        if _cached is None or _cached[0] is not provider:
            meter = (provider or metrics.get_meter_provider()).get_meter("outbound", _version())
            _cached = provider, OtelInstruments(meter)
        return _cached[1]


class OpenTelemetryObserver(Observer):
    """Records every service of a registry in outbound's OpenTelemetry instruments.

    Per call: one count and one queued duration (its attribute dictionaries are built once per combination and
    reused).
    """

    def __init__(self, registry: Registry) -> None:
        self._instruments = _instruments()
        self._instruments.live.add(registry)
        self._duration_attributes: dict[tuple[str, str, str], Attributes] = {}

    def call_finished(self, event: CallFinished) -> None:
        outcome = call_outcome(event)
        method = method_label(event.method)
        if outcome is not REJECTED:  # a call whose retry was refused was counted by call_rejected
            self._instruments.requests.add((event.service, method, event.status, outcome))
        key = (event.service, method, outcome)
        attributes = self._duration_attributes.get(key)
        if attributes is None:
            attributes = {SERVICE: key[0], "http.request.method": key[1], "outbound.outcome": key[2]}
            attributes = self._duration_attributes.setdefault(key, attributes)
        self._instruments.duration.record(event.seconds, attributes)
        if event.kind is Kind.POOL_TIMEOUT:  # never retried: one per call that ended so
            self._instruments.pool_timeouts.add(event.service)

    def call_rejected(self, event: CallRejected) -> None:
        self._instruments.requests.add((event.service, method_label(event.method), None, REJECTED))
        if event.reason == "circuit_open":
            self._instruments.short_circuits.add(event.service)

    def retry_scheduled(self, event: RetryScheduled) -> None:
        self._instruments.retries.add((event.service, event.reason))

    def retry_denied(self, event: RetryDenied) -> None:
        if event.reason == "budget":
            self._instruments.budget_exhausted.add(event.service)
