"""Hostile or corrupt shared state: whatever is under the prefix in Redis, a fleet worker keeps serving and reporting.

Garbage of many shapes is published on the fleet's channel and written where the fleet keeps its records (stats,
breakers, pauses, the workers set, counters; keys of the wrong type too), by hand and by Hypothesis. After each, the
listener thread must still apply the next good message, ``health()`` must answer with finite numbers in JSON that
``json.dumps(..., allow_nan=False)`` accepts, the status page must render, no pause may outlast the service's cap,
and a bad record is logged once, not once per read.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import outbound
from outbound import Registry
from outbound._page import render_page
from outbound.health import respond
from tests.redis_server import RedisServer
from tests.upstream import Upstream, wait_until

PREFIX = "hostile"
FAKE = "elsewhere:4242:abcdef"  # another worker, as far as the worker under test can tell
CAP = 10.0  # retry.retry_after_max: the longest pause the service may take
RESET_TIMEOUT = 30.0


def _mapping(redis_url: str, upstream: Upstream) -> dict[str, Any]:
    service = {"base_url": upstream.url, "retry": None, "breaker": {"fail_max": 3, "reset_timeout": RESET_TIMEOUT}}
    return {
        "services": {"api": service},
        "state": {"backend": "redis", "url": redis_url, "prefix": PREFIX, "sync_interval": 0.1},
        "health": {"token": "hostile-token-0123456789"},
    }


@pytest.fixture
def worker(redis_url: str, upstream: Upstream) -> Iterator[Registry]:
    """A worker following the fleet (its threads run)."""
    with Registry.from_mapping(_mapping(redis_url, upstream)) as registry:
        registry.session("api").get("ok")
        assert wait_until(lambda: _listener_alive() and _store(redis_url).exists(f"{PREFIX}:workers") == 1)
        yield registry


def _store(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, socket_timeout=2)


def _listener_alive() -> bool:
    return any(thread.name == "outbound-fleet-events" for thread in threading.enumerate())


def _send(client: redis.Redis, payload: bytes | str) -> None:
    client.publish(f"{PREFIX}:events", payload)


def _listener_follows(client: redis.Redis, registry: Registry) -> None:
    """A good message after the garbage is applied: the listener is alive and went past everything before it.

    A pause message from another worker: only the channel brings it (nothing is written to Redis, so the periodic
    re-read cannot), and a pause never gets shorter, so one taken from the garbage would show through it.
    """
    pause = registry["api"].policy.pause
    assert pause is not None
    pause.reset()
    _send(client, json.dumps({"worker": FAKE, "service": "api", "pause": 5}))
    assert wait_until(lambda: (pause.paused_for() or 0) > 4), "the listener stopped"
    assert (pause.paused_for() or 0) <= 5, "a bad pause was taken"
    pause.reset()


def _numbers(value: Any) -> Iterator[float]:
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item)


def _reports_sanely(registry: Registry) -> dict[str, Any]:
    """``health()`` answers, its JSON is strict (no NaN, no Infinity), every number bounded; the page renders."""
    report = registry.health()
    text = json.dumps(report, allow_nan=False)
    assert all(math.isfinite(number) and abs(number) < 2**63 for number in _numbers(json.loads(text)))
    api = report["services"]["api"]
    assert api.get("paused_for", 0) <= CAP
    retry_in = api["breaker"]["retry_in"]
    assert retry_in is None or 0 <= retry_in <= 366 * 86_400
    page = render_page(report)
    assert "<title>" in page
    for accept in ("application/json", "text/html"):
        answer = respond(registry, authorization="Bearer hostile-token-0123456789", accept=accept)
        assert answer.status in (200, 503)
    return report


# -- the channel ---------------------------------------------------------------------------------------------------

BAD_MESSAGES: list[bytes | str] = [
    # a pause of Infinity (1e999), NaN, negative, a string, a boolean, absurdly long
    f'{{"worker": "{FAKE}", "service": "api", "pause": 1e999}}',
    f'{{"worker": "{FAKE}", "service": "api", "pause": NaN}}',
    f'{{"worker": "{FAKE}", "service": "api", "pause": -Infinity}}',
    json.dumps({"worker": FAKE, "service": "api", "pause": -5}),
    json.dumps({"worker": FAKE, "service": "api", "pause": "10"}),
    json.dumps({"worker": FAKE, "service": "api", "pause": True}),
    json.dumps({"worker": FAKE, "service": "api", "pause": 1e300}),
    # transitions without a state, with a state that is not one, with seconds that are not seconds
    json.dumps({"worker": FAKE, "service": "api"}),
    json.dumps({"worker": FAKE, "service": "api", "state": "banana"}),
    json.dumps({"worker": FAKE, "service": "api", "state": None}),
    json.dumps({"worker": FAKE, "service": "api", "state": ["open"]}),
    f'{{"worker": "{FAKE}", "service": "api", "state": "open", "seconds": 1e999}}',
    f'{{"worker": "{FAKE}", "service": "api", "state": "isolated", "seconds": NaN}}',
    json.dumps({"worker": FAKE, "service": "api", "state": "open", "seconds": -1}),
    json.dumps({"worker": FAKE, "service": "api", "state": "isolated", "seconds": 1e300}),
    json.dumps({"worker": FAKE, "service": "api", "state": "open", "seconds": "30"}),
    json.dumps({"worker": FAKE, "service": "api", "state": "open", "seconds": 5, "until": "soon"}),
    json.dumps({"worker": FAKE, "service": "api", "state": "open", "seconds": 5, "until": 10**30}),
    json.dumps({"worker": FAKE, "service": "api", "state": "open", "seconds": 5, "at": -1}),
    json.dumps({"worker": FAKE, "service": "api", "state": "open", "seconds": 5, "cause": "503"}),
    json.dumps({"worker": FAKE, "service": "api", "state": "open", "seconds": 5, "cause": {"type": 503}}),
    json.dumps(
        {"worker": FAKE, "service": "api", "state": "open", "seconds": 5, "cause": {"type": "X", "at": "yesterday"}}
    ),
    json.dumps(
        {"worker": FAKE, "service": "api", "state": "closed", "reset": "now", "cause": None, "reason": ["a", "b"]}
    ),
    json.dumps({"worker": FAKE, "service": "api", "state": "closed", "reset": 10**40}),
    # not ours, not an object, not JSON, not text, nested past any parser's patience, too long to read
    json.dumps({"worker": 5, "service": "api", "state": "open", "seconds": 5}),
    json.dumps({"service": "api", "state": "open", "seconds": 5}),
    json.dumps({"worker": FAKE, "service": ["api"], "state": "open", "seconds": 5}),
    json.dumps({"worker": FAKE, "service": "unknown", "state": "open", "seconds": 5}),
    "null",
    "[]",
    '"open"',
    "12",
    "{",
    b"\xff\xfe\x00garbage",
    "[" * 100_000,
    json.dumps({"worker": FAKE, "service": "api", "state": "open", "seconds": 5, "reason": "x" * 2_000_000}),
]


def test_bad_messages_of_every_shape_leave_the_listener_alive_and_the_numbers_finite(
    worker: Registry, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = _store(redis_url)
    with caplog.at_level(logging.DEBUG, logger="outbound.fleet"):
        for payload in BAD_MESSAGES:
            _send(client, payload)
        _listener_follows(client, worker)
        for payload in BAD_MESSAGES:  # the same again: logged once, not once per message
            _send(client, payload)
        _listener_follows(client, worker)
    assert _listener_alive()
    report = _reports_sanely(worker)
    assert report["services"]["api"]["breaker"]["state"] == "closed"
    assert worker.session("api").get("ok").status_code == 200
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "skipped" in r.getMessage()]
    assert len(warnings) == 1, warnings  # one kind of record: one warning, however many bad ones came


def test_a_pause_from_another_worker_never_outlasts_the_services_cap(worker: Registry, redis_url: str) -> None:
    client = _store(redis_url)
    _send(client, json.dumps({"worker": FAKE, "service": "api", "pause": 86_400 * 300}))  # finite, absurd
    assert wait_until(lambda: worker["api"].policy.pause.paused_for() is not None)  # type: ignore[union-attr]
    report = _reports_sanely(worker)
    assert 0 < report["services"]["api"]["paused_for"] <= CAP


# -- records -------------------------------------------------------------------------------------------------------

GOOD_RECORD = {
    "api": {
        "requests": 5,
        "errors": 1,
        "retries": 0,
        "short_circuited": 0,
        "pool_timeouts": 0,
        "rejected": {},
        "latency": {"10": 5},
        "last_error": {"type": "ReadTimeout", "message": "read timeout", "at": "2026-01-01T00:00:00+00:00"},
        "epoch": 0,
    }
}


def _api(**entry: Any) -> str:
    return json.dumps({"api": {**GOOD_RECORD["api"], **entry}})


BAD_RECORDS: list[bytes | str] = [
    "not json",
    b"\xff\xfe",
    "[1, 2, 3]",
    "null",
    '{"api": "five"}',
    '{"api": {"requests": NaN}}',
    '{"api": {"requests": Infinity}}',
    _api(requests=-3),
    _api(requests=10**30),
    _api(requests=1.5),
    _api(requests="5"),
    _api(errors=True),
    _api(rejected=["bulkhead_full"]),
    _api(rejected={"bulkhead_full": -1}),
    _api(rejected={f"r{i}": 1 for i in range(100)}),
    _api(latency={"99999": 1}),
    _api(latency={"x": 1}),
    _api(latency={"1": 10**40}),
    _api(latency=[1, 2]),
    _api(last_error={"type": "X", "message": "m", "at": "yesterday"}),
    _api(last_error={"type": "X", "message": "m", "at": "2026-01-01T00:00:00"}),  # no UTC offset
    _api(last_error={"type": "X", "message": "m", "at": "9999-12-31T23:59:59-23:59"}),  # past year 9999 in UTC
    _api(last_error={"type": None, "message": "m", "at": "2026-01-01T00:00:00+00:00"}),
    _api(last_error="ReadTimeout"),
    _api(epoch="later"),
    "[" * 100_000,
    json.dumps({"api": {**GOOD_RECORD["api"], "pad": "x" * 2_000_000}}),  # too long to read
]


def _write_workers(client: redis.Redis, records: dict[str, bytes | str]) -> None:
    now_ms = int(time.time() * 1000) + 60_000  # live for a minute, whatever the clocks say
    for worker, record in records.items():
        client.set(f"{PREFIX}:stats:{worker}", record, px=60_000)
        client.zadd(f"{PREFIX}:workers", {worker: now_ms})


def test_bad_stats_records_are_skipped_and_the_report_stays_finite(
    worker: Registry, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = _store(redis_url)
    records: dict[str, bytes | str] = {f"bad-{i}:1:{i:06x}": record for i, record in enumerate(BAD_RECORDS)}
    records[FAKE] = json.dumps(GOOD_RECORD)
    with caplog.at_level(logging.WARNING, logger="outbound.fleet"):
        _write_workers(client, records)
        client.zadd(f"{PREFIX}:workers", {"not a worker id": time.time() * 1000 + 60_000})
        client.zadd(f"{PREFIX}:workers", {b"\xff\xfe:1:abcdef": time.time() * 1000 + 60_000})
        client.hset(f"{PREFIX}:stats:wrong-type:1:aaaaaa", "api", "5")
        client.zadd(f"{PREFIX}:workers", {"wrong-type:1:aaaaaa": time.time() * 1000 + 60_000})
        first = _reports_sanely(worker)
        logged = [record.getMessage() for record in caplog.records]
        for _ in range(5):  # every report, and the sync every 0.1 s, read the same bad records again
            _reports_sanely(worker)
            time.sleep(0.1)
        assert len(caplog.records) == len(logged)  # each kind of bad record was logged once
    kinds = {message.split(" from the fleet's Redis")[0] for message in logged}
    assert kinds == {"skipped a worker's stats record", "skipped a worker's stats of 'api'", "skipped a worker id"}
    api = first["services"]["api"]
    own = worker["api"].policy.stats.requests
    assert api["stats"]["requests"] == own + 5  # the good record alone was counted
    assert api["stats"]["errors"] == 1
    assert api["last_error"]["type"] == "ReadTimeout"
    assert first["state_backend"]["status"] == "ok"


BAD_BREAKERS: list[dict[str, Any]] = [
    {"state": "banana"},
    {"state": "open", "until": "soon"},
    {"state": "open", "until": str(10**30)},
    {"state": "isolated", "opened": "-5"},
    {"state": "open", "until": "1", "cause": "not json"},
    {"state": "open", "until": "1", "cause": json.dumps({"type": "X", "at": "never"})},
]


def test_corrupt_breaker_records_are_skipped_and_far_ends_are_bounded(worker: Registry, redis_url: str) -> None:
    client = _store(redis_url)
    key = f"{PREFIX}:breaker:api"
    for fields in BAD_BREAKERS:
        client.delete(key)
        client.hset(key, mapping=fields)
        report = _reports_sanely(worker)
        assert report["services"]["api"]["breaker"]["state"] in ("closed", "half-open"), fields
    far = int(time.time() * 1000) + 10**14  # three thousand years ahead: a valid time, an absurd wait
    client.delete(key)
    client.hset(key, mapping={"state": "open", "until": far, "opened": far - 10**14})
    client.incr(f"{PREFIX}:version")  # as every write of a decision does: the workers have something to re-read
    breaker = _reports_sanely(worker)["services"]["api"]["breaker"]
    assert breaker["state"] == "open"
    assert breaker["retry_in"] <= RESET_TIMEOUT  # an opening never outlasts reset_timeout
    assert wait_until(lambda: worker["api"].policy.breaker.state == "open")  # adopted by the periodic re-read
    assert (worker["api"].policy.breaker.retry_in() or 0) <= RESET_TIMEOUT
    client.delete(key)
    client.hset(key, mapping={"state": "isolated", "until": far})
    assert _reports_sanely(worker)["services"]["api"]["breaker"]["retry_in"] <= 366 * 86_400


def test_a_pause_key_with_an_absurd_ttl_pauses_no_longer_than_the_cap(worker: Registry, redis_url: str) -> None:
    _store(redis_url).set(f"{PREFIX}:pause:api", "x", px=10**12)  # thirty years
    _store(redis_url).incr(f"{PREFIX}:version")  # as every write of a pause does
    assert wait_until(lambda: worker["api"].policy.pause.paused_for() is not None)  # type: ignore[union-attr]
    assert 0 < (worker["api"].policy.pause.paused_for() or 0) <= CAP  # type: ignore[union-attr]
    _reports_sanely(worker)


def test_keys_of_the_wrong_type_neither_cut_the_worker_off_nor_stop_the_fleet(
    worker: Registry, redis_url: str, redis_server: RedisServer, upstream: Upstream
) -> None:
    client = _store(redis_url)
    client.delete(f"{PREFIX}:workers")
    client.set(f"{PREFIX}:workers", "not a sorted set")
    client.set(f"{PREFIX}:breaker:api", "not a hash")
    client.hset(f"{PREFIX}:fails:api", "n", "1")
    client.hset(f"{PREFIX}:trial:api", "n", "1")
    client.rpush(f"{PREFIX}:decided", "api")
    client.set(f"{PREFIX}:resets", "12")
    report = _reports_sanely(worker)
    assert report["state_backend"]["status"] == "ok"  # a bad key is not Redis failing
    time.sleep(0.3)  # a few syncs read and write over the bad keys
    assert worker.health()["state_backend"]["status"] == "ok"
    with Registry.from_mapping(_mapping(redis_url, upstream)) as other:
        other.session("api").get("ok")
        for _ in range(3):  # the fleet still opens the breaker: the scripts replace what they cannot use
            assert worker.session("api").get("status/503").status_code == 503
        assert wait_until(lambda: other["api"].policy.breaker.state == "open", timeout=3)
        with pytest.raises(outbound.CircuitOpenError):
            other.session("api").get("ok")
    assert worker.health()["services"]["api"]["breaker"]["opened_by"]["message"] == "HTTP 503"


# -- whatever Hypothesis makes of it ----------------------------------------------------------------------------------

JUNK_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**15, max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["open", "isolated", "closed", "half-open", "api", FAKE, "2026-01-01T00:00:00+00:00"])
)
JUNK = st.recursive(
    JUNK_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
FIELDS = ("state", "seconds", "until", "at", "reason", "cause", "reset", "pause", "worker", "service")
# Plausible messages with junk where a field should be, and junk alone.
MESSAGES = st.one_of(
    JUNK,
    st.dictionaries(st.sampled_from(FIELDS), JUNK, max_size=6).map(
        lambda junk: {"worker": FAKE, "service": "api", "state": "open", "seconds": 5, **junk}
    ),
)
STATS_ENTRY_KEYS = ("requests", "errors", "retries", "rejected", "latency", "last_error", "epoch")
RECORDS = st.one_of(
    JUNK.map(lambda junk: {"api": junk}),
    st.dictionaries(st.sampled_from(STATS_ENTRY_KEYS), JUNK, max_size=4).map(
        lambda junk: {"api": {**GOOD_RECORD["api"], **junk}}
    ),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(message=MESSAGES, record=RECORDS)
def test_whatever_junk_is_published_or_stored_the_worker_keeps_serving_and_reporting(
    worker: Registry, redis_url: str, message: Any, record: Any
) -> None:
    client = _store(redis_url)
    _send(client, json.dumps(message))  # NaN and Infinity written as JSON's non-standard words
    _write_workers(client, {FAKE: json.dumps(record)})
    _listener_follows(client, worker)
    _reports_sanely(worker)
    pause = worker["api"].policy.pause
    assert pause is not None
    assert (pause.paused_for() or 0) <= CAP
    pause.reset()
    worker["api"].policy.breaker.reset()  # whatever a valid-looking junk message opened, start the next one clean
