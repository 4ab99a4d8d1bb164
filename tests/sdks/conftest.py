"""Settings shared by the SDK tests: quick retries (no backoff to wait out), a breaker that stays closed unless a
test opens it."""

from __future__ import annotations

from typing import Any

FAST_RETRY: dict[str, Any] = {"total": 2, "backoff_factor": 0, "backoff_jitter": 0, "budget": None}
QUIET_BREAKER: dict[str, Any] = {"fail_max": 100}


def service(url: str, client: str, **more: Any) -> dict[str, Any]:
    """A service for a stub at ``url``, with an ``sdk`` section unless ``sdk=None`` is given."""
    settings: dict[str, Any] = {
        "base_url": url,
        "client": client,
        "retry": FAST_RETRY,
        "breaker": QUIET_BREAKER,
        "sdk": {},
    }
    settings.update(more)
    return settings
