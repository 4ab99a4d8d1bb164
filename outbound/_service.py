"""Service: one upstream's settings, policy and clients.

Clients are built on first use (cheap startup: Django runs ``ready()`` for every management command), then reused
for the life of the process; the library is imported then too (httpx2's only by a ``client: "httpx2"`` service,
through the backend loaded for it: ``_backends/_library.py``). An ``httpx.AsyncClient`` belongs to one event loop —
used from a second loop (after ``asyncio.run()`` twice, or from ``async_to_sync``, which runs a new loop per call)
it fails with ``Event loop is closed`` — so there is one per running loop, closed when that loop shuts down its
async generators (``asyncio.run()``, asgiref's ``async_to_sync``) or when the registry closes.

Every client the service made is a ``ManagedClient`` to it: the service asks it for pool numbers, to drop inherited
connections after ``fork()`` and to shut down, without knowing which library it wraps.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Protocol

from ._breaker import CLOSED
from ._config import HTTPX_CLIENTS, DeadlineConfig, ServiceConfig, StateConfig
from ._errors import RegistryClosedError, ServiceLookupError, redact_url
from ._events import Observer
from ._loops import current_loop
from ._policy import Policy
from ._state import LOCAL, ServiceLink
from .health import BreakerSnapshot, HistorySnapshot, PoolSnapshot, ServiceHealth, service_status

if TYPE_CHECKING:
    import asyncio

    # The backends are imported when a client of theirs is first made: `import outbound` needs neither library.
    from types import ModuleType

    from ._backends.httpx import InnerTransport, ServiceAsyncClient, ServiceClient
    from ._backends.requests import ServiceSession
    from ._history import History
    from ._state import FleetService

CLOSE_WAIT_SECONDS = 5.0  # how long close() waits for a client on another thread's event loop
_closing_tasks: set[asyncio.Task[None]] = set()


class ManagedClient(Protocol):
    """What a service needs of each client it made (a requests session, an httpx client)."""

    def pool_numbers(self) -> tuple[int, int, int]:
        """``(in_use, idle, waiting)`` connections of the client's pools now."""

    def drop_after_fork(self) -> None:
        """In a forked child: close this process's copies of inherited sockets; keep working with new ones."""

    def shutdown(self) -> None:
        """Close for good (the registry closes)."""


class Service:
    """One configured upstream.

    Attributes:
        name: the service's name in the settings.
        config: its validated ``ServiceConfig``.
        policy: its breaker, retry budget and stats.
    """

    def __init__(
        self,
        config: ServiceConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        observers: Iterable[Observer] = (),
        transport: InnerTransport | None = None,
        state: StateConfig | None = None,
        min_time: float = DeadlineConfig().min_time,
        link: ServiceLink = LOCAL,
    ) -> None:
        self.name = config.name
        # The inner transport a test gave an httpx or httpx2 service (Registry(transports=...)).
        self.transport = transport
        self.config = config
        # The settings never change, and the health report shows this on every poll: redact it once.
        self._display_url = redact_url(config.base_url)
        self.policy = Policy(config, clock=clock, observers=observers, state=state, min_time=min_time, link=link)
        self._lock = threading.Lock()
        self._session: ServiceSession | None = None
        self._client: ServiceClient | None = None
        self._clients: list[ManagedClient] = []  # the sync clients made so far
        # Keyed by the asyncio loop, or by the trio run's token.
        self._async_clients: dict[object, ServiceAsyncClient] = {}
        # Keeps each loop's closer generator alive: the loop itself only holds a weak reference.
        self._closers: dict[object, AsyncGenerator[None, None]] = {}
        self._closed = False
        # Its recent history, when health.history keeps one (the registry adds it: an observer like the metrics).
        self.history: History | None = None

    def __repr__(self) -> str:
        return f"<Service {self.name!r} {self.config.client} {self._display_url}>"

    def session(self) -> ServiceSession:
        """The service's ``requests.Session``."""
        if self.config.client != "requests":
            raise ServiceLookupError(
                f"service {self.name!r} uses client {self.config.client!r}: call client({self.name!r}) or "
                f"async_client({self.name!r}) instead of session()"
            )
        session = self._session
        if session is None:
            with self._lock:
                self._check_open()
                if self._session is None:
                    from ._backends.requests import ServiceSession

                    cls = ServiceSession
                    if self.config.sdk is not None:  # a vendor SDK's session (_sdk.py)
                        from ._backends.sdk_requests import SdkServiceSession

                        cls = SdkServiceSession
                    self._session = cls(self.policy)
                    self._clients.append(self._session)
                session = self._session
        return session

    def client(self) -> ServiceClient:
        """The service's ``httpx.Client`` (an ``httpx2.Client`` for a ``client: "httpx2"`` service)."""
        self._require_httpx("client")
        client = self._client
        if client is None:
            with self._lock:
                self._check_open()
                if self._client is None:
                    self._client = self._backend().ServiceClient(self.policy, transport=self.transport)
                    self._clients.append(self._client)
                client = self._client
        return client

    def async_client(self) -> ServiceAsyncClient:
        """The service's ``httpx.AsyncClient`` (``httpx2.AsyncClient``) for the running event loop (asyncio, or a trio
        run). Call it from a coroutine."""
        self._require_httpx("async_client")
        loop = current_loop()
        if loop is None:
            raise RuntimeError(
                f"async_client({self.name!r}) needs a running event loop (asyncio or trio): call it inside a "
                f"coroutine (use client({self.name!r}) in synchronous code)"
            ) from None
        client = self._async_clients.get(loop)
        if client is None:
            with self._lock:
                self._check_open()
                client = self._async_clients.get(loop)
                if client is None:
                    self._forget_closed_loops()
                    client = self._backend().ServiceAsyncClient(self.policy, loop=loop, transport=self.transport)
                    self._async_clients[loop] = client
                    self._close_with_loop(loop, client)
        return client

    def pool(self) -> PoolSnapshot:
        """Connections of this service's clients now, against ``pool.max_connections``."""
        in_use = idle = waiting = 0
        clients: list[ManagedClient | ServiceAsyncClient] = [*self._clients, *list(self._async_clients.values())]
        for client in clients:
            busy, free, queued = client.pool_numbers()
            in_use, idle, waiting = in_use + busy, idle + free, waiting + queued
        return PoolSnapshot(max_connections=self.config.pool.max_connections, in_use=in_use, idle=idle, waiting=waiting)

    def health(self, fleet: FleetService | None = None, *, history: bool = False) -> ServiceHealth:
        """This service's part of the health report (no network I/O): this process's view, or the fleet's breaker
        and summed stats when ``fleet`` is given (its pool, bulkhead, rate window and pause stay this process's);
        with ``history``, its recent history too (the fleet's when the fleet shares one), if it keeps one."""
        policy = self.policy
        breaker = policy.breaker
        pool = self.pool()
        window = breaker.rule.snapshot()
        if fleet is not None:
            state, retry_in, opened_at = fleet.breaker.state, fleet.breaker.retry_in, fleet.breaker.opened_at
            stats, last_error, opened_by = fleet.stats, fleet.last_error, fleet.breaker.opened_by
            # A rate window is this process's own (only its openings are shared); consecutive failures are the fleet's.
            failures = fleet.breaker.failures if breaker.rule.fleet_counts else window["failures"]
        else:
            state, retry_in, opened_at = breaker.effective_state(), breaker.retry_in(), breaker.opened_at
            failures, stats, last_error = window["failures"], policy.stats.snapshot(), policy.stats.last_error
            opened_by = breaker.opened_by
        bulkhead = policy.bulkhead.snapshot() if policy.bulkhead is not None else None
        paused_for = policy.pause.paused_for() if policy.pause is not None else None
        counts = policy.would_reject
        observing = tuple(counts.protections) if counts is not None and not counts.enforcing else ()
        judged = CLOSED if "breaker" in observing else state  # an observing breaker refuses nothing
        return ServiceHealth(
            name=self.name,
            status=service_status(judged, pool, bulkhead=bulkhead, paused=paused_for is not None, recent=stats.recent),
            client=self.config.client,
            base_url=self._display_url,
            critical=self.config.critical,
            breaker=BreakerSnapshot(
                state=state,
                failures=failures,
                opened_at=opened_at,
                retry_in=retry_in,
                mode=self.config.breaker.mode,
                calls=window.get("calls"),
                failure_rate=window.get("failure_rate"),
                slow_call_rate=window.get("slow_call_rate"),
                opened_by=opened_by,
            ),
            pool=pool,
            stats=stats,
            last_error=last_error,
            bulkhead=bulkhead,
            rate_limit=policy.rate_limit.snapshot() if policy.rate_limit is not None else None,
            paused_for=paused_for,
            endpoints=policy.endpoints.report() if policy.endpoints is not None else None,
            observing=observing,
            would_reject=counts.counts() if counts is not None else None,
            would_reject_last_hour=counts.last_hour() if counts is not None else None,
            chaos=policy.chaos.state().as_dict() if policy.chaos is not None else None,
            cache=policy.cache.snapshot() if policy.cache is not None else None,
            history=self._history(fleet) if history else None,
            adaptive=_adaptive(policy.stages),
        )

    def _history(self, fleet: FleetService | None) -> HistorySnapshot | None:
        if self.history is None:
            return None
        if fleet is not None and fleet.history is not None:
            return fleet.history
        return self.history.snapshot()

    def reset(self) -> None:
        """Close the breaker and clear what the policy counted and learned, and the stats (``Policy.reset``)."""
        self.policy.reset()

    def close(self) -> None:
        """Close every client and pooled socket of this service; calls in flight stop at their next attempt."""
        self.policy.close()
        with self._lock:
            self._closed = True
            clients = list(self._clients)
            async_clients = list(self._async_clients.items())
            self._async_clients.clear()
            self._closers.clear()
        for client in clients:
            client.shutdown()
        for loop, async_client in async_clients:
            _close_on_loop(loop, async_client)

    async def aclose(self) -> None:
        """Close every client; the running loop's async client is awaited here."""
        loop = current_loop()
        with self._lock:
            own = self._async_clients.pop(loop, None) if loop is not None else None
            self._closers.pop(loop, None) if loop is not None else None
        if own is not None:
            self.policy.close()
            await own.shutdown()
        self.close()

    def reset_after_fork(self) -> None:
        """In a forked child: drop inherited connections and locks; the same client objects keep working."""
        self._lock = threading.Lock()
        self.policy.reset_after_fork()
        if self.history is not None:
            self.history.reset_after_fork()
        for client in self._clients:
            client.drop_after_fork()
        # The parent's event loops do not run here; their clients cannot be closed or used.
        self._async_clients = {}
        self._closers = {}

    def _require_httpx(self, accessor: str) -> None:
        if self.config.client not in HTTPX_CLIENTS:
            raise ServiceLookupError(
                f"service {self.name!r} uses client 'requests': call session({self.name!r}) instead of {accessor}()"
            )

    def _backend(self) -> ModuleType | SimpleNamespace:
        # The httpx backend for this service's library (httpx2's is the same code, loaded for httpx2).
        from ._backends._library import LIBRARIES

        library = LIBRARIES[self.config.client]
        if self.config.sdk is not None:  # a vendor SDK's clients (_sdk.py): subclasses, for these services only
            return SimpleNamespace(
                ServiceClient=library.backend("sdk").SdkServiceClient,
                ServiceAsyncClient=library.backend("sdk").SdkServiceAsyncClient,
            )
        return library.backend("httpx")

    def _check_open(self) -> None:
        if self._closed:
            raise RegistryClosedError(f"the outbound registry was closed; service {self.name!r} is unusable")

    def _forget_closed_loops(self) -> None:
        # A loop closed without shutting down its async generators (a bare loop.close()) left its client behind.
        import asyncio  # loaded already: an async client was made in a loop of it

        closed = [
            loop for loop in self._async_clients if isinstance(loop, asyncio.AbstractEventLoop) and loop.is_closed()
        ]
        for loop in closed:
            del self._async_clients[loop]
            self._closers.pop(loop, None)

    def _close_with_loop(self, loop: object, client: ServiceAsyncClient) -> None:
        # asyncio.run() and asgiref's async_to_sync call loop.shutdown_asyncgens() before closing the loop, and
        # trio.run() finalizes the async generators still alive when its run ends. An async generator first iterated
        # in this loop is registered with it, and its `finally` then runs while the loop still works: the one
        # reliable moment to close a per-loop client.
        async def closer() -> AsyncGenerator[None, None]:
            try:
                yield
            finally:
                with self._lock:
                    if self._async_clients.get(loop) is client:
                        del self._async_clients[loop]
                    self._closers.pop(loop, None)
                await client.shutdown()

        generator = closer()
        step = generator.__anext__()
        with contextlib.suppress(StopIteration):
            step.send(None)  # runs up to the yield without awaiting anything; registers with the running loop
        self._closers[loop] = generator


def _close_on_loop(loop: object, client: ServiceAsyncClient) -> None:
    asyncio = sys.modules.get("asyncio")
    if asyncio is None or not isinstance(loop, asyncio.AbstractEventLoop):
        _close_in_trio(loop, client)
        return
    if loop.is_closed():
        return
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        # close() was called synchronously from inside this loop: it cannot block on it. Schedule the close, and
        # hold the task (the loop keeps only a weak reference to it).
        task = loop.create_task(client.shutdown())
        _closing_tasks.add(task)
        task.add_done_callback(_closing_tasks.discard)
        return
    if loop.is_running():
        future = asyncio.run_coroutine_threadsafe(client.shutdown(), loop)
    else:
        # An idle loop: run it just long enough to close the client, in a helper thread, because this thread may
        # be running a loop of its own (a loop cannot run inside another).
        import concurrent.futures

        future = concurrent.futures.ThreadPoolExecutor(1).submit(loop.run_until_complete, client.shutdown())
    try:
        future.result(timeout=CLOSE_WAIT_SECONDS)
    except Exception:  # noqa: BLE001 (best effort at shutdown; the loop's thread may be stuck)
        future.cancel()


def _close_in_trio(token: object, client: ServiceAsyncClient) -> None:
    # A trio run may be going on in another thread (or this one): schedule the close as a system task of that run,
    # without waiting. A finished run has closed its client already (its async generators were finalized).
    try:
        import trio

        token.run_sync_soon(trio.lowlevel.spawn_system_task, client.shutdown)  # type: ignore[attr-defined]
    except (ImportError, RuntimeError):  # trio.RunFinishedError is a RuntimeError
        pass


def _adaptive(stages: tuple[Any, ...]) -> dict[str, Mapping[str, Any]] | None:
    """What the adaptive stages learned, keyed by their ``report_key`` (``None``: no adaptive stage)."""
    learned = {stage.report_key: stage.snapshot() for stage in stages if hasattr(stage, "report_key")}
    return learned or None
