"""The cache layer for requests: an ``OutboundAdapter`` whose ``managed_send`` asks the cache before the policy runs."""

from __future__ import annotations

import datetime
import http.client
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import requests
from requests.structures import CaseInsensitiveDict

from .._backends.requests import OutboundAdapter, SendArgs
from .._errors import CallError
from .._policy import Policy
from ._answers import Answers, Parts
from ._layer import ERROR_STATUSES, CacheLayer, Found


class _RequestsAnswers(Answers[requests.Response]):
    def response(self, request: requests.PreparedRequest, parts: Parts) -> requests.Response:
        response = requests.Response()
        response.status_code = parts.status
        merged: CaseInsensitiveDict[str] = CaseInsensitiveDict()
        for name, value in parts.headers:
            merged[name] = f"{merged[name]}, {value}" if name in merged else value
        if parts.age is not None:
            merged["Age"] = str(int(parts.age))
        response.headers = merged
        response._content = parts.body
        response._content_consumed = True  # type: ignore[attr-defined]
        response.reason = http.client.responses.get(parts.status, "")
        response.url = request.url or ""
        response.request = request
        response.encoding = requests.utils.get_encoding_from_headers(merged)
        response.elapsed = datetime.timedelta(0)
        response.outbound_cache = parts.kind  # type: ignore[attr-defined]
        response.outbound_stale = parts.stale  # type: ignore[attr-defined]
        return response

    def adopt(self, value: object) -> requests.Response | None:
        if not isinstance(value, requests.Response):
            return None
        value.outbound_cache = "fallback"  # type: ignore[attr-defined]
        value.outbound_stale = False  # type: ignore[attr-defined]
        return value


ANSWERS = _RequestsAnswers()


class CachedAdapter(OutboundAdapter):
    """``OutboundAdapter`` with the service's cache and fallback above the policy."""

    def __init__(self, policy: Policy, layer: CacheLayer) -> None:
        super().__init__(policy)
        self._layer = layer

    def managed_send(self, request: requests.PreparedRequest, args: SendArgs) -> requests.Response:
        layer = self._layer
        method = request.method or "GET"
        headers = request.headers
        url = request.url or ""

        def down(sent: requests.PreparedRequest) -> requests.Response:
            # The adapter below this layer: OutboundAdapter's, or an SDK service's subclass of it.
            return super(CachedAdapter, self).managed_send(sent, args)

        if layer.storage is None or layer.passes_through(method, headers):
            return self._guarded(request, method, url, None, lambda: down(request))
        looked_up = LOOKED_UP.get()
        if looked_up is not None and looked_up[0] is layer and looked_up[1:3] == (method, url):
            LOOKED_UP.set(None)
            found = looked_up[3]
        else:
            found = layer.lookup(method, url, headers)
        if found is not None:
            if found.fresh:
                layer.count("hits")
                return ANSWERS.from_entry(request, found.entry, "hit", found.age)
            if found.within_swr:
                layer.count("stale_while_revalidate")
                copy = request.copy()
                layer.revalidate_in_background(found.key, lambda: self._refresh(copy, down))
                return ANSWERS.from_entry(request, found.entry, "stale", found.age)
        layer.count("misses")
        sent = request
        conditional = layer.validators(found) if found is not None else {}
        if conditional:
            sent = request.copy()
            sent.headers.update(conditional)
        response = self._guarded(request, method, url, found, lambda: down(sent))
        if getattr(response, "outbound_cache", None) is not None:
            return response  # stale or the fallback
        if found is not None and conditional and response.status_code == 304:
            layer.count("revalidations")
            response.close()
            return ANSWERS.from_entry(request, layer.refresh(found, response.headers.items()), "revalidated", 0.0)
        if response.status_code in ERROR_STATUSES and layer.stale_for_error(
            found, method, url, f"status {response.status_code}"
        ):
            assert found is not None
            response.close()
            return ANSWERS.from_entry(request, found.entry, "stale", found.entry.age(layer.now()))
        if not args.stream and response.status_code != 304:
            layer.store(
                method,
                url,
                headers,
                response.status_code,
                list(response.headers.items()),
                response.content,
                decoded=True,
            )
        return response

    def _guarded(
        self,
        request: requests.PreparedRequest,
        method: str,
        url: str,
        found: Found | None,
        call: Callable[[], requests.Response],
    ) -> requests.Response:
        """``call()``; a refusal or failure is answered by ``found`` (within stale-if-error) or the fallback."""
        layer = self._layer
        try:
            return call()
        except CallError as error:
            answer = ANSWERS.on_error(layer, request, method, url, found, error)
            if answer is None:
                raise
            return answer

    def _refresh(
        self, request: requests.PreparedRequest, down: Callable[[requests.PreparedRequest], requests.Response]
    ) -> None:
        response = down(request)
        try:
            body = response.content
            if response.status_code not in ERROR_STATUSES:
                self._layer.store(
                    request.method or "GET",
                    request.url or "",
                    request.headers,
                    response.status_code,
                    list(response.headers.items()),
                    body,
                    decoded=True,
                )
        finally:
            response.close()


_ADAPTER_CLASSES: dict[type[OutboundAdapter], type[CachedAdapter]] = {}  # an SDK adapter class -> its cached subclass


def cached_adapter_class(base: type[OutboundAdapter]) -> type[CachedAdapter]:
    """``CachedAdapter`` on top of ``base`` (the session's ``adapter_class``: an SDK service has its own)."""
    if base is OutboundAdapter:
        return CachedAdapter
    made = _ADAPTER_CLASSES.get(base)
    if made is None:
        made = _ADAPTER_CLASSES[base] = type(f"Cached{base.__name__}", (CachedAdapter, base), {})
    return made


_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# What the fast path found for this call (nothing fresh), handed to the adapter of the same layer, which takes it.
# (A call that fails before reaching the adapter leaves it: the next call of the same URL then uses that slightly
# older lookup, which at worst sends it upstream.)
LOOKED_UP: ContextVar[tuple[CacheLayer, str, str, Found | None] | None] = ContextVar(
    "outbound_cache_looked_up", default=None
)


def fast_hit(session: Any, layer: CacheLayer) -> Callable[[str | bytes, str | bytes], requests.Response | None]:
    """A fresh hit for ``session.get(url)`` with no other argument, answered before requests prepares anything
    (what the prepared request would be is known: the session's headers, no body, no auth, no cookies); ``None``
    when it is not that simple, and the call takes the ordinary path (where the adapter asks the cache too)."""
    from requests.hooks import default_hooks

    from ._switch import CACHING

    def hit(method: str | bytes, url: str | bytes) -> requests.Response | None:
        name = method.decode() if isinstance(method, bytes) else method
        name = name.upper()
        if (
            name not in ("GET", "HEAD")
            or not CACHING.enabled
            or session.auth is not None
            or session.cookies
            or any(session.hooks.values())
        ):
            return None
        full = session.join(url)
        if session.trust_env and session._environment().netrc_auth(full):
            return None  # credentials from ~/.netrc would go along: the ordinary path decides
        headers = session.headers
        found = layer.lookup(name, full, headers)
        if found is None or not found.fresh or found.entry.status in _REDIRECTS:
            LOOKED_UP.set((layer, name, full, found))  # the adapter, later in this call, need not read it again
            return None
        layer.count("hits")
        prepared = requests.PreparedRequest()
        prepared.method = name
        prepared.url = full
        prepared.headers = CaseInsensitiveDict(headers)
        prepared.body = None
        prepared.hooks = default_hooks()
        return ANSWERS.from_entry(prepared, found.entry, "hit", found.age)

    return hit
