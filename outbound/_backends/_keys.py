"""Idempotency keys for both backends: one new key per logical call, and a caller's own key kept.

The key goes into the request's headers, and the caller may send the same request object again
(``client.send(request)`` twice, ``session.send(prepared)`` twice): that is a new call, which must not carry the
key outbound made for the first — an API that deduplicates by the key would silently drop the second write. So the
keys outbound generated are remembered per request object (weakly), and only a key the caller set is kept.
"""

from __future__ import annotations

import uuid
import weakref
from collections.abc import MutableMapping

_GENERATED: weakref.WeakKeyDictionary[object, str] = weakref.WeakKeyDictionary()


def stamp_key(request: object, headers: MutableMapping[str, str], header: str) -> None:
    """Put a new key in ``headers[header]`` for this call, unless the caller set one there."""
    present = headers.get(header)
    if present is None or _GENERATED.get(request) == present:
        key = str(uuid.uuid4())
        headers[header] = key
        _GENERATED[request] = key
