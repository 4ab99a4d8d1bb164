"""The cache layer for httpx and httpx2: transports on top of the managed ones (sync and async, httpcore or aiohttp
below). One class pair per library, made for the library's module (httpx2 has httpx's API)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable
from typing import Any

from .._errors import CallError
from .._loops import current_loop
from ._answers import Answers, Parts
from ._layer import CACHE_EXTENSION, ERROR_STATUSES, STALE_EXTENSION, CacheLayer, Found

PRELOAD = "outbound.preload"  # the backend's: the client reads the whole body (not a streamed call)
_background: set[asyncio.Task[None]] = set()


def _pairs(headers: Any) -> list[tuple[str, str]]:
    # The bytes as received, as latin-1 text (any byte survives), and back to those bytes in ``response``.
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers.raw]


@functools.cache
def transport_classes(httpx: Any) -> tuple[type[Any], type[Any]]:
    """``(CachingTransport, AsyncCachingTransport)`` for ``httpx`` (the httpx or the httpx2 module)."""

    class LibraryAnswers(Answers[Any]):
        def response(self, request: Any, parts: Parts) -> Any:
            pairs = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in parts.headers]
            if parts.age is not None:
                pairs.append((b"Age", str(int(parts.age)).encode()))
            extensions = {"http_version": b"HTTP/1.1", CACHE_EXTENSION: parts.kind, STALE_EXTENSION: parts.stale}
            stream = httpx.ByteStream(parts.body)
            return httpx.Response(parts.status, headers=pairs, stream=stream, request=request, extensions=extensions)

        def adopt(self, value: object) -> Any:
            if not isinstance(value, httpx.Response):
                return None
            value.extensions = {**value.extensions, CACHE_EXTENSION: "fallback", STALE_EXTENSION: False}
            return value

    answers = LibraryAnswers()
    from_entry = answers.from_entry

    def copy(request: Any, extra: dict[str, str] | None = None) -> Any:
        headers = httpx.Headers(request.headers)
        if extra:
            headers.update(extra)
        extensions = dict(request.extensions)
        extensions[PRELOAD] = True
        return httpx.Request(request.method, request.url, headers=headers, stream=request.stream, extensions=extensions)

    def on_error(layer: CacheLayer, request: Any, found: Found | None, error: CallError) -> Any:
        """The stale response or the fallback answering ``error``; ``None``: re-raise it."""
        return answers.on_error(layer, request, request.method, request.url, found, error)

    def raw_body(answer: Any) -> bytes | None:
        stream = answer.stream
        if isinstance(stream, httpx.ByteStream):
            return b"".join(stream)  # the raw (still encoded) body the managed transport preloaded
        return None

    def store(layer: CacheLayer, request: Any, answer: Any) -> None:
        if answer.status_code == 304 or not request.extensions.get(PRELOAD):
            return  # a streamed call's body is the caller's to read: not stored
        body = raw_body(answer)
        if body is not None:
            layer.store(
                request.method,
                str(request.url),
                request.headers,
                answer.status_code,
                _pairs(answer.headers),
                body,
                decoded=False,
            )

    def after(layer: CacheLayer, request: Any, found: Found | None, conditional: bool, answer: Any) -> Any:
        """What the caller gets for the upstream's ``answer`` (the response to close, and the one to return)."""
        if found is not None and conditional and answer.status_code == 304:
            layer.count("revalidations")
            entry = layer.refresh(found, _pairs(answer.headers))
            return from_entry(request, entry, "revalidated", 0.0)
        if answer.status_code in ERROR_STATUSES and layer.stale_for_error(
            found, request.method, request.url, f"status {answer.status_code}"
        ):
            assert found is not None
            return from_entry(request, found.entry, "stale", found.entry.age(layer.now()))
        store(layer, request, answer)
        return None

    def looked_up(layer: CacheLayer, request: Any) -> tuple[Found | None, Any]:
        found = layer.lookup(request.method, str(request.url), request.headers)
        if found is not None:
            if found.fresh:
                layer.count("hits")
                return found, from_entry(request, found.entry, "hit", found.age)
            if found.within_swr:
                layer.count("stale_while_revalidate")
                return found, from_entry(request, found.entry, "stale", found.age)
        layer.count("misses")
        return found, None

    class CachingTransport(httpx.BaseTransport):  # type: ignore[misc]
        """The cache and fallback above a managed transport (sync)."""

        def __init__(self, layer: CacheLayer, inner: Any) -> None:
            self.layer = layer
            self.inner = inner

        def handle_request(self, request: Any) -> Any:
            layer = self.layer
            if layer.storage is None or layer.passes_through(request.method, request.headers):
                return self._guarded(request, None, request)
            found, answer = looked_up(layer, request)
            if answer is not None:
                if found is not None and not found.fresh:
                    revalidation = copy(request)
                    layer.revalidate_in_background(found.key, lambda: self._refresh(revalidation))
                return answer
            conditional = layer.validators(found) if found is not None else {}
            sent = copy(request, conditional) if conditional else request
            answer = self._guarded(request, found, sent)
            if answer.extensions.get(CACHE_EXTENSION) is not None:
                return answer
            replaced = after(layer, request, found, bool(conditional), answer)
            if replaced is not None:
                answer.close()
                return replaced
            return answer

        def _guarded(self, request: Any, found: Found | None, sent: Any) -> Any:
            try:
                return self.inner.handle_request(sent)
            except CallError as error:
                answer = on_error(self.layer, request, found, error)
                if answer is None:
                    raise
                return answer

        def _refresh(self, request: Any) -> None:
            answer = self.inner.handle_request(request)
            try:
                if answer.status_code not in ERROR_STATUSES:
                    store(self.layer, request, answer)
            finally:
                answer.close()

        def close(self) -> None:
            self.inner.close()

    class AsyncCachingTransport(httpx.AsyncBaseTransport):  # type: ignore[misc]
        """The cache and fallback above a managed transport (async: asyncio or trio)."""

        def __init__(self, layer: CacheLayer, inner: Any) -> None:
            self.layer = layer
            self.inner = inner

        async def handle_async_request(self, request: Any) -> Any:
            layer = self.layer
            if layer.storage is None or layer.passes_through(request.method, request.headers):
                return await self._guarded(request, None, request)
            found, answer = looked_up(layer, request)
            if answer is not None:
                if found is not None and not found.fresh:
                    self._refresh_later(found.key, copy(request))
                return answer
            conditional = layer.validators(found) if found is not None else {}
            sent = copy(request, conditional) if conditional else request
            answer = await self._guarded(request, found, sent)
            if answer.extensions.get(CACHE_EXTENSION) is not None:
                return answer
            replaced = after(layer, request, found, bool(conditional), answer)
            if replaced is not None:
                await answer.aclose()
                return replaced
            return answer

        async def _guarded(self, request: Any, found: Found | None, sent: Any) -> Any:
            try:
                return await self.inner.handle_async_request(sent)
            except CallError as error:
                answer = on_error(self.layer, request, found, error)
                if answer is None:
                    raise
                return answer

        def _refresh_later(self, key: str, request: Any) -> None:
            # One task per key being refreshed (the claim is taken first), on the caller's asyncio loop; under trio
            # the stale answer is returned and the next call after the window refreshes it.
            loop = current_loop()
            if not isinstance(loop, asyncio.AbstractEventLoop) or not self.layer.claim(key):
                return
            task = loop.create_task(self._refresh(request))
            _background.add(task)
            task.add_done_callback(_background.discard)

        async def _refresh(self, request: Any) -> None:
            async def job() -> None:
                answer = await self.inner.handle_async_request(request)
                try:
                    if answer.status_code not in ERROR_STATUSES:
                        store(self.layer, request, answer)
                finally:
                    await answer.aclose()

            awaitable: Awaitable[None] | None = self.layer.run_revalidation(job)
            if awaitable is not None:
                with contextlib.suppress(Exception):  # a failed refresh leaves the stored response
                    await awaitable

        async def aclose(self) -> None:
            await self.inner.aclose()

    return CachingTransport, AsyncCachingTransport
