"""RFC 9111 (and RFC 5861's two directives) on hishel's sans-IO core.

hishel 2's state machine (``IdleClient -> CacheMiss -> StoreAndUse``) decides whether a response may be stored by a
*shared* cache — a service's cache serves every user of the process, or of the fleet — and its parsers read
``Cache-Control`` and compute the freshness lifetime. What it has no notion of, and this layer adds: ``ttl`` for
upstreams that send no freshness, ``stale-if-error`` and ``stale-while-revalidate`` (it parses them but never serves
on them), an age measured on our clock (its own reads whole seconds off ``Date``), and the breaker. Its lookup and
its storages are not used: the lookup is one key and one Vary check here (a hit must cost microseconds), and its
Redis storage pins redis 8, which ``limits`` does not accept yet.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from hishel import CacheMiss, CacheOptions, Headers, Request, Response, StoreAndUse
from hishel._core._headers import parse_cache_control
from hishel._core._spec import get_freshness_lifetime

# One shared cache, GET and HEAD only.
_OPTIONS = CacheOptions(shared=True, supported_methods=["GET", "HEAD"], allow_stale=False)
# Headers never stored: a cookie one user's call set must not reach another's; the body is stored decoded or whole.
_NOT_STORED = frozenset({"set-cookie", "set-cookie2", "transfer-encoding", "connection", "keep-alive", "age"})


class Freshness(NamedTuple):
    """What the response's headers (and the settings) allow: seconds fresh, and the stale windows past that."""

    lifetime: float
    stale_if_error: float
    stale_while_revalidate: float
    vary: tuple[str, ...]  # lower-case header names; ("*",): matches no later request


def _lists(headers: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    lists: dict[str, list[str]] = {}
    for name, value in headers:
        lists.setdefault(name.lower(), []).append(value)
    return lists


def decide(
    method: str,
    url: str,
    request_headers: Iterable[tuple[str, str]],
    status: int,
    response_headers: list[tuple[str, str]],
    *,
    ttl: float | None,
    stale_if_error: float,
    stale_while_revalidate: float,
) -> Freshness | None:
    """How long the response may be reused, or ``None`` when RFC 9111 forbids storing it (shared cache)."""
    request = Request(method=method, url=url, headers=Headers(_lists(request_headers)))
    response = Response(status_code=status, headers=Headers(_lists(response_headers)))
    if not isinstance(CacheMiss(request=request, options=_OPTIONS).next(response), StoreAndUse):
        return None  # no-store, private, Authorization without public/s-maxage/must-revalidate, a status not known
    control = parse_cache_control(response.headers.get("cache-control"))
    explicit = control.s_maxage is not None or control.max_age is not None or "expires" in response.headers
    lifetime = float(get_freshness_lifetime(response, is_cache_shared=True) or 0) if explicit or ttl is None else ttl
    if control.no_cache is True:
        lifetime = 0.0
    strict = control.must_revalidate or control.proxy_revalidate or control.no_cache is True
    vary_header = response.headers.get("vary")
    vary = (
        tuple(sorted({name.strip().lower() for name in vary_header.split(",") if name.strip()})) if vary_header else ()
    )
    return Freshness(
        lifetime=lifetime,
        stale_if_error=0.0
        if strict
        else float(control.stale_if_error if control.stale_if_error is not None else stale_if_error),
        stale_while_revalidate=0.0
        if strict
        else float(
            control.stale_while_revalidate if control.stale_while_revalidate is not None else stale_while_revalidate
        ),
        vary=vary,
    )


def stored_headers(headers: Iterable[tuple[str, str]], *, decoded: bool) -> list[tuple[str, str]]:
    """The headers kept with a stored response (``decoded``: the body is kept decoded, so its encoding goes)."""
    drop = _NOT_STORED | {"content-encoding", "content-length"} if decoded else _NOT_STORED
    return [(name, value) for name, value in headers if name.lower() not in drop]


def initial_age(headers: Iterable[tuple[str, str]]) -> float:
    """The response's ``Age`` header in seconds (0 when absent or malformed)."""
    for name, value in headers:
        if name.lower() == "age":
            try:
                return max(0.0, float(int(value.strip())))
            except ValueError:
                return 0.0
    return 0.0
