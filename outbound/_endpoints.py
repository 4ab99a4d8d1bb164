"""One service, several endpoints: which one each attempt goes to, and which are ejected for failing (issue 31).

A service with ``endpoints`` (two or more; one is ``base_url``) gets an ``Endpoints`` stage among its attempt stages,
before the breaker. Its permit is the endpoint the attempt goes to:

- ``admit`` picks one among the available endpoints of the lowest priority that has any: the less busy (in flight per
  weight) of two drawn by weight (``p2c``), or smooth weighted ``round_robin``. A retry or a hedge of the same call
  goes to another endpoint than the ones the call tried, when there is one.
- the backends send the attempt there (``route_url`` / ``route_httpx``): the call's URL was built against the first
  endpoint; each attempt's URL gets the chosen endpoint's root instead, so host, port, ``Host`` and TLS server name
  are the endpoint's own, and the pools are per endpoint because they are per host.
- ``record`` keeps per-endpoint counts. ``outlier.consecutive_failures`` failures in a row (failures as the breaker
  counts them) eject the endpoint for ``base_ejection`` x the number of its ejections, at most ``max_ejection``,
  unless ``max_ejected_percent`` of the endpoints are ejected already (at least one may be). When the ejection ends,
  one attempt at a time goes there (a trial): a success brings it back, a failure ejects it again, for longer.
- with a fleet state backend (Redis) the failures are counted and the ejections decided by the fleet
  (``_state/ejections.py``, on Redis's clock): one worker's ejection holds for every worker, which learns of it at its
  next failure there, at the latest. Without one, or when Redis does not answer, each process decides alone.

The service's breaker sees an attempt's failure only when no endpoint is usable any more (each is ejected, or failing
in a row): one bad replica never opens it. ``ServiceBreaker`` wraps it in the attempt stages for that.
"""

from __future__ import annotations

import contextvars
import math
import random as _random
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ._outcome import NO_VERDICT, Outcome, Reason, Rejection

if TYPE_CHECKING:
    import httpx

    from ._breaker import Breaker
    from ._config import EndpointConfig, ServiceConfig
    from ._stage import CallView
    from ._state.ejections import EjectionStore

HEALTHY, EJECTED, TRIAL = "healthy", "ejected", "trial"

# The endpoints the call running in this thread or task tried: (id of the call, the endpoints). A call's retries and
# hedges are admitted where its first attempt was (the driver's thread or task), so this is the call's memory without
# a slot on ``Call``; a first attempt (``attempts == 0``) starts afresh.
_TRIED: contextvars.ContextVar[tuple[int, tuple[Endpoint, ...]]] = contextvars.ContextVar("outbound_endpoints_tried")


class Endpoint:
    """One endpoint's live state (guarded by its ``Endpoints``' lock)."""

    __slots__ = (
        "calls",
        "current",
        "ejected_until",
        "ejections",
        "errors",
        "failures",
        "in_flight",
        "name",
        "priority",
        "shared_failures",
        "trial",
        "url",
        "weight",
    )

    def __init__(self, url: str, weight: int, priority: int, name: str | None = None) -> None:
        self.url = url
        self.name = name  # discovered: the DNS name, sent as Host and checked against the certificate
        self.weight = weight
        self.priority = priority
        self.in_flight = 0
        self.calls = 0  # attempts with a verdict
        self.errors = 0  # failed attempts
        self.failures = 0  # failures in a row
        self.shared_failures = False  # the fleet counts failures of it since its last success here
        self.ejected_until = 0.0  # on the service's clock; 0: never ejected
        self.ejections = 0
        self.trial = False  # a trial attempt is in flight
        self.current = 0  # smooth weighted round robin


class Endpoints:
    """The attempt stage that routes a service's attempts to its endpoints (see the module's docstring)."""

    def __init__(
        self,
        config: ServiceConfig,
        *,
        clock: Callable[[], float],
        breaker: Breaker,
        store: EjectionStore | None = None,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.name = config.name
        self.outlier = config.outlier
        self.balance = config.balance
        self.endpoints = tuple(Endpoint(e.url, e.weight, e.priority) for e in config.endpoints)
        # Longest root first, so that a URL is matched to the most specific endpoint it was built against.
        self._roots = sorted(self.endpoints, key=lambda e: len(e.url), reverse=True)
        self._base = config.base_url  # the root calls build their URLs against (the first endpoint, or discovery's)
        # Discovery (``_discovery.py``): when to look the name up again, and what does it.
        self.refresh_due = math.inf
        self.refresher: Callable[[], None] | None = None
        self._clock = clock
        self._breaker = breaker
        self._store = store
        self._random = random
        self._lock = threading.Lock()
        self.max_ejected = self._max_ejected(len(self.endpoints))

    def _max_ejected(self, count: int) -> int:
        percent = self.outlier.max_ejected_percent
        return 0 if percent == 0 else max(1, count * percent // 100)

    def replace(self, configs: list[EndpointConfig], *, name: str | None = None) -> None:
        """A new set of endpoints (discovery's): those still in it keep their state."""
        with self._lock:
            old = {e.url: e for e in self.endpoints}
            self.endpoints = tuple(old.get(c.url) or Endpoint(c.url, c.weight, c.priority, name) for c in configs)
            self._roots = sorted(self.endpoints, key=lambda e: len(e.url), reverse=True)
            self.max_ejected = self._max_ejected(len(self.endpoints))

    # -- the stage ---------------------------------------------------------------------------------------------------

    def admit(self, call: CallView) -> Endpoint | Rejection:
        tried: tuple[Endpoint, ...] = ()
        if call.attempts:
            mark = _TRIED.get(None)
            if mark is not None and mark[0] == id(call):
                tried = mark[1]
        now = self._clock()
        if now >= self.refresh_due and self.refresher is not None:
            self.refresh_due = math.inf  # the refresher sets the next one
            self.refresher()
        with self._lock:
            chosen = self._choose(now, tried)
            if chosen is None:
                soonest = min(e.ejected_until for e in self.endpoints) - now
                return Rejection(
                    Reason.CIRCUIT_OPEN,
                    max(soonest, 0.0),
                    f"every endpoint of service {self.name!r} is ejected",
                )
            chosen.in_flight += 1
            if 0.0 < chosen.ejected_until <= now:
                chosen.trial = True  # its ejection ended: this attempt is its trial
        _TRIED.set((id(call), (*tried, chosen)))
        return chosen

    def record(self, endpoint: Endpoint, outcome: Outcome, seconds: float) -> None:
        del seconds
        if outcome.kind in NO_VERDICT:
            self.release(endpoint)
            return
        failed = self._breaker.is_failure(outcome)
        now = self._clock()
        with self._lock:
            endpoint.in_flight -= 1
            trial, endpoint.trial = endpoint.trial, False
            endpoint.calls += 1
            if not failed:
                endpoint.failures = 0
                if trial:
                    endpoint.ejected_until = 0.0
                elif endpoint.ejections and now - endpoint.ejected_until > self.outlier.max_ejection:
                    endpoint.ejections = 0  # long healthy: the next ejection is a first one again
                report = endpoint.shared_failures or trial
                endpoint.shared_failures = False
            else:
                endpoint.errors += 1
                endpoint.failures += 1
                report = False
        store = self._store
        if failed:
            if store is not None:
                until = store.failure(self, endpoint, trial=trial)
                if until is not None:  # the fleet decided (None: it did not answer, decide here)
                    with self._lock:
                        endpoint.shared_failures = True
                        if until > 0:
                            if endpoint.ejected_until <= now:
                                endpoint.ejections += 1
                            endpoint.ejected_until = now + until
                            endpoint.failures = 0
                    return
            with self._lock:
                self._maybe_eject(endpoint, now, trial)
        elif report and store is not None:
            store.success(self, endpoint)

    def release(self, endpoint: Endpoint) -> None:
        with self._lock:
            endpoint.in_flight -= 1
            endpoint.trial = False

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        for endpoint in self.endpoints:
            endpoint.in_flight = 0
            endpoint.trial = False

    # -- routing -----------------------------------------------------------------------------------------------------

    @property
    def host_header(self) -> str:
        """The ``Host`` of the URLs calls build (a discovered endpoint's requests carry it)."""
        return urlsplit(self._base).netloc

    def tls_name(self, host: str | None) -> str | None:
        """The DNS name of a discovered endpoint whose address is ``host`` (a TLS server name), or ``None``."""
        for endpoint in self.endpoints:
            if endpoint.name is not None and urlsplit(endpoint.url).hostname == host:
                return endpoint.name
        return None

    def url_for(self, endpoint: Endpoint, url: str) -> str:
        """``url`` (built against any endpoint's root) moved to ``endpoint``'s root; another URL unchanged."""
        base = self._base
        if url.startswith(base) and endpoint.url != base:
            return endpoint.url + url[len(base) :]
        for root in self._roots:
            if url.startswith(root.url):
                return endpoint.url + url[len(root.url) :] if root is not endpoint else url
        return url

    # -- control and reports -----------------------------------------------------------------------------------------

    def usable(self) -> bool:
        """Whether some endpoint is neither ejected nor failing in a row up to the ejection threshold."""
        now = self._clock()
        threshold = self.outlier.consecutive_failures
        return any(e.ejected_until <= now and e.failures < threshold for e in self.endpoints)

    def eject(self, endpoint: Endpoint, seconds: float) -> None:
        """Eject ``endpoint`` for ``seconds`` (the fleet's decision, or an operator's)."""
        with self._lock:
            endpoint.ejected_until = self._clock() + seconds
            endpoint.failures = 0

    def reset(self) -> None:
        with self._lock:
            for endpoint in self.endpoints:
                endpoint.ejected_until = 0.0
                endpoint.ejections = endpoint.failures = endpoint.calls = endpoint.errors = 0

    def snapshot(self) -> list[dict[str, Any]]:
        """Per endpoint: url, state, in flight, calls, errors, failures in a row, seconds left of its ejection."""
        now = self._clock()
        rows = []
        for e in self.endpoints:
            left = e.ejected_until - now if e.ejected_until > now else None
            state = EJECTED if left is not None else TRIAL if e.trial else HEALTHY
            rows.append(
                {
                    "url": e.url,
                    "weight": e.weight,
                    "priority": e.priority,
                    "state": state,
                    "in_flight": e.in_flight,
                    "calls": e.calls,
                    "errors": e.errors,
                    "consecutive_failures": e.failures,
                    "ejections": e.ejections,
                    "ejected_for": round(left, 3) if left is not None else None,
                }
            )
        return rows

    def report(self) -> dict[str, dict[str, Any]]:
        """``snapshot()`` keyed by URL, as the health report shows it."""
        return {row.pop("url"): row for row in self.snapshot()}

    # -- internals (the lock held) -----------------------------------------------------------------------------------

    def _available(self, endpoint: Endpoint, now: float) -> bool:
        if endpoint.ejected_until > now:
            return False
        return not (endpoint.trial and _in_trial(endpoint))

    def _choose(self, now: float, tried: tuple[Endpoint, ...]) -> Endpoint | None:
        available = [e for e in self.endpoints if self._available(e, now)]
        if not available:
            # Only trials in flight: go there anyway rather than refuse (what is ejected stays out).
            available = [e for e in self.endpoints if e.ejected_until <= now]
            if not available:
                return None
        best = min(e.priority for e in available)
        group = [e for e in available if e.priority == best]
        if tried:
            fresh = [e for e in group if e not in tried]
            if not fresh:  # the whole group was tried: a higher priority's endpoint, if any is available
                fresh = [e for e in available if e not in tried]
                if fresh:
                    best = min(e.priority for e in fresh)
                    fresh = [e for e in fresh if e.priority == best]
            group = fresh or group
        if len(group) == 1:
            return group[0]
        if self.balance == "round_robin":
            total = 0
            chosen = group[0]
            for e in group:
                e.current += e.weight
                total += e.weight
                if e.current > chosen.current:
                    chosen = e
            chosen.current -= total
            return chosen
        first, second = self._draw(group), self._draw(group)
        if first is second:
            return first
        return first if first.in_flight * second.weight <= second.in_flight * first.weight else second

    def _draw(self, group: list[Endpoint]) -> Endpoint:
        total = sum(e.weight for e in group)
        point = self._random() * total
        for e in group:
            point -= e.weight
            if point < 0:
                return e
        return group[-1]

    def _maybe_eject(self, endpoint: Endpoint, now: float, trial: bool) -> None:
        if endpoint.ejected_until > now:
            return  # an attempt admitted before the ejection
        if not trial and endpoint.failures < self.outlier.consecutive_failures:
            return
        ejected = sum(1 for e in self.endpoints if e.ejected_until > now)
        if ejected >= self.max_ejected:
            return
        endpoint.ejections += 1
        endpoint.ejected_until = now + self.ejection_seconds(endpoint.ejections)
        endpoint.failures = 0

    def ejection_seconds(self, ejections: int) -> float:
        """How long the ``ejections``-th ejection in a row lasts."""
        return float(min(self.outlier.base_ejection * ejections, self.outlier.max_ejection))


def _in_trial(endpoint: Endpoint) -> bool:
    # Its ejection has ended and no success has followed yet.
    return endpoint.ejected_until != 0.0


class ServiceBreaker:
    """The service's breaker in a service with endpoints: it hears of a failure only when no endpoint is usable any
    more, so one bad endpoint never opens it (``Policy.breaker`` stays the breaker itself)."""

    def __init__(self, breaker: Breaker, endpoints: Endpoints) -> None:
        self.breaker = breaker
        self.endpoints = endpoints

    def admit(self, call: CallView) -> Any:
        return self.breaker.admit(call)

    def at_send(self, call: object, permit: int | None) -> Rejection | None:
        return self.breaker.at_send(call, permit)

    def record(self, permit: int | None, outcome: Outcome, seconds: float) -> None:
        if self.breaker.is_failure(outcome) and self.endpoints.usable():
            self.breaker.release(permit)  # another endpoint is still there: not the service's failure
            return
        self.breaker.record(permit, outcome, seconds)

    def release(self, permit: int | None) -> None:
        self.breaker.release(permit)

    def reset_after_fork(self) -> None:
        self.breaker.reset_after_fork()  # it stands in the attempt stages in place of the breaker


def route_httpx(endpoints: Endpoints, permits: list[Any], index: int, request: httpx.Request) -> None:
    """Send the httpx ``request`` to the endpoint its attempt was admitted to (URL and ``Host``)."""
    endpoint: Endpoint = permits[index]
    url = str(request.url)
    moved = endpoints.url_for(endpoint, url)
    if moved != url:
        request.url = type(request.url)(moved)  # httpx's URL, or httpx2's
        if endpoint.name is None:
            request.headers["Host"] = request.url.netloc.decode("ascii")
        else:  # an address of a DNS name: the name is the Host, and the TLS server name checked
            request.headers["Host"] = endpoints.host_header
            request.extensions["sni_hostname"] = endpoint.name
