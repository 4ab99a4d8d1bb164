"""The HTTP cache and the fallback: a layer ABOVE the policy, composed only when ``cache:`` or ``fallback:`` is set.

    client -> [cache layer] -> policy (pause, rate limit, breaker, retries, deadline) -> attempt -> upstream

A fresh stored response answers without a permit (nothing is sent, the breaker is not asked). On a miss or a stale
entry the call goes down through the policy; when the policy refuses (``CircuitOpenError``, a pause or the rate
limit's ``RateLimitedError``, ``DeadlineExceededError``, ``BulkheadFullError``), the attempt fails, or the upstream
answers 500/502/503/504, a stored response within its ``stale_if_error`` bound is returned instead, marked stale,
and failing that the service's ``fallback``. Modules:

    _settings.py   CacheConfig / FallbackConfig and their parsing (imported by ``_config.py``: no heavy imports)
    _rfc.py        RFC 9111 on hishel's sans-IO core: storability, freshness lifetime, Cache-Control directives
    _entry.py      the stored entry and its packed form (validated when read)
    _storage.py    memory (bounded by entries and bytes), Redis (the fleet's), SQLite
    _layer.py      the client-neutral decisions and counters; background revalidation, one per key
    _requests.py   the requests adapter with the layer on top; _httpx.py: the httpx/httpx2 transports (sync, async)
"""
