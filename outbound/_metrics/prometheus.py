"""Prometheus metrics (``"metrics": {"prometheus": true}``, extra ``outbound-http[prometheus]``).

The metrics are created once per process on prometheus_client's default registry, whatever number of registries the
process builds (tests build many; registering a name twice is an error), so the exporter the app already serves
shows them. Counters and the histogram are fed by the policy's events; the gauges are not events:

- in a single process each gauge child reads the live services when it is scraped (``set_function``);
- under a multiprocess exporter (``PROMETHEUS_MULTIPROC_DIR``: gunicorn workers) values live in per-process files
  written only by ``set()``, and ``MultiProcessCollector`` sees neither functions nor custom collectors. A daemon
  thread of the process copies pools, breaker states and statuses into the gauges every ``REFRESH_SECONDS``. It
  starts with the process's first call (a gunicorn master that preloads the app without calling anything writes
  nothing), ends once no registry is open, and a forked child starts its own on its first call (threads do not
  survive a fork).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import values as prometheus_values

from .._events import BreakerTransition, CallFinished, CallRejected, Observer, RetryDenied, RetryScheduled
from .._lifecycle import Daemon, hold_across_fork
from .._outcome import Kind
from ..health import STATUSES
from . import _common as families
from ._common import CACHE_RESULTS, DURATION_BUCKETS, REJECTED, Family, call_outcome, method_label, status_label
from ._live import BREAKER_STATES, LiveRegistries

if TYPE_CHECKING:
    from .._registry import Registry

logger = logging.getLogger("outbound.observer")

REFRESH_SECONDS = 1.0  # multiprocess mode: how stale a pool or breaker gauge may be (scrapes come every 15 s or so)
POOL_STATES = ("in_use", "idle")
GaugeMode = Literal["livemax", "livesum"]  # how a multiprocess gauge combines the live workers' values


class PrometheusMetrics:
    """outbound's metric families, created on ``registry`` (the default one, except in tests)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        def counter(family: Family, labels: tuple[str, ...]) -> Counter:
            return Counter(family.prometheus, family.description, labels, registry=registry)

        def gauge(family: Family, labels: tuple[str, ...], mode: GaugeMode) -> Gauge:
            return Gauge(family.prometheus, family.description, labels, multiprocess_mode=mode, registry=registry)

        self.requests = counter(families.REQUESTS, ("service", "method", "status", "outcome"))
        self.duration = Histogram(
            families.DURATION.prometheus,
            families.DURATION.description,
            ("service", "method", "outcome"),
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.retries = counter(families.RETRIES, ("service", "reason"))
        self.short_circuits = counter(families.SHORT_CIRCUITS, ("service",))
        self.pool_timeouts = counter(families.POOL_TIMEOUTS, ("service",))
        self.budget_exhausted = counter(families.BUDGET_EXHAUSTED, ("service",))
        # livemax: each worker has its own breaker, so a state reads 1 while at least one live worker's breaker is in
        # it (open=1: some worker fails fast) and 0 when none is. A sum would count workers, not states; "max" would
        # keep a dead worker's last state until the directory is wiped.
        self.circuit_state = gauge(families.CIRCUIT_STATE, ("service", "state"), "livemax")
        # livemax, as the breaker states: a status reads 1 while at least one live worker's report gives it.
        self.service_status = gauge(families.SERVICE_STATUS, ("service", "status"), "livemax")
        # livesum: connections (in_use, idle) and waiting calls of the live workers add up to the service's totals.
        self.pool_connections = gauge(families.POOL_CONNECTIONS, ("service", "state"), "livesum")
        self.pool_waiting = gauge(families.POOL_WAITING, ("service",), "livesum")
        # livesum: the workers' caches answer calls each (a gauge: a reset of the service starts it again).
        self.cache_answers = gauge(families.CACHE_ANSWERS, ("service", "result"), "livesum")

    def set_gauges(self, live: LiveRegistries, names: set[str]) -> None:
        """Write the current pool numbers and breaker states of the services called ``names`` (multiprocess mode)."""
        for name in names:
            in_use, idle, waiting = live.pool(name)
            self.pool_connections.labels(name, "in_use").set(in_use)
            self.pool_connections.labels(name, "idle").set(idle)
            self.pool_waiting.labels(name).set(waiting)
            states = live.states(name)
            for state in BREAKER_STATES:
                self.circuit_state.labels(name, state).set(1 if state in states else 0)
            statuses = live.statuses(name)
            for status in STATUSES:
                self.service_status.labels(name, status).set(1 if status in statuses else 0)
            cache = live.cache_counts(name)
            if cache is not None:
                for key, result in CACHE_RESULTS.items():
                    self.cache_answers.labels(name, result).set(cache.get(key, 0))

    def read_gauges_when_scraped(self, live: LiveRegistries, name: str) -> None:
        """Make the gauges of service ``name`` read ``live`` at every scrape (single-process mode)."""
        for index, state in enumerate(POOL_STATES):
            self.pool_connections.labels(name, state).set_function(_pool_reader(live, name, index))
        self.pool_waiting.labels(name).set_function(_pool_reader(live, name, 2))
        for state in BREAKER_STATES:
            self.circuit_state.labels(name, state).set_function(_state_reader(live, name, state))
        for status in STATUSES:
            self.service_status.labels(name, status).set_function(_status_reader(live, name, status))
        if live.cache_counts(name) is not None:
            for key, result in CACHE_RESULTS.items():
                self.cache_answers.labels(name, result).set_function(_cache_reader(live, name, key))


def _pool_reader(live: LiveRegistries, name: str, index: int) -> Callable[[], float]:
    return lambda: float(live.pool(name)[index])


def _cache_reader(live: LiveRegistries, name: str, key: str) -> Callable[[], float]:
    return lambda: float((live.cache_counts(name) or {}).get(key, 0))


def _state_reader(live: LiveRegistries, name: str, state: str) -> Callable[[], float]:
    return lambda: 1.0 if state in live.states(name) else 0.0


def _status_reader(live: LiveRegistries, name: str, status: str) -> Callable[[], float]:
    return lambda: 1.0 if status in live.statuses(name) else 0.0


class GaugeRefresher:
    """Multiprocess mode: a daemon thread that writes the gauges of ``live``'s services every ``interval``, from the
    first call of the process until no registry is open (``_lifecycle.Daemon``)."""

    def __init__(self, metrics: PrometheusMetrics, live: LiveRegistries, interval: float = REFRESH_SECONDS) -> None:
        self._metrics = metrics
        self._live = live
        self._interval = interval
        self._daemon = Daemon("outbound-prometheus-gauges", self._run)
        self._reset()
        hold_across_fork(self, "_writing", child=GaugeRefresher._reset)

    def _reset(self) -> None:
        # Held while the gauges are written, and taken before a fork: a child must not inherit prometheus_client's
        # file lock (or a pool's) from the middle of a write by this thread, which does not exist in the child.
        self._writing = threading.Lock()
        self._names: set[str] = set()  # every service this process reported: a closed one is written back to 0
        self._failed = False
        self._live.reset_after_fork()

    @property
    def running(self) -> bool:
        return self._daemon.running

    def start(self) -> None:
        """Start the thread unless it runs (called on calls: cheap when it does)."""
        self._daemon.ensure()

    def refresh(self) -> bool:
        """Write every gauge now; ``False`` once no registry is open."""
        with self._writing:
            services = self._live.services()
            self._names |= {service.name for service in services}
            self._write(self._names)
        return bool(services)

    def write(self, names: set[str]) -> None:
        """Write the gauges of the services called ``names`` now."""
        with self._writing:
            self._write(names)

    def _write(self, names: set[str]) -> None:
        try:
            self._metrics.set_gauges(self._live, names)
        except Exception:
            # A pool read broke (its attributes are private to the client libraries): say so once, keep going.
            level = logging.DEBUG if self._failed else logging.ERROR
            logger.log(level, "outbound could not write its Prometheus gauges", exc_info=True)
            self._failed = True

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread and wait for it (tests; it also ends by itself once no registry is open)."""
        self._daemon.stop(timeout)

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if not self.refresh() and self._daemon.exit_if(self._no_registry):
                return  # no registry is open: the next call of a new one starts a new thread
            stop.wait(self._interval)

    def _no_registry(self) -> bool:
        return not self._live.services()


_create_lock = threading.Lock()
_shared: tuple[PrometheusMetrics, LiveRegistries, GaugeRefresher] | None = None


def _process_metrics() -> tuple[PrometheusMetrics, LiveRegistries, GaugeRefresher]:
    global _shared
    with _create_lock:
        if _shared is None:
            metrics, live = PrometheusMetrics(), LiveRegistries()
            _shared = metrics, live, GaugeRefresher(metrics, live)
        return _shared


def multiprocess_mode() -> bool:
    """Whether prometheus_client writes values to per-process files (it decides once, when it is imported)."""
    return bool(getattr(prometheus_values.ValueClass, "_multiprocess", False))


class PrometheusObserver(Observer):
    """Records every service of a registry in the process's outbound metrics.

    Per call it increments one counter and observes one histogram, through label children it keeps (a label lookup
    costs more than the increment). The keyword arguments replace the process's metrics and its mode (tests).
    """

    def __init__(
        self,
        registry: Registry,
        *,
        metrics: PrometheusMetrics | None = None,
        live: LiveRegistries | None = None,
        refresher: GaugeRefresher | None = None,
        multiprocess: bool | None = None,
    ) -> None:
        if metrics is None or live is None or refresher is None:
            metrics, live, refresher = _process_metrics()
        self._metrics = metrics
        self._calls: dict[tuple[str, str, int | None, str], tuple[Counter, Histogram]] = {}
        self._retries: dict[tuple[str, str], Counter] = {}
        self._short_circuits: dict[str, Counter] = {}
        self._pool_timeouts: dict[str, Counter] = {}
        self._budget_exhausted: dict[str, Counter] = {}
        self._live = live
        live.add(registry)
        self._refresher: GaugeRefresher | None = None
        if multiprocess_mode() if multiprocess is None else multiprocess:
            self._refresher = refresher
        else:
            for service in registry:
                metrics.read_gauges_when_scraped(live, service.name)

    def call_finished(self, event: CallFinished) -> None:
        outcome = call_outcome(event)
        key = (event.service, event.method, event.status, outcome)
        children = self._calls.get(key) or self._call_children(key)
        if outcome is not REJECTED:  # a call whose retry was refused was counted by call_rejected
            children[0].inc()
        children[1].observe(event.seconds)
        if event.kind is Kind.POOL_TIMEOUT:  # never retried: one per call that ended so
            _child(self._pool_timeouts, self._metrics.pool_timeouts, event.service).inc()
        refresher = self._refresher
        if refresher is not None and not refresher.running:
            refresher.start()

    def call_rejected(self, event: CallRejected) -> None:
        key = (event.service, event.method, None, REJECTED)
        (self._calls.get(key) or self._call_children(key))[0].inc()
        if event.reason == "circuit_open":
            _child(self._short_circuits, self._metrics.short_circuits, event.service).inc()

    def retry_scheduled(self, event: RetryScheduled) -> None:
        key = (event.service, event.reason)
        child = self._retries.get(key)
        if child is None:
            child = self._retries.setdefault(key, self._metrics.retries.labels(*key))
        child.inc()

    def retry_denied(self, event: RetryDenied) -> None:
        if event.reason == "budget":
            _child(self._budget_exhausted, self._metrics.budget_exhausted, event.service).inc()

    def breaker_transition(self, event: BreakerTransition) -> None:
        refresher = self._refresher
        if refresher is not None:
            # Written at once rather than at the next refresh: an opening breaker is what a dashboard waits for.
            refresher.write({event.service})
            if not refresher.running:
                refresher.start()

    def _call_children(self, key: tuple[str, str, int | None, str]) -> tuple[Counter, Histogram]:
        service, method, status, outcome = key
        method = method_label(method)
        children = (
            self._metrics.requests.labels(service, method, status_label(status), outcome),
            self._metrics.duration.labels(service, method, outcome),
        )
        return self._calls.setdefault(key, children)


def _child(children: dict[str, Counter], family: Counter, service: str) -> Counter:
    child = children.get(service)
    if child is None:
        child = children.setdefault(service, family.labels(service))
    return child
