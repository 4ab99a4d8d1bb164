"""What the cache layer answers with, decided once for every client library.

A library's layer (``_requests.py``, ``_httpx.py``) says how to make one of its responses from stored parts
(``response``) and how to mark a fallback callable's own response as the fallback's (``adopt``); the rest — a stored
entry as a response, a fallback's value as one, and which of them answers a failed call — is the same for all.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Generic, NamedTuple, TypeVar

from .._errors import CallError
from ._entry import Entry
from ._layer import CacheLayer, Found

Response = TypeVar("Response")

__all__ = ["Answers", "Parts"]


class Parts(NamedTuple):
    """A response the layer makes: its status, headers and body, the layer's ``kind`` (``"hit"``, ``"stale"``,
    ``"revalidated"``, ``"fallback"``), whether it is ``stale``, and its ``age`` in seconds (``None``: no Age)."""

    status: int
    headers: Iterable[tuple[str, str]]
    body: bytes
    kind: str
    stale: bool = False
    age: float | None = None


class Answers(Generic[Response]):
    """One library's responses from the cache layer."""

    def response(self, request: Any, parts: Parts) -> Response:
        """The library's response to ``request`` made of ``parts``."""
        raise NotImplementedError

    def adopt(self, value: object) -> Response | None:
        """``value`` marked as the fallback's answer when it is already one of the library's responses, else
        ``None``."""
        raise NotImplementedError

    def from_entry(self, request: Any, entry: Entry, kind: str, age: float) -> Response:
        """A stored response, ``age`` seconds old."""
        return self.response(request, Parts(entry.status, entry.headers, entry.body, kind, age >= entry.lifetime, age))

    def fallback_value(self, request: Any, value: object) -> Response:
        """What a fallback callable returned, as a response: its own response, text or bytes as a 200, or anything
        else as a 200 of JSON."""
        adopted = self.adopt(value)
        if adopted is not None:
            return adopted
        if isinstance(value, bytes | str):
            body = value.encode() if isinstance(value, str) else value
            return self.response(request, Parts(200, [], body, "fallback"))
        body = json.dumps(value).encode()
        return self.response(request, Parts(200, [("Content-Type", "application/json")], body, "fallback"))

    def on_error(
        self, layer: CacheLayer, request: Any, method: str, url: object, found: Found | None, error: CallError
    ) -> Response | None:
        """The stale response (within ``stale-if-error``) or the fallback answering ``error``; ``None``: neither
        does, re-raise it."""
        if layer.stale_for_error(found, method, url, type(error).__name__):
            assert found is not None
            return self.from_entry(request, found.entry, "stale", found.entry.age(layer.now()))
        fallback = layer.fallback_for(method)
        if fallback is None:
            return None
        if fallback.call is not None:
            value = fallback.call(request, error)
            if value is None:
                return None
            answer = self.fallback_value(request, value)
        else:
            answer = self.response(request, Parts(fallback.status, fallback.headers.items(), fallback.body, "fallback"))
        layer.count("fallbacks")
        layer.served("fallback", method, url, type(error).__name__)
        return answer
