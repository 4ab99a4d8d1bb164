"""The cache layer's decisions, counters and background revalidation, for every client alike.

The client adapters (``_requests.py``, ``_httpx.py``) do the I/O: they ask ``lookup`` for a stored response, answer
a fresh one at once, send the call down through the policy otherwise, and on a refusal, a failed attempt or an
error status ask ``on_error`` whether a stored response (or the fallback) answers instead. Storage trouble is
logged once per kind and the call goes on as if uncached.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._errors import redact_url
from .._events import CacheServed, Hooks
from .._logging import call_logger
from ._entry import CorruptEntry, Entry
from ._rfc import decide, initial_age, stored_headers
from ._switch import CACHING

if TYPE_CHECKING:
    from .._config import ServiceConfig, StateConfig
    from ._settings import CacheConfig, FallbackConfig
    from ._storage import Storage

logger = logging.getLogger("outbound.cache")

# RFC 5861: the statuses a stored response may replace (as failures of the upstream).
ERROR_STATUSES = frozenset({500, 502, 503, 504})
CACHED_METHODS = frozenset({"GET", "HEAD"})
# What a response of the cache says of itself: httpx's response.extensions / requests' response attributes.
CACHE_EXTENSION = "outbound.cache"  # "hit" | "stale" | "revalidated" | "fallback" (absent: from the upstream)
STALE_EXTENSION = "outbound.stale"  # True when the answer is past its freshness
# Headers of a caller's own conditional request: the cache then passes the call through untouched.
_CONDITIONAL = frozenset({"if-none-match", "if-modified-since", "if-match", "if-unmodified-since", "if-range", "range"})
_REVALIDATION_QUEUE = 256
STORAGE_RETRY_SECONDS = 1.0  # after a storage error, the cache is skipped this long (a Redis that is down)
REDIS_TIMEOUT = 0.25  # seconds per Redis command of the cache at least (a busy Redis is slower than a down one)


@dataclass(slots=True)
class CacheCounts:
    """What the cache did, since the start or the last reset."""

    hits: int = 0  # fresh stored responses returned
    misses: int = 0  # calls the cache had nothing usable for
    stale: int = 0  # stored responses returned in place of an error (stale-if-error)
    stale_while_revalidate: int = 0  # stale responses returned while a background call refreshes them
    revalidations: int = 0  # refreshes sent to the upstream (background, or conditional in the call)
    stored: int = 0
    fallbacks: int = 0
    storage_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class Found:
    """A stored response found for a request, and what it may do now."""

    __slots__ = ("age", "entry", "fresh", "key")

    def __init__(self, key: str, entry: Entry, age: float) -> None:
        self.key = key
        self.entry = entry
        self.age = age
        self.fresh = age < entry.lifetime

    @property
    def within_swr(self) -> bool:
        return self.age < self.entry.lifetime + self.entry.stale_while_revalidate

    def answers_error(self, now: float) -> bool:
        return self.entry.age(now) <= self.entry.lifetime + self.entry.stale_if_error


class CacheLayer:
    """One service's cache (``config``) and fallback, for all its clients."""

    def __init__(
        self,
        service: ServiceConfig,
        config: CacheConfig | None,
        fallback: FallbackConfig | None,
        state: StateConfig | None,
        *,
        now: Callable[[], float] = time.time,
        hooks: Hooks | None = None,
    ) -> None:
        self.name = service.name
        # The policy's observers (the same object: one added later is seen here too), told when the cache answers a
        # failed call; the event is built only when one of them listens (``served``).
        self.hooks = hooks if hooks is not None else Hooks()
        self.config = config
        self.fallback = fallback
        self.now = now
        self.counts = CacheCounts()
        self._lock = threading.Lock()
        self._logged: set[str] = set()
        self._skip_until = 0.0
        total = service.timeout.total
        self.lock_seconds = min(max(total if total is not None else 10.0, 1.0), 60.0)
        self.storage: Storage | None = _storage(service, config, state) if config is not None else None
        self._jobs: queue.Queue[tuple[str, Callable[[], None]]] | None = None
        self._worker: threading.Thread | None = None
        self._closed = False

    # -- counting and logging ------------------------------------------------------------------------------------

    def count(self, name: str) -> None:
        with self._lock:
            setattr(self.counts, name, getattr(self.counts, name) + 1)

    def log_once(self, kind: str, message: str, *args: object) -> None:
        if kind not in self._logged:
            self._logged.add(kind)
            logger.warning(message, *args)

    def _storage_failed(self, action: str, error: BaseException) -> None:
        self.count("storage_errors")
        self._skip_until = time.monotonic() + STORAGE_RETRY_SECONDS
        self.log_once(
            f"storage:{action}:{type(error).__name__}",
            "outbound: service %r: the cache could not %s (%s: %s); calls go to the upstream as if uncached",
            self.name,
            action,
            type(error).__name__,
            error,
        )

    # -- lookup and store ----------------------------------------------------------------------------------------

    def key(self, method: str, url: str) -> str:
        return f"{method} {url}"

    def lookup(self, method: str, url: str, headers: Mapping[str, str]) -> Found | None:
        """The stored response for this request (Vary checked), or ``None``."""
        storage = self.storage
        if storage is None or (self._skip_until and time.monotonic() < self._skip_until):
            return None
        key = self.key(method, url)
        try:
            entry = storage.get(key)
        except CorruptEntry as error:
            self.count("storage_errors")
            self.log_once(
                "corrupt", "outbound: service %r: a corrupt or foreign cache entry was ignored (%s)", self.name, error
            )
            return None
        except Exception as error:  # noqa: BLE001 (a storage that is down: the call goes upstream)
            self._storage_failed("read", error)
            return None
        if entry is None:
            return None
        if self.config is not None and len(entry.body) > self.config.max_entry_bytes:
            self.count("storage_errors")
            self.log_once("foreign", "outbound: service %r: a cache entry larger than allowed was ignored", self.name)
            return None
        for name, value in entry.vary:
            if name == "*" or (headers.get(name) or "") != value:
                return None
        return Found(key, entry, entry.age(self.now()))

    def passes_through(self, method: str, headers: Mapping[str, str]) -> bool:
        """A call the cache leaves alone: another method, the caller's own conditional or range request, or every call
        while tests turned caching off (``outbound.testing.no_cache``; the fallback still answers)."""
        if not CACHING.enabled or method not in CACHED_METHODS:
            return True
        return any(name.lower() in _CONDITIONAL for name in headers)  # a call's few headers, not six lookups

    def store(
        self,
        method: str,
        url: str,
        request_headers: Mapping[str, str],
        status: int,
        response_headers: list[tuple[str, str]],
        body: bytes,
        *,
        decoded: bool,
    ) -> bool:
        """Store a response the upstream sent, if RFC 9111 and the size bound allow; ``True`` when stored."""
        config = self.config
        storage = self.storage
        if config is None or storage is None:
            return False
        freshness = decide(
            method,
            url,
            request_headers.items(),
            status,
            response_headers,
            ttl=config.ttl,
            stale_if_error=config.stale_if_error,
            stale_while_revalidate=config.stale_while_revalidate,
        )
        if freshness is None or (
            freshness.lifetime <= 0 and freshness.stale_if_error <= 0 and freshness.stale_while_revalidate <= 0
        ):
            return False
        if "*" in freshness.vary:
            return False
        if len(body) > config.max_entry_bytes:
            self.log_once(
                "too_large",
                "outbound: service %r: a response of %d bytes was not cached (cache.max_entry_bytes is %d)",
                self.name,
                len(body),
                config.max_entry_bytes,
            )
            return False
        entry = Entry(
            status=status,
            headers=tuple(stored_headers(response_headers, decoded=decoded)),
            body=body,
            stored_at=self.now(),
            initial_age=initial_age(response_headers),
            lifetime=freshness.lifetime,
            stale_if_error=freshness.stale_if_error,
            stale_while_revalidate=freshness.stale_while_revalidate,
            vary=tuple((name, request_headers.get(name) or "") for name in freshness.vary),
        )
        try:
            storage.put(self.key(method, url), entry)
        except Exception as error:  # noqa: BLE001 (a storage that is down: the response still goes back)
            self._storage_failed("write", error)
            return False
        self.count("stored")
        return True

    def refresh(self, found: Found, response_headers: Iterable[tuple[str, str]]) -> Entry:
        """A 304 answered a conditional revalidation: the stored response, fresh again, with the new headers."""
        entry = found.entry
        updates = {name.lower(): value for name, value in response_headers if name.lower() not in ("content-length",)}
        headers = [(name, updates.pop(name.lower(), value)) for name, value in entry.headers]
        headers += [(name, value) for name, value in updates.items() if name not in ("age", "transfer-encoding")]
        config = self.config
        freshness = (
            decide(
                "GET",
                "",
                (),
                entry.status,
                headers,
                ttl=config.ttl,
                stale_if_error=config.stale_if_error,
                stale_while_revalidate=config.stale_while_revalidate,
            )
            if config is not None
            else None
        )
        renewed = Entry(
            status=entry.status,
            headers=tuple(headers),
            body=entry.body,
            stored_at=self.now(),
            initial_age=0.0,
            lifetime=freshness.lifetime if freshness is not None else entry.lifetime,
            stale_if_error=freshness.stale_if_error if freshness is not None else entry.stale_if_error,
            stale_while_revalidate=(
                freshness.stale_while_revalidate if freshness is not None else entry.stale_while_revalidate
            ),
            vary=entry.vary,
        )
        if self.storage is not None:
            try:
                self.storage.put(found.key, renewed)
            except Exception as error:  # noqa: BLE001
                self._storage_failed("write", error)
        return renewed

    def validators(self, found: Found) -> dict[str, str]:
        """The conditional headers that revalidate ``found`` (none when it has no validator)."""
        conditional: dict[str, str] = {}
        for name, value in found.entry.headers:
            lower = name.lower()
            if lower == "etag":
                conditional["If-None-Match"] = value
            elif lower == "last-modified":
                conditional["If-Modified-Since"] = value
        return conditional

    # -- background revalidation (stale-while-revalidate) -------------------------------------------------------

    def claim(self, key: str) -> bool:
        """Take the right to refresh ``key`` (one refresh per key; across the fleet with Redis storage)."""
        if self.storage is None:
            return False
        try:
            return self.storage.claim(key, self.lock_seconds)
        except Exception as error:  # noqa: BLE001
            self._storage_failed("lock", error)
            return False

    def revalidate_in_background(self, key: str, job: Callable[[], None]) -> None:
        """Run ``job`` on the layer's one worker thread, if nobody refreshes ``key`` already."""
        if self._closed or not self.claim(key):
            return
        with self._lock:
            if self._worker is None or not self._worker.is_alive():
                self._jobs = queue.Queue(_REVALIDATION_QUEUE)
                self._worker = threading.Thread(
                    target=self._work, args=(self._jobs,), name=f"outbound-cache-{self.name}", daemon=True
                )
                self._worker.start()
            jobs = self._jobs
        assert jobs is not None
        try:
            jobs.put_nowait((key, job))
        except queue.Full:
            self.log_once("queue_full", "outbound: service %r: too many background revalidations queued", self.name)

    def _work(self, jobs: queue.Queue[tuple[str, Callable[[], None]]]) -> None:
        while True:
            key, job = jobs.get()
            if not key:
                return
            self.run_revalidation(job)

    def run_revalidation(self, job: Callable[[], Any]) -> Any:
        self.count("revalidations")
        try:
            return job()
        except Exception as error:  # noqa: BLE001 (a failed refresh leaves the stored response; the next call sees it)
            logger.debug("outbound: service %r: background revalidation failed: %r", self.name, error)
            return None

    # -- after the call failed ---------------------------------------------------------------------------------

    def stale_for_error(self, found: Found | None, method: str, url: object, error: str) -> bool:
        """Whether ``found`` may answer instead of the error (counted, and said in the call log, when it does)."""
        if found is None or not found.answers_error(self.now()):
            return False
        self.count("stale")
        self.served("stale", method, url, error)
        return True

    def served(self, kind: str, method: str, url: object, error: str) -> None:
        """A call answered by the cache or the fallback in place of ``error``: the observers' event (the history
        counts stale answers per bucket) and the call log's line."""
        listeners = self.hooks.cache_served
        if listeners:
            Hooks.emit(listeners, CacheServed(self.name, method, kind, error))
        if call_logger.isEnabledFor(logging.INFO):
            call_logger.info(
                "%s: %s %s served %s instead of %s",
                self.name,
                method,
                redact_url(str(url)),
                "a stale stored response" if kind == "stale" else "the fallback",
                error,
                extra={"outbound_service": self.name, "outbound_method": method, "outbound_cache": kind},
            )

    def fallback_for(self, method: str) -> FallbackConfig | None:
        """The fallback that answers a failed call of ``method`` (a static answer: GET and HEAD only)."""
        fallback = self.fallback
        if fallback is None or (fallback.call is None and method not in CACHED_METHODS):
            return None
        return fallback

    # -- operator actions --------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            counts = self.counts.as_dict()
        config = self.config
        return {"storage": config.storage if config is not None else None, **counts}

    def clear(self) -> None:
        """Forget every stored response of the service and the counts (``registry.reset(name)``)."""
        with self._lock:
            self.counts = CacheCounts()
        self._skip_until = 0.0
        if self.storage is not None:
            try:
                self.storage.clear()
            except Exception as error:  # noqa: BLE001
                self._storage_failed("clear", error)

    def close(self) -> None:
        self._closed = True
        jobs = self._jobs
        if jobs is not None:
            with contextlib.suppress(queue.Full):
                jobs.put_nowait(("", lambda: None))
        if self.storage is not None:
            with contextlib.suppress(Exception):  # closing at exit
                self.storage.close()

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._jobs = None
        self._worker = None
        reset = getattr(self.storage, "reset_after_fork", None)
        if reset is not None:
            reset()


def _storage(service: ServiceConfig, config: CacheConfig, state: StateConfig | None) -> Storage:
    from ._storage import MemoryStorage, RedisStorage, SqliteStorage

    if config.storage == "redis":
        from .._config import StateConfig

        state_config = state if state is not None else StateConfig()
        url = config.url if config.url is not None else state_config.url
        return RedisStorage(url, state_config.prefix, service.name, max(state_config.timeout, REDIS_TIMEOUT))
    if config.storage == "sqlite":
        assert config.path is not None
        return SqliteStorage(config.path, service.name, timeout=1.0)
    return MemoryStorage(config.max_entries, config.max_bytes)
