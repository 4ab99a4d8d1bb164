"""The HTTP cache and the fallback (issue 27), against the real upstream on 127.0.0.1 and a real Redis.

The cache sits above the policy: a fresh hit never reaches it, and a refusal (open breaker, pause, rate limit,
deadline), a failed attempt or an error status is answered by a stored response within ``stale_if_error`` or by the
fallback. Expiry is shown by moving the layer's own clock (``layer.now``), never by sleeping through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import Any

import pytest

import outbound
from outbound import Registry
from tests.conftest import RegistryFactory, open_breaker
from tests.core.conftest import Send, client_of, native
from tests.upstream import Upstream


def raw(*lines: str, status: int = 200) -> str:
    """The upstream path answering ``status`` with these header lines (body ``raw``)."""
    return f"raw?status={status}&headers=" + "\r\n".join(lines).encode().hex()


def cache_of(response: Any) -> Any:
    """What the cache said of a response: "hit", "stale", "revalidated", "fallback" or None (the upstream's)."""
    if hasattr(response, "extensions"):
        return response.extensions.get("outbound.cache")
    return getattr(response, "outbound_cache", None)


def stale_of(response: Any) -> Any:
    if hasattr(response, "extensions"):
        return response.extensions.get("outbound.stale")
    return getattr(response, "outbound_stale", None)


def later(registry: Registry, name: str, seconds: float) -> None:
    """Move the cache's clock ``seconds`` ahead: stored responses are that much older."""
    layer = registry[name].policy.cache
    assert layer is not None
    start = time.time()
    layer.now = lambda: time.time() - start + start + seconds


def make(make_registry: RegistryFactory, upstream: Upstream, kind: str, **settings: Any) -> Registry:
    service = {"base_url": upstream.url, "client": client_of(kind), "breaker": {"fail_max": 2}, **settings}
    return make_registry(s=service)


def counts(registry: Registry, name: str = "s") -> dict[str, Any]:
    layer = registry[name].policy.cache
    assert layer is not None
    return layer.snapshot()


def test_a_fresh_hit_answers_without_the_network(
    make_registry: RegistryFactory, upstream: Upstream, kind: str, send: Send
) -> None:
    registry = make(make_registry, upstream, kind, cache={"ttl": 60})
    first = send(registry, "s", "GET", "replica?key=fresh")
    second = send(registry, "s", "GET", "replica?key=fresh")
    assert (first.text, second.text) == ("1", "1")
    assert (cache_of(first), cache_of(second)) == (None, "hit")
    assert second.headers["Age"] == "0"
    assert len(upstream.recent("/replica")) == 1
    assert counts(registry)["hits"] == 1


def test_stale_if_error_answers_an_open_breaker_with_no_network_call(
    make_registry: RegistryFactory, upstream: Upstream, kind: str, send: Send
) -> None:
    registry = make(make_registry, upstream, kind, cache={"ttl": 1, "stale_if_error": 60})
    assert send(registry, "s", "GET", "catalogue").status_code == 200
    open_breaker(registry, "s")
    later(registry, "s", 30)
    before = len(upstream.recent())
    answer = send(registry, "s", "GET", "catalogue")
    assert answer.status_code == 200
    assert answer.json() == {"ok": True}
    assert (cache_of(answer), stale_of(answer)) == ("stale", True)
    assert int(answer.headers["Age"]) >= 30
    assert len(upstream.recent()) == before  # the breaker refused: nothing was sent
    assert counts(registry)["stale"] == 1


def test_an_error_status_after_expiry_gives_the_stored_answer(
    make_registry: RegistryFactory, upstream: Upstream, kind: str, send: Send
) -> None:
    registry = make(make_registry, upstream, kind, cache={"ttl": 1, "stale_if_error": 60}, retry={"total": 0})
    assert send(registry, "s", "GET", "catalogue").json() == {"ok": True}
    later(registry, "s", 5)
    upstream.set_mode("failing", status=503)
    answer = send(registry, "s", "GET", "catalogue")
    assert (answer.status_code, cache_of(answer)) == (200, "stale")
    assert len(upstream.recent("/catalogue")) == 2  # it did ask, and got a 503


def test_no_stale_answer_older_than_the_bound(
    make_registry: RegistryFactory, upstream: Upstream, kind: str, send: Send
) -> None:
    registry = make(make_registry, upstream, kind, cache={"ttl": 1, "stale_if_error": 10})
    send(registry, "s", "GET", "catalogue")
    open_breaker(registry, "s")
    later(registry, "s", 1 + 10 + 0.5)
    with pytest.raises(outbound.CircuitOpenError):
        send(registry, "s", "GET", "catalogue")
    assert counts(registry)["stale"] == 0


def test_the_responses_own_stale_if_error_is_honoured(
    make_registry: RegistryFactory, upstream: Upstream, kind: str, send: Send
) -> None:
    registry = make(make_registry, upstream, kind, cache={})
    path = raw("Cache-Control: max-age=1, stale-if-error=100")
    send(registry, "s", "GET", path)
    open_breaker(registry, "s")
    later(registry, "s", 50)
    assert cache_of(send(registry, "s", "GET", path)) == "stale"


def test_must_revalidate_forbids_a_stale_answer(
    make_registry: RegistryFactory, upstream: Upstream, kind: str, send: Send
) -> None:
    registry = make(make_registry, upstream, kind, cache={"stale_if_error": 100})
    path = raw("Cache-Control: max-age=1, must-revalidate")
    send(registry, "s", "GET", path)
    open_breaker(registry, "s")
    later(registry, "s", 5)
    with pytest.raises(outbound.CircuitOpenError):
        send(registry, "s", "GET", path)


def test_a_request_with_authorization_is_not_shared_unless_the_upstream_says_public(
    make_registry: RegistryFactory, upstream: Upstream, kind: str, send: Send
) -> None:
    registry = make(make_registry, upstream, kind, cache={"ttl": 60})
    alice = send(registry, "s", "GET", "echo", headers={"Authorization": "Bearer alice"})
    bob = send(registry, "s", "GET", "echo", headers={"Authorization": "Bearer bob"})
    assert cache_of(bob) is None
    assert bob.json()["headers"]["authorization"] == "Bearer bob"
    assert alice.json()["headers"]["authorization"] == "Bearer alice"
    assert len(upstream.recent("/echo")) == 2
    public = raw("Cache-Control: public, max-age=60")
    send(registry, "s", "GET", public, headers={"Authorization": "Bearer alice"})
    assert cache_of(send(registry, "s", "GET", public, headers={"Authorization": "Bearer bob"})) == "hit"


def test_private_no_store_and_set_cookie(
    make_registry: RegistryFactory, upstream: Upstream, kind: str, send: Send
) -> None:
    registry = make(make_registry, upstream, kind, cache={"ttl": 60})
    for control in ("private, max-age=60", "no-store"):
        path = raw(f"Cache-Control: {control}")
        send(registry, "s", "GET", path)
        assert cache_of(send(registry, "s", "GET", path)) is None
    send(registry, "s", "GET", "set-cookie?session=alice")
    hit = send(registry, "s", "GET", "set-cookie?session=alice")
    assert cache_of(hit) == "hit"
    assert "set-cookie" not in {name.lower() for name in hit.headers}


def test_vary_is_honoured(make_registry: RegistryFactory, upstream: Upstream, kind: str, send: Send) -> None:
    registry = make(make_registry, upstream, kind, cache={})
    path = raw("Cache-Control: max-age=60", "Vary: Accept-Language")
    send(registry, "s", "GET", path, headers={"Accept-Language": "fr"})
    assert cache_of(send(registry, "s", "GET", path, headers={"Accept-Language": "de"})) is None
    assert cache_of(send(registry, "s", "GET", path, headers={"Accept-Language": "de"})) == "hit"
    assert len(upstream.recent("/raw")) == 2


def test_post_is_never_answered_by_the_cache(
    make_registry: RegistryFactory, upstream: Upstream, kind: str, send: Send
) -> None:
    registry = make(make_registry, upstream, kind, cache={"ttl": 60})
    send(registry, "s", "GET", "echo")
    assert (
        cache_of(
            send(registry, "s", "POST", "echo", content=b"x")
            if kind != "requests"
            else send(registry, "s", "POST", "echo", data=b"x")
        )
        is None
    )


def test_a_response_too_large_is_not_stored_and_logged_once(
    make_registry: RegistryFactory, upstream: Upstream, kind: str, send: Send, caplog: pytest.LogCaptureFixture
) -> None:
    registry = make(make_registry, upstream, kind, cache={"ttl": 60, "max_entry_bytes": 5})
    with caplog.at_level(logging.WARNING, logger="outbound.cache"):
        for _ in range(3):
            assert cache_of(send(registry, "s", "GET", "catalogue")) is None
    assert len([r for r in caplog.records if "max_entry_bytes" in r.getMessage()]) == 1


def test_the_memory_storage_is_bounded(
    make_registry: RegistryFactory, upstream: Upstream, kind: str, send: Send
) -> None:
    registry = make(make_registry, upstream, kind, cache={"ttl": 60, "max_entries": 3})
    for n in range(6):
        send(registry, "s", "GET", f"replica?key=bound{n}")
    storage: Any = registry["s"].policy.cache.storage  # type: ignore[union-attr]
    assert len(storage) == 3
    assert cache_of(send(registry, "s", "GET", "replica?key=bound5")) == "hit"
    assert cache_of(send(registry, "s", "GET", "replica?key=bound0")) is None


def test_reset_clears_the_cache(make_registry: RegistryFactory, upstream: Upstream, kind: str, send: Send) -> None:
    registry = make(make_registry, upstream, kind, cache={"ttl": 60})
    send(registry, "s", "GET", "catalogue")
    registry.reset("s")
    assert cache_of(send(registry, "s", "GET", "catalogue")) is None
    assert counts(registry)["hits"] == 0


def test_a_static_fallback_answers_a_refused_get(
    make_registry: RegistryFactory, upstream: Upstream, kind: str, send: Send
) -> None:
    registry = make(make_registry, upstream, kind, fallback={"status": 200, "json": {"rates": []}})
    open_breaker(registry, "s")
    answer = send(registry, "s", "GET", "rates")
    assert (answer.status_code, answer.json(), cache_of(answer)) == (200, {"rates": []}, "fallback")
    with pytest.raises(outbound.CircuitOpenError):
        send(registry, "s", "POST", "rates")  # a static answer is for GET and HEAD only


def test_a_fallback_callable_sees_the_request_and_the_error(
    make_registry: RegistryFactory, upstream: Upstream, kind: str, send: Send
) -> None:
    seen: list[tuple[str, type[BaseException]]] = []

    def fallback(request: Any, error: Exception) -> Any:
        seen.append((request.method, type(error)))
        return None if "raise" in str(request.url) else {"from": "fallback"}

    registry = make(
        make_registry,
        upstream,
        kind,
        fallback=fallback,
        cache={"ttl": 60},
        breaker={"fail_max": 50},
        retry={"total": 0},
    )
    upstream.set_mode("refuse")
    answer = send(registry, "s", "GET", "flags")
    assert answer.json() == {"from": "fallback"}
    assert cache_of(answer) == "fallback"
    with pytest.raises(outbound.ConnectError):
        send(registry, "s", "GET", "raise")
    assert [method for method, _ in seen] == ["GET", "GET"]
    assert all(issubclass(error, outbound.ConnectError) for _, error in seen)
    assert counts(registry)["fallbacks"] == 1


def _own_response(kind: str, request: Any) -> Any:
    """The client library's own response object, as a fallback callable may build one."""
    if kind == "requests":
        import requests

        response = requests.Response()
        response.status_code = 203
        response._content = b"own"
        response.request = request
        return response
    library = native(kind)
    return library.Response(203, content=b"own", request=request)


@pytest.mark.parametrize(
    ("returned", "expected"),
    [("text", (200, b"text")), (b"bytes", (200, b"bytes")), ([1, 2], (200, b"[1, 2]")), ("own", (203, b"own"))],
)
def test_what_a_fallback_callable_returns_becomes_the_answer(
    make_registry: RegistryFactory, upstream: Upstream, kind: str, send: Send, returned: Any, expected: Any
) -> None:
    # Each library's layer makes its own responses; what answers, and how a value becomes one, is shared
    # (``_cache/_answers.py``): the same values give the same answers on every client.
    def fallback(request: Any, error: Exception) -> Any:
        return _own_response(kind, request) if returned == "own" else returned

    registry = make(make_registry, upstream, kind, fallback=fallback, retry={"total": 0})
    open_breaker(registry, "s")
    answer = send(registry, "s", "GET", "anything")
    assert (answer.status_code, answer.content) == expected
    assert (cache_of(answer), stale_of(answer)) == ("fallback", False)
    if isinstance(returned, list):
        assert answer.headers["Content-Type"] == "application/json"


def test_stale_is_said_in_the_call_log(
    make_registry: RegistryFactory, upstream: Upstream, kind: str, send: Send, caplog: pytest.LogCaptureFixture
) -> None:
    registry = make(make_registry, upstream, kind, cache={"ttl": 1, "stale_if_error": 60})
    send(registry, "s", "GET", "catalogue?token=secret")
    open_breaker(registry, "s")
    later(registry, "s", 5)
    with caplog.at_level(logging.INFO, logger="outbound.call"):
        send(registry, "s", "GET", "catalogue?token=secret")
    lines = [r.getMessage() for r in caplog.records if getattr(r, "outbound_cache", None) == "stale"]
    assert len(lines) == 1
    assert "served a stale stored response instead of CircuitOpenError" in lines[0]
    assert "secret" not in lines[0]


def test_the_async_client_answers_stale(make_registry: RegistryFactory, upstream: Upstream) -> None:
    registry = make(make_registry, upstream, "httpx", cache={"ttl": 1, "stale_if_error": 60})

    async def main() -> list[Any]:
        client = registry.async_client("s")
        first = await client.get("catalogue")
        hit = await client.get("catalogue")
        open_breaker(registry, "s")
        later(registry, "s", 5)
        stale = await client.get("catalogue")
        return [cache_of(first), cache_of(hit), cache_of(stale), stale.json()]

    assert asyncio.run(main()) == [None, "hit", "stale", {"ok": True}]


def test_the_aiohttp_transport_answers_stale(make_registry: RegistryFactory, upstream: Upstream) -> None:
    pytest.importorskip("httpx_aiohttp")
    registry = make(make_registry, upstream, "httpx", transport="aiohttp", cache={"ttl": 1, "stale_if_error": 60})

    async def main() -> list[Any]:
        client = registry.async_client("s")
        await client.get("catalogue")
        open_breaker(registry, "s")
        later(registry, "s", 5)
        stale = await client.get("catalogue")
        return [cache_of(stale), stale.json()]

    assert asyncio.run(main()) == ["stale", {"ok": True}]


# -- storages -----------------------------------------------------------------------------------------------------


def fleet(redis_url: str, upstream: Upstream, kind: str = "requests", **cache: Any) -> Registry:
    return Registry.from_mapping(
        {
            "services": {
                "s": {
                    "base_url": upstream.url,
                    "client": client_of(kind),
                    "breaker": {"fail_max": 2},
                    "cache": {"storage": "redis", "url": redis_url, **cache},
                }
            },
            # A Redis command may take this long on a loaded machine before the cache gives up on it.
            "state": {"timeout": 2.0},
        }
    )


def test_redis_storage_is_shared_by_the_fleet(redis_url: str, upstream: Upstream, kind: str, send: Send) -> None:
    one, two = fleet(redis_url, upstream, kind, ttl=60), fleet(redis_url, upstream, kind, ttl=60)
    try:
        send(one, "s", "GET", "replica?key=shared")
        answer = send(two, "s", "GET", "replica?key=shared")
        assert (cache_of(answer), answer.text) == ("hit", "1")
        assert len(upstream.recent("/replica")) == 1
        one.reset("s")
        assert cache_of(send(two, "s", "GET", "replica?key=shared")) is None
    finally:
        one.close()
        two.close()


def test_a_corrupt_redis_entry_is_logged_once_and_the_call_goes_upstream(
    redis_url: str, redis_server: Any, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    registry = fleet(redis_url, upstream, ttl=60)
    try:
        session = registry.session("s")
        session.get("catalogue")
        client = redis_server.client()
        for key in client.keys("outbound:cache:s:*"):
            client.set(key, b"\x93not an entry")
        with caplog.at_level(logging.WARNING, logger="outbound.cache"):
            for _ in range(2):
                answer = session.get("catalogue")
                assert answer.json() == {"ok": True}
                for key in client.keys("outbound:cache:s:*"):
                    client.set(key, b"\x93not an entry")
        assert len([r for r in caplog.records if "corrupt" in r.getMessage()]) == 1
        assert len(upstream.recent("/catalogue")) == 3
    finally:
        registry.close()


def test_a_redis_that_is_down_sends_calls_upstream(upstream: Upstream, caplog: pytest.LogCaptureFixture) -> None:
    import socket

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    registry = fleet(f"redis://127.0.0.1:{port}/0", upstream, ttl=60)
    try:
        with caplog.at_level(logging.WARNING, logger="outbound.cache"):
            for _ in range(3):
                assert registry.session("s").get("catalogue").json() == {"ok": True}
        assert len([r for r in caplog.records if "could not read" in r.getMessage()]) == 1
        assert len(upstream.recent("/catalogue")) == 3
    finally:
        registry.close()


def test_sqlite_storage(
    tmp_path: Any, make_registry: RegistryFactory, upstream: Upstream, kind: str, send: Send
) -> None:
    path = str(tmp_path / "cache.db")
    registry = make(make_registry, upstream, kind, cache={"storage": "sqlite", "path": path, "ttl": 60})
    send(registry, "s", "GET", "replica?key=sqlite")
    other = make_registry(
        s={"base_url": upstream.url, "client": client_of(kind), "cache": {"storage": "sqlite", "path": path, "ttl": 60}}
    )
    answer = send(other, "s", "GET", "replica?key=sqlite")
    assert (cache_of(answer), answer.text) == ("hit", "1")
    import sqlite3

    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE outbound_cache SET value = x'00ff'")
    assert cache_of(send(other, "s", "GET", "replica?key=sqlite")) is None  # corrupt: upstream, then stored again
    assert cache_of(send(other, "s", "GET", "replica?key=sqlite")) == "hit"


def test_stale_while_revalidate_refreshes_once_across_the_fleet(redis_url: str, upstream: Upstream) -> None:
    """100 concurrent stale hits over 4 registries (4 workers) sharing Redis: exactly one revalidation."""
    registries = [fleet(redis_url, upstream, ttl=1, stale_while_revalidate=600) for _ in range(4)]
    try:
        first = registries[0].session("s").get("replica?key=swr")
        assert first.text == "1"
        for registry in registries:
            later(registry, "s", 5)
        answers: list[Any] = []
        barrier = threading.Barrier(20)

        def worker(registry: Registry) -> None:
            barrier.wait(timeout=10)
            for _ in range(5):
                answers.append(registry.session("s").get("replica?key=swr"))

        threads = [threading.Thread(target=worker, args=(registries[n % 4],)) for n in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert len(answers) == 100
        assert upstream.wait_for(lambda: len(upstream.recent("/replica")) >= 2, timeout=5)
        time.sleep(0.2)  # a second revalidation, if the lock let one through, would be in by now
        assert len(upstream.recent("/replica")) == 2  # the first call and exactly one revalidation
        assert sum(counts(registry)["revalidations"] for registry in registries) == 1
        assert all(answer.text in ("1", "2") for answer in answers)
    finally:
        for registry in registries:
            registry.close()


# -- settings -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cache", "key", "words"),
    [
        ({"storage": "disk"}, "cache.storage", "'memory' or 'redis' or 'sqlite'"),
        ({"storage": "sqlite"}, "cache.path", "required"),
        ({"ttl": -1}, "cache.ttl", ">= 0"),
        ({"stale_if_error": "1m"}, "cache.stale_if_error", "number"),
        ({"storage": "redis", "url": "http://x"}, "cache.url", "redis://"),
        ({"path": "cache.db"}, "cache.path", "belongs to storage 'sqlite'"),
        ({"max_entries": 0}, "cache.max_entries", ">= 1"),
        ({"colour": 1}, "cache.colour", "unknown key"),
        ("yes", "cache", "mapping"),
    ],
)
def test_bad_cache_settings_are_config_errors(cache: Any, key: str, words: str) -> None:
    with pytest.raises(outbound.ConfigError) as caught:
        Registry.from_mapping({"services": {"s": {"base_url": "http://127.0.0.1:1/", "cache": cache}}})
    error = caught.value
    assert (error.service, error.key) == ("s", key)
    assert words in str(error)


@pytest.mark.parametrize(
    ("fallback", "key"),
    [
        (42, "fallback"),
        ({"status": 700}, "fallback.status"),
        ({"body": 1}, "fallback.body"),
        ({"json": {1, 2}}, "fallback.json"),
    ],
)
def test_bad_fallback_settings_are_config_errors(fallback: Any, key: str) -> None:
    with pytest.raises(outbound.ConfigError) as caught:
        Registry.from_mapping({"services": {"s": {"base_url": "http://127.0.0.1:1/", "fallback": fallback}}})
    assert (caught.value.service, caught.value.key) == ("s", key)


# -- observability and the test kit ------------------------------------------------------------------------------


def test_health_and_the_status_page_show_the_cache(make_registry: RegistryFactory, upstream: Upstream) -> None:
    from outbound._page import render_page

    registry = make(make_registry, upstream, "requests", cache={"ttl": 60})
    session = registry.session("s")
    session.get("catalogue")
    session.get("catalogue")
    report = registry.health()
    cache = report["services"]["s"]["cache"]
    assert (cache["storage"], cache["hits"], cache["misses"], cache["stored"]) == ("memory", 1, 1, 1)
    plain = make_registry(p={"base_url": upstream.url}).health()
    assert "cache" not in plain["services"]["p"]  # shown only when configured
    assert "Cache" in render_page(registry.health())


def test_outbound_no_cache_turns_every_cache_off(
    make_registry: RegistryFactory, upstream: Upstream, outbound_no_cache: None
) -> None:
    registry = make(make_registry, upstream, "requests", cache={"ttl": 60})
    session = registry.session("s")
    assert [session.get("replica?key=nocache").text for _ in range(2)] == ["1", "2"]


def test_no_cache_comes_back_after_the_block(make_registry: RegistryFactory, upstream: Upstream) -> None:
    from outbound.testing import no_cache

    registry = make(make_registry, upstream, "requests", cache={"ttl": 60})
    session = registry.session("s")
    with no_cache():
        session.get("catalogue")
    assert cache_of(session.get("catalogue")) is None  # nothing was stored meanwhile
    assert cache_of(session.get("catalogue")) == "hit"


def test_a_stale_entry_is_revalidated_with_its_etag(
    make_registry: RegistryFactory, upstream: Upstream, kind: str, send: Send
) -> None:
    registry = make(make_registry, upstream, kind, cache={})
    assert send(registry, "s", "GET", "etag?tag=v1").text == "etag body"
    later(registry, "s", 5)
    answer = send(registry, "s", "GET", "etag?tag=v1")
    assert (answer.status_code, answer.text, cache_of(answer)) == (200, "etag body", "revalidated")
    assert upstream.recent("/etag")[-1]["headers"]["if-none-match"] == '"v1"'
    assert cache_of(send(registry, "s", "GET", "etag?tag=v1")) == "hit"  # fresh again, for the 304's max-age=60
    assert len(upstream.recent("/etag")) == 2


def test_a_plain_get_hit_skips_request_preparation_but_not_the_rules(
    make_registry: RegistryFactory, upstream: Upstream
) -> None:
    """session.get(url) answers a fresh hit before requests prepares the call; a session with cookies, auth or
    hooks, or a stored redirect, takes the ordinary path, whose answer is the same."""
    registry = make(make_registry, upstream, "requests", cache={"ttl": 60})
    session = registry.session("s")
    session.get("replica?key=plain")
    hit = session.get("replica?key=plain")
    assert (cache_of(hit), hit.text, hit.request.method, hit.request.url) == (
        "hit",
        "1",
        "GET",
        upstream.url + "replica?key=plain",
    )
    assert hit.request.headers["User-Agent"] == session.headers["User-Agent"]
    session.headers["Accept-Language"] = "fr"
    assert cache_of(session.get("replica?key=plain")) == "hit"  # no Vary: the same answer
    vary = raw("Cache-Control: max-age=60", "Vary: Accept-Language")
    session.get(vary)
    session.headers["Accept-Language"] = "de"
    assert cache_of(session.get(vary)) is None  # Vary holds on the fast path too
    session.cookies.set("who", "alice")
    try:
        assert cache_of(session.get("replica?key=plain")) == "hit"  # the ordinary path (cookies are not keyed)
    finally:
        session.cookies.clear()
    redirect = "redirect?to=/replica%3Fkey%3Dtarget&status=301"
    first = session.get(redirect)
    again = session.get(redirect)
    assert (first.url, again.url) == (upstream.url + "replica?key=target", upstream.url + "replica?key=target")
    assert len(again.history) == 1
    assert cache_of(again.history[0]) == "hit"


def test_stale_while_revalidate_answers_at_once_and_refreshes_in_the_background(
    make_registry: RegistryFactory, upstream: Upstream, kind: str, send: Send
) -> None:
    registry = make(make_registry, upstream, kind, cache={"ttl": 1, "stale_while_revalidate": 600})
    assert send(registry, "s", "GET", "replica?key=bg").text == "1"
    later(registry, "s", 5)
    stale = [send(registry, "s", "GET", "replica?key=bg") for _ in range(10)]
    assert {cache_of(answer) for answer in stale} <= {"stale", "hit"}
    assert cache_of(stale[0]) == "stale"
    assert stale[0].text == "1"
    assert stale_of(stale[0]) is True
    assert upstream.wait_for(lambda: len(upstream.recent("/replica")) == 2, timeout=5)
    assert upstream.wait_for(lambda: send(registry, "s", "GET", "replica?key=bg").text == "2", timeout=5)
    assert len(upstream.recent("/replica")) == 2  # one refresh for ten stale hits
    assert counts(registry)["revalidations"] == 1


def test_stale_while_revalidate_on_the_async_client(make_registry: RegistryFactory, upstream: Upstream) -> None:
    registry = make(make_registry, upstream, "httpx", cache={"ttl": 1, "stale_while_revalidate": 600})

    async def main() -> list[Any]:
        client = registry.async_client("s")
        await client.get("replica?key=abg")
        later(registry, "s", 5)
        stale = [await client.get("replica?key=abg") for _ in range(5)]
        for _ in range(100):  # bounded: the refresh task runs on this loop
            if len(upstream.recent("/replica")) == 2:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)
        fresh = await client.get("replica?key=abg")
        return [cache_of(stale[0]), stale[0].text, fresh.text, cache_of(fresh)]

    assert asyncio.run(main()) == ["stale", "1", "2", "hit"]
    assert len(upstream.recent("/replica")) == 2


def test_the_cache_needs_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("outbound._config._installed", lambda module: module != "hishel")
    with pytest.raises(outbound.ConfigError, match=r"outbound-http\[cache\]") as caught:
        Registry.from_mapping({"services": {"s": {"base_url": "http://127.0.0.1:1/", "cache": {}}}})
    assert (caught.value.service, caught.value.key) == ("s", "cache.storage")


def test_a_spent_deadline_is_answered_stale(
    make_registry: RegistryFactory, upstream: Upstream, kind: str, send: Send
) -> None:
    registry = make(make_registry, upstream, kind, cache={"ttl": 1, "stale_if_error": 60})
    send(registry, "s", "GET", "catalogue")
    later(registry, "s", 5)
    with outbound.deadline(0.001):
        time.sleep(0.01)
        answer = send(registry, "s", "GET", "catalogue")
    assert (answer.status_code, cache_of(answer)) == (200, "stale")
    with outbound.deadline(0.001):
        time.sleep(0.01)
        with pytest.raises(outbound.DeadlineExceededError):
            send(registry, "s", "GET", "other")


def test_a_pause_is_answered_stale(make_registry: RegistryFactory, upstream: Upstream, kind: str, send: Send) -> None:
    registry = make(make_registry, upstream, kind, cache={"ttl": 1, "stale_if_error": 60}, retry={"total": 0})
    send(registry, "s", "GET", "catalogue")
    send(registry, "s", "GET", "status/429?retry_after=30")  # the upstream asks for a pause
    later(registry, "s", 5)
    before = len(upstream.recent())
    answer = send(registry, "s", "GET", "catalogue")
    assert (answer.status_code, cache_of(answer)) == (200, "stale")
    assert len(upstream.recent()) == before
    with pytest.raises(outbound.RateLimitedError):
        send(registry, "s", "GET", "other")


def test_header_bytes_survive_the_cache(
    make_registry: RegistryFactory, upstream: Upstream, kind: str, send: Send
) -> None:
    registry = make(make_registry, upstream, kind, cache={"ttl": 60})
    path = f"raw?status=200&headers={b'Cache-Control: max-age=60'.hex()}0d0a{'X-Name: café'.encode().hex()}"
    first = send(registry, "s", "GET", path)
    hit = send(registry, "s", "GET", path)
    assert cache_of(hit) == "hit"
    assert hit.headers["X-Name"] == first.headers["X-Name"]


def test_a_foreign_entry_with_a_bad_header_is_ignored(redis_url: str, redis_server: Any, upstream: Upstream) -> None:
    from outbound._cache._entry import Entry

    registry = fleet(redis_url, upstream, ttl=60)
    try:
        session = registry.session("s")
        session.get("catalogue")
        client = redis_server.client()
        hostile = Entry(
            status=200,
            headers=(("Bad Name\r\nX-Injected", "1"),),
            body=b"{}",
            stored_at=time.time(),
            initial_age=0.0,
            lifetime=60.0,
            stale_if_error=0.0,
            stale_while_revalidate=0.0,
            vary=(),
        )
        for key in client.keys("outbound:cache:s:*"):
            client.set(key, hostile.pack())
        answer = session.get("catalogue")
        assert cache_of(answer) is None
        assert answer.json() == {"ok": True}
        assert counts(registry)["storage_errors"] == 1
    finally:
        registry.close()


def test_the_memory_storage_is_bounded_by_bytes(make_registry: RegistryFactory, upstream: Upstream) -> None:
    registry = make(make_registry, upstream, "requests", cache={"ttl": 60, "max_bytes": 1000})
    session = registry.session("s")
    for n in range(20):
        session.get(f"replica?key=bytes{n}")
    storage: Any = registry["s"].policy.cache.storage  # type: ignore[union-attr]
    assert 0 < len(storage) < 20
    assert storage._bytes <= 1000


def test_redis_storage_defaults_to_the_state_redis(redis_url: str, redis_server: Any, upstream: Upstream) -> None:
    registry = Registry.from_mapping(
        {
            "services": {"s": {"base_url": upstream.url, "cache": {"storage": "redis", "ttl": 60}}},
            "state": {"backend": "redis", "url": redis_url, "prefix": "fleet7"},
        }
    )
    try:
        registry.session("s").get("catalogue")
        assert redis_server.client().keys("fleet7:cache:s:*")
        assert cache_of(registry.session("s").get("catalogue")) == "hit"
    finally:
        registry.close()


def test_the_cache_sits_on_an_sdk_services_layer(
    make_registry: RegistryFactory, upstream: Upstream, kind: str, send: Send
) -> None:
    """An ``sdk`` service answers refusals as 503 responses the SDK does not retry: the cache replaces them too."""
    registry = make(make_registry, upstream, kind, sdk={}, cache={"ttl": 1, "stale_if_error": 60})
    send(registry, "s", "GET", "catalogue")
    open_breaker(registry, "s")
    later(registry, "s", 5)
    answer = send(registry, "s", "GET", "catalogue")
    assert (answer.status_code, cache_of(answer)) == (200, "stale")
    assert send(registry, "s", "GET", "other").status_code == 503  # the SDK layer's answer, as without a cache


def test_an_entry_round_trips_and_anything_else_is_corrupt() -> None:
    import msgpack
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from outbound._cache._entry import CorruptEntry, Entry, unpack

    entry = Entry(
        status=200,
        headers=(("Content-Type", "text/plain"), ("X-Name", "caf\xe9")),
        body=b"body",
        stored_at=time.time(),
        initial_age=3.0,
        lifetime=60.0,
        stale_if_error=10.0,
        stale_while_revalidate=5.0,
        vary=(("accept", "text/html"),),
    )
    assert unpack(entry.pack()) == entry

    values = st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**63 - 1)
        | st.floats()
        | st.text(max_size=8)
        | st.binary(max_size=8),
        lambda inner: st.lists(inner, max_size=10),
        max_leaves=30,
    )

    shaped = st.lists(values, min_size=9, max_size=9).map(lambda fields: [1, *fields])  # our shape, hostile fields
    packed = st.one_of(values, shaped).map(lambda value: msgpack.packb(value, use_bin_type=True))

    @settings(max_examples=150, deadline=None)
    @given(st.one_of(st.binary(max_size=64), packed))
    def hostile(data: bytes) -> None:
        with contextlib.suppress(CorruptEntry):
            unpack(data)

    hostile()


def test_egress_still_refuses_with_a_cache(
    make_registry: RegistryFactory, upstream: Upstream, kind: str, send: Send
) -> None:
    registry = make(make_registry, upstream, kind, egress={}, cache={"ttl": 60})
    for _ in range(2):
        with pytest.raises(outbound.EgressDeniedError):
            send(registry, "s", "GET", "catalogue")  # a loopback upstream: refused, never stored
    assert upstream.requests_log == []
    assert counts(registry)["stored"] == 0
