"""The ``cache`` and ``fallback`` settings of a service: dataclasses (imported by ``_config.py``) and their parsing."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

if TYPE_CHECKING:
    from .._config import _Reader

CacheStorage = Literal["memory", "redis", "sqlite"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheConfig:
    storage: CacheStorage = "memory"
    """Where responses are stored: this process's memory, a Redis the fleet shares, or an SQLite file."""
    ttl: float | None = None
    """Seconds a response is fresh when the upstream's headers give no freshness (``None``: RFC 9111's heuristic)."""
    stale_if_error: float = 0.0
    """Seconds past freshness a stored response may answer instead of an error (RFC 5861)."""
    stale_while_revalidate: float = 0.0
    """Seconds past freshness a stored response answers at once while one background call refreshes it."""
    max_entries: int = 1000
    """Responses kept in memory at most (``memory`` storage; the least recently used go first)."""
    max_bytes: int = 16 * 1024 * 1024
    """Bytes of bodies and headers kept in memory at most (``memory`` storage)."""
    max_entry_bytes: int = 1024 * 1024
    """A larger response is not stored (any storage)."""
    url: str | None = None
    """The Redis for ``storage: "redis"``; ``None``: the ``state`` Redis (``state.url``)."""
    path: str | None = None
    """The SQLite file for ``storage: "sqlite"``."""


class FallbackConfig(NamedTuple):
    """The ``fallback`` setting: a callable, or a static answer (a named tuple, not a dataclass: its keys are the
    static answer's, documented on the ``fallback`` row)."""

    call: Callable[[Any, Exception], Any] | None = None
    """``(request, error) -> response | value | None``: a callable answering a call that failed."""
    status: int = 200
    """The static answer's status."""
    headers: Mapping[str, str] = MappingProxyType({})
    """The static answer's headers."""
    body: bytes = b""
    """The static answer's body (``json`` encodes one)."""


def parse_cache(reader: _Reader) -> CacheConfig | None:
    """The ``cache`` section, or ``None`` when absent or null (the cache is off)."""
    from .._config import MAX_COUNT, _optional_sub, _require_extra

    sub = _optional_sub(reader, "cache", CacheConfig)
    if sub is None:
        return None
    _require_extra(sub, "storage", "cache")
    defaults = CacheConfig()
    storage = sub.choice("storage", defaults.storage, ("memory", "redis", "sqlite"))
    url = sub.optional_string("url")
    path = sub.optional_string("path")
    if url is not None and storage != "redis":
        sub.fail("belongs to storage 'redis'", key="url", code="unsupported")
    if path is not None and storage != "sqlite":
        sub.fail("belongs to storage 'sqlite'", key="path", code="unsupported")
    if storage == "sqlite" and path is None:
        sub.fail("is required with storage 'sqlite': the database file", key="path", code="missing")
    if storage == "redis":
        _require_extra(sub, "storage", "redis")
        if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
            sub.fail("must be a redis://, rediss:// or unix:// URL", key="url", code="url")
    return CacheConfig(
        storage=storage,
        ttl=sub.seconds("ttl", None, allow_none=True),
        stale_if_error=sub.required_seconds("stale_if_error", 0.0),
        stale_while_revalidate=sub.required_seconds("stale_while_revalidate", 0.0),
        max_entries=sub.integer("max_entries", defaults.max_entries, minimum=1, maximum=MAX_COUNT),
        max_bytes=sub.integer("max_bytes", defaults.max_bytes, minimum=1, maximum=2**40),
        max_entry_bytes=sub.integer("max_entry_bytes", defaults.max_entry_bytes, minimum=1, maximum=2**31),
        url=url,
        path=path,
    )


def parse_fallback(reader: _Reader) -> FallbackConfig | None:
    """The ``fallback`` setting: a callable, or a static answer ``{"status", "headers", "body" | "json"}``."""
    from .._config import _MAPPING_OR_NULL, _parse_headers, _shown, _Skip

    value = reader.mapping.get("fallback")
    if value is None:
        return None
    if callable(value):
        return FallbackConfig(call=value)
    if not isinstance(value, Mapping):
        reader.fail(f"must be a callable (request, error) or a mapping, got {_shown(value)}", key="fallback")
        return None
    try:
        sub = reader.sub("fallback", ("status", "headers", "body", "json"), accepted=_MAPPING_OR_NULL)
    except _Skip:
        return None
    status = sub.integer("status", 200, minimum=100, maximum=599)
    headers = dict(_parse_headers(sub))
    body: bytes = b""
    if "body" in sub.mapping and "json" in sub.mapping:
        sub.fail("give 'body' or 'json', not both", key="json", code="unsupported")
    raw = sub.mapping.get("body")
    if isinstance(raw, str):
        body = raw.encode()
    elif isinstance(raw, bytes):
        body = raw
    elif raw is not None:
        sub.fail(f"must be a string or bytes, got {_shown(raw)}", key="body")
    if "json" in sub.mapping:
        import json

        try:
            body = json.dumps(sub.mapping["json"]).encode()
        except (TypeError, ValueError):
            sub.fail("must be JSON-serialisable", key="json")
        headers.setdefault("Content-Type", "application/json")
    return FallbackConfig(status=status, headers=MappingProxyType(headers), body=body)
