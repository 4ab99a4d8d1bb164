"""Registry: the process's services by name, their accessors, health, probes, close() and the fork reset."""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._config import HTTPX_CLIENTS, HealthConfig, OutboundConfig, parse_config
from ._errors import RegistryClosedError, ServiceLookupError
from ._events import Observer
from ._lifecycle import on_fork
from ._logging import install_secrets_filter
from ._metrics import metric_observers
from ._service import Service
from ._state import state_backend, switches
from .health import HealthReport, ProbeResult, build_report, worst

if TYPE_CHECKING:
    # The backends are imported when a client of theirs is first made: `import outbound` needs neither library.
    from ._backends.httpx import InnerTransport, ServiceAsyncClient, ServiceClient
    from ._backends.requests import ServiceSession


class Registry:
    """One managed client per configured upstream service.

    Build it once per process with ``Registry.from_mapping(settings)``; close it at shutdown (or use it as a
    context manager). After ``os.fork()`` the child drops inherited connections and locks by itself.
    """

    def __init__(
        self,
        config: OutboundConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        transports: Mapping[str, InnerTransport] | None = None,
    ) -> None:
        transports = dict(transports or {})
        for name in transports:
            if name not in config.services or config.services[name].client not in HTTPX_CLIENTS:
                raise ServiceLookupError(
                    f"transports[{name!r}]: an inner transport can only be given to a configured 'httpx' or 'httpx2' "
                    "service"
                )
        self.config = config
        # No network I/O here (Django builds the registry for every manage.py command): a fleet backend connects
        # on first use, in each process. Each service gets its link to the fleet as it is built.
        self._state = state_backend(config.state)
        self._services = {
            name: Service(
                service,
                clock=clock,
                transport=transports.get(name),
                state=config.state,
                min_time=config.deadline.min_time,
                link=self._state.link(service),
            )
            for name, service in config.services.items()
        }
        self._closed = False
        if config.health.history is not None:
            from ._history import History  # imported only when a history is kept

            for service in self._services.values():
                service.history = History(config.health.history, pause=service.policy.pause)
                # Its calls as the statistics get them (no event built on every call); its other events as an
                # observer's.
                service.policy.stats.also_record(service.history.record_call)
                service.policy.add_observer(service.history)
        self._state.attach(self._services)
        self._switches = switches(config.state, self._services)
        for observer in metric_observers(config.metrics, self):
            self.add_observer(observer)
        install_secrets_filter(frozenset().union(*(s.sensitive_headers for s in config.services.values())))
        # In a forked child each service drops the inherited connections and locks (held weakly: a discarded
        # registry is not kept alive by it).
        on_fork(self, child=Registry._after_fork_in_child)

    @classmethod
    def from_mapping(
        cls,
        mapping: Mapping[str, Any],
        *,
        clock: Callable[[], float] = time.monotonic,
        transports: Mapping[str, InnerTransport] | None = None,
    ) -> Registry:
        """Validate the ``OUTBOUND`` mapping and build the registry (no network I/O).

        Args:
            mapping: the settings (Django's ``settings.OUTBOUND``, Flask's ``app.config["OUTBOUND"]``).
            clock: the monotonic clock the policies read (a test's fake clock moves breakers without sleeping).
            transports: for httpx and httpx2 services, the transport the managed client sends through instead of
                the library's own (``httpx.MockTransport``, ``WSGITransport``, ``ASGITransport``..., httpx2's for an
                httpx2 service), or a callable making one per client; the service's policy still runs around it.

        Raises:
            ConfigError: naming the service and key of every mistake.
            ServiceLookupError: ``transports`` names a service that is not a configured httpx or httpx2 service.
        """
        return cls(parse_config(mapping), clock=clock, transports=transports)

    @property
    def services(self) -> tuple[str, ...]:
        """The configured service names, in settings order."""
        return tuple(self._services)

    @property
    def health_config(self) -> HealthConfig:
        return self.config.health

    @property
    def closed(self) -> bool:
        return self._closed

    def __getitem__(self, name: str) -> Service:
        try:
            return self._services[name]
        except KeyError:
            raise self._unknown(name) from None

    def __contains__(self, name: object) -> bool:
        return name in self._services

    def __iter__(self) -> Iterator[Service]:
        return iter(self._services.values())

    def __len__(self) -> int:
        return len(self._services)

    def session(self, name: str) -> ServiceSession:
        """The ``requests.Session`` of a ``client: "requests"`` service."""
        return self._open(name).session()

    def client(self, name: str) -> ServiceClient:
        """The ``httpx.Client`` of a ``client: "httpx"`` service, the ``httpx2.Client`` of a ``client: "httpx2"`` one.

        Typed as httpx's: httpx2's client has the same methods (``typing.cast(httpx2.Client, ...)`` names it).
        """
        return self._open(name).client()

    def async_client(self, name: str) -> ServiceAsyncClient:
        """The ``httpx.AsyncClient`` of a ``client: "httpx"`` service (``httpx2.AsyncClient`` of a ``client: "httpx2"``
        one) for the running event loop."""
        return self._open(name).async_client()

    def report(self, *, service: str | None = None, history: bool = False) -> HealthReport:
        """The typed health snapshot: each service's breaker, pool, stats and last error.

        With a fleet (``state.backend: "redis"``) the breakers and stats of shared services are the fleet's: its
        breaker states and its counters summed over every live process (one Redis round trip); pools stay this
        process's. When the fleet's state cannot be read the report is this process's own, and says so: ``scope``
        ``"process"``, ``state_backend.status`` ``"unreachable"``, and a status of at least ``degraded``. Otherwise
        no network I/O.

        Args:
            service: report on this service alone; the overall status follows the same rules for it alone.
            history: each service's recent history too, when ``health.history`` keeps one.

        Raises:
            ServiceLookupError: ``service`` is not configured.
        """
        services = [self[service]] if service is not None else list(self._services.values())
        fleet = self._state.view() if self._state.scope == "fleet" else None
        report = build_report(
            s.health(fleet.services.get(s.name) if fleet else None, history=history) for s in services
        )
        backend = self._state.health()
        if backend is None:
            return report
        # Cut off from the fleet, this process may miss an opening elsewhere: never "ok".
        status = report.status if backend.status == "ok" else worst(report.status, "degraded")
        return HealthReport(
            status=status,
            services=report.services,
            scope="fleet" if fleet is not None else "process",  # the fleet's figures, or only this process's
            workers=fleet.workers if fleet is not None else None,
            state_backend=backend,
        )

    def health(self, *, details: bool = True, service: str | None = None, history: bool = False) -> dict[str, Any]:
        """``report()`` as the JSON-ready dict ``/health/outbound`` serves; ``details=False`` gives
        ``{"status": ...}`` only, ``history=True`` each service's recent history too (``?history=1``).

        Raises:
            ServiceLookupError: ``service`` is not configured.
        """
        return self.report(service=service, history=history and details).as_dict(details=details)

    def add_observer(self, observer: Observer) -> None:
        """Deliver every service's events (``outbound.Observer``) to ``observer`` from now on."""
        for service in self._services.values():
            service.policy.add_observer(observer)

    def reset(self, name: str | None = None) -> None:
        """Close the breaker (lifting an isolation) and clear the failure counts, the retry budget and the stats of
        service ``name``, or of every service. With a fleet, the breaker closes for every process. For tests, and
        for an operator who knows the upstream is back.

        Raises:
            ServiceLookupError: ``name`` is not configured.
        """
        for service in [self[name]] if name is not None else list(self._services.values()):
            service.reset()
            self._state.reset(service.name)

    def isolate(self, name: str, seconds: float | None = None) -> None:
        """Force ``name``'s breaker open (state ``"isolated"``) until ``reset(name)``, or for ``seconds``: calls fail
        fast with ``CircuitOpenError`` and the service reports ``down``. With a fleet, for every process.

        Raises:
            ServiceLookupError: ``name`` is not configured.
            ValueError: ``seconds`` is not a positive number.
        """
        service = self[name]
        if seconds is not None and (isinstance(seconds, bool) or not seconds > 0 or seconds == float("inf")):
            raise ValueError(f"isolate({name!r}, seconds=...) needs a positive number of seconds or None")
        service.policy.breaker.isolate(seconds)
        self._state.isolate(name, seconds)

    def probe(self, name: str | None = None) -> list[ProbeResult]:
        """Send exactly one GET to each service's ``probe`` path (or just ``name``'s), all at once.

        Each probe goes out as the service's calls do (its TLS, proxy, headers and credentials), bounded by its
        connect + read timeouts, without retries, and through a client of its own: the service's breaker and stats
        are left as they are. Services without a ``probe`` path are reported as skipped.

        Raises:
            ServiceLookupError: ``name`` is not configured.
        """
        from ._probe import probe_all  # both client libraries: an operator's command, not an app's import

        targets = [self[name]] if name is not None else list(self._services.values())
        return probe_all(targets)

    def close(self) -> None:
        """Close every pooled socket of every client, including the per-loop async clients. Idempotent.

        Every service is closed even if one fails; the first failure is raised afterwards.
        """
        self._close_shared()
        errors: list[Exception] = []
        for service in self._services.values():
            try:
                service.close()
            except Exception as error:  # noqa: BLE001 (collected and re-raised below)
                errors.append(error)
        if errors:
            raise errors[0]

    async def aclose(self) -> None:
        """``close()`` for async code: the running loop's async clients are awaited."""
        self._close_shared()
        errors: list[Exception] = []
        for service in self._services.values():
            try:
                await service.aclose()
            except Exception as error:  # noqa: BLE001 (collected and re-raised below)
                errors.append(error)
        if errors:
            raise errors[0]

    def _close_shared(self) -> None:
        """The first step of ``close`` and ``aclose``: refuse new clients, and let go of the fleet's state."""
        self._closed = True
        self._state.close()
        if self._switches is not None:
            self._switches.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Registry services={list(self._services)}{' closed' if self._closed else ''}>"

    def _open(self, name: str) -> Service:
        if self._closed:
            raise RegistryClosedError(f"the outbound registry was closed; cannot use service {name!r}")
        if self._state.scope == "fleet":
            self._state.ensure_running()  # a fleet's threads start on first use in each process (after a fork too)
            if self._switches is not None:
                self._switches.ensure()
        return self[name]

    def _after_fork_in_child(self) -> None:
        if not self._closed:
            for service in self._services.values():
                service.reset_after_fork()

    def _unknown(self, name: str) -> ServiceLookupError:
        close = difflib.get_close_matches(name, self._services, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        known = ", ".join(self._services) or "none"
        return ServiceLookupError(
            f"unknown outbound service {name!r}; {hint}configured services: {known} (add it to OUTBOUND['services'])"
        )
