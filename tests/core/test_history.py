"""A service's history (``health.history``): the bucket ring, its JSON (``?history=1``), its fleet record."""

from __future__ import annotations

import json
import sys
import threading
from datetime import datetime, timezone
from typing import Any

import pytest

import outbound
from outbound import serving
from outbound._config import HistoryConfig
from outbound._events import BreakerTransition, CacheServed, CallRejected, RetryScheduled
from outbound._history import BATCH, MAX_MARKS, SLOTS, History, HistoryRecord
from outbound._outcome import Kind, Reason
from outbound._parse import INVALID
from tests.conftest import RegistryFactory, open_breaker
from tests.core.conftest import Send, client_of
from tests.core.test_cache import cache_of, later
from tests.upstream import Upstream

HISTORY = {"history": {"interval": 10.0, "buckets": 6}}


class WallClock:
    """A wall clock a test moves by hand (seconds since the epoch)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def finished(seconds: float, *, error: str | None = None, kind: Kind = Kind.RESPONSE) -> tuple[Kind, float, str | None]:
    """What a finished call feeds a history (``History.record_call``): its kind, seconds and error type."""
    return kind, seconds, error


def test_buckets_count_calls_errors_refusals_retries_and_roll_with_the_clock() -> None:
    clock = WallClock()
    history = History(HistoryConfig(interval=10.0, buckets=3), clock=clock)
    for _ in range(4):
        history.record_call(*finished(0.010))
    history.record_call(*finished(0.200, error="HTTPStatus"))
    history.call_rejected(CallRejected("s", "GET", Reason.CIRCUIT_OPEN, 1.0))
    history.retry_scheduled(RetryScheduled("s", "GET", "u", 1, "status_503", 0.1, "503"))
    # Interrupted calls and calls refused before sending are not calls of a bucket.
    history.record_call(*finished(0.5, kind=Kind.CANCELLED))
    history.record_call(*finished(0.0, kind=Kind.REFUSED))
    first = history.snapshot()
    assert (first.calls, first.errors, first.refused, first.retries) == ((0, 0, 5), (0, 0, 1), (0, 0, 1), (0, 0, 1))
    assert first.p50_ms[-1] is not None
    assert 10.0 <= first.p50_ms[-1] <= 12.5
    assert first.p99_ms[-1] is not None
    assert 200.0 <= first.p99_ms[-1] <= 250.0
    assert first.p95_ms[:2] == (None, None)
    clock.now += 10.0
    history.record_call(*finished(0.001))
    second = history.snapshot()
    assert second.calls == (0, 5, 1)
    assert second.p95_ms[1] == first.p95_ms[2]  # a bucket that is over keeps its percentiles
    clock.now += 30.0  # past the window: the old buckets are out of it, their slots reused
    history.record_call(*finished(0.001))
    assert history.snapshot().calls == (0, 0, 1)
    assert history.snapshot().end == datetime.fromtimestamp((int(clock.now // 10) + 1) * 10, timezone.utc)


def test_calls_noted_between_countings_stay_few_and_count_in_the_bucket_they_ended_in() -> None:
    # A call is noted without the lock and counted into its bucket every BATCH calls or before a read: the notes
    # never pile up, and one noted before the clock moved on counts in its own bucket, not the next.
    clock = WallClock()
    history = History(HistoryConfig(interval=10.0, buckets=3), clock=clock)
    for _ in range(5 * BATCH + 3):
        history.record_call(*finished(0.010))
        assert len(history._pending) < BATCH
    clock.now += 10.0
    history.record_call(*finished(0.010, error="ReadTimeout"))
    snapshot = history.snapshot()
    assert (snapshot.calls, snapshot.errors) == ((0, 5 * BATCH + 3, 1), (0, 0, 1))
    assert not history._pending


def test_a_full_history_stays_within_64_kb() -> None:
    clock = WallClock()
    history = History(HistoryConfig(), clock=clock)  # the default 10 s x 90
    for _bucket in range(90):
        clock.now += 10.0
        for slot in range(SLOTS):
            history.record_call(*finished(0.0005 * 1.21**slot))
        history.snapshot()  # caches the percentiles of every bucket that is over
    for index in range(MAX_MARKS + 10):
        history.breaker_transition(BreakerTransition("s", "closed", "open", f"{index} consecutive failures", 30.0))
    assert all(calls == SLOTS for calls in history.snapshot().calls)
    counted = history.memory()
    for _ in range(BATCH - 1):  # the most calls it holds noted and not yet counted: they count too
        history.record_call(*finished(0.010))
    assert counted + (BATCH - 1) * 100 < history.memory() <= 64 * 1024, history.memory()


def test_its_memory_is_read_while_calls_are_noted() -> None:
    # Calls are noted without the lock: reading the notes must not meet a queue changing under it.
    history = History(HistoryConfig())
    stop = threading.Event()

    def feed() -> None:
        while not stop.is_set():
            history.record_call(*finished(0.010))

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns as often as they can: the race shows in a few thousand reads
    feeders = [threading.Thread(target=feed) for _ in range(2)]
    try:
        for feeder in feeders:
            feeder.start()
        for _ in range(20_000):
            history.memory()
    finally:
        stop.set()
        for feeder in feeders:
            feeder.join()
        sys.setswitchinterval(switch)


def test_breaker_transitions_are_marks_of_the_window() -> None:
    clock = WallClock()
    history = History(HistoryConfig(interval=1.0, buckets=10), clock=clock)
    history.breaker_transition(BreakerTransition("s", "closed", "open", "5 consecutive failures", 30.0))
    clock.now += 3
    history.breaker_transition(BreakerTransition("s", "open", "half-open", "", 0.0))
    marks = history.snapshot().marks
    assert [(mark.kind, mark.state) for mark in marks] == [("breaker", "open"), ("breaker", "half-open")]
    assert marks[0].text == "closed → open: 5 consecutive failures"
    clock.now += 8.5  # the first mark is older than the window now
    assert [mark.state for mark in history.snapshot().marks] == ["half-open"]


def test_a_registry_keeps_a_history_of_real_calls(make_registry: RegistryFactory, upstream: Upstream) -> None:
    registry = make_registry(
        health=HISTORY, api={"base_url": upstream.url, "retry": {"total": 0}, "breaker": {"fail_max": 3}}
    )
    session = registry.session("api")
    for _ in range(3):
        session.get("ok")
    open_breaker(registry, "api")
    with pytest.raises(outbound.CircuitOpenError):
        session.get("ok")
    report = registry.report(history=True).as_dict()
    history = report["services"]["api"]["history"]
    assert history["interval"] == 10.0
    assert len(history["calls"]) == 6
    assert sum(history["calls"]) == 6
    assert sum(history["errors"]) == 3
    assert sum(history["refused"]) == 1
    assert history["p95_ms"][-1] is not None or history["p95_ms"][-2] is not None
    assert [mark["state"] for mark in history["marks"]] == ["open"]
    assert "3 consecutive failures" in history["marks"][0]["text"]
    # Off by default in a report, so probes stay small.
    assert "history" not in registry.health()["services"]["api"]
    assert registry.health(history=True)["services"]["api"]["history"] == history


def test_without_the_setting_nothing_is_kept(make_registry: RegistryFactory, upstream: Upstream) -> None:
    registry = make_registry(api={"base_url": upstream.url})
    registry.session("api").get("ok")
    assert registry["api"].history is None
    assert "history" not in registry.report(history=True).as_dict()["services"]["api"]


def test_the_json_has_the_history_only_when_asked(make_registry: RegistryFactory, upstream: Upstream) -> None:
    registry = make_registry(health={**HISTORY, "show_details": "always"}, api={"base_url": upstream.url})
    registry.session("api").get("ok")
    plain = json.loads(serving.respond(registry, authorization=None).body)
    asked = json.loads(serving.respond(registry, authorization=None, history="1").body)
    assert "history" not in plain["services"]["api"]
    assert sum(asked["services"]["api"]["history"]["calls"]) == 1
    # The page always draws what it has; a summary (no details) has none.
    page = serving.respond(registry, authorization=None, accept="text/html").body.decode()
    assert 'data-series="requests"' in page
    assert "<svg" in page
    hidden = make_registry(health={**HISTORY, "show_details": "never"}, api={"base_url": upstream.url})
    assert json.loads(serving.respond(hidden, authorization=None, history="1").body) == {"status": "ok"}


@pytest.mark.parametrize(
    ("history", "key", "words"),
    [
        ("yes", "health.history", "must be true, false, null or a mapping"),
        ({"interval": 0}, "health.history.interval", "must be > 0"),
        ({"buckets": 1}, "health.history.buckets", "must be >= 2"),
        ({"buckets": 10_000}, "health.history.buckets", "must be <= 360"),
        ({"intervall": 5}, "health.history.intervall", "did you mean 'interval'"),
    ],
)
def test_bad_history_settings_are_config_errors(history: Any, key: str, words: str) -> None:
    with pytest.raises(outbound.ConfigError) as caught:
        outbound.parse_config({"health": {"history": history}, "services": {}})
    assert caught.value.key == key
    assert words in str(caught.value)


def test_history_settings_forms() -> None:
    def parsed(value: Any) -> HistoryConfig | None:
        return outbound.parse_config({"health": {"history": value}, "services": {}}).health.history

    assert parsed(True) == HistoryConfig()
    assert parsed(False) is None
    assert parsed(None) is None
    assert parsed({"interval": 1, "buckets": 30}) == HistoryConfig(interval=1.0, buckets=30)


def test_a_record_survives_its_round_trip_and_records_merge_by_bucket() -> None:
    clock = WallClock()
    config = HistoryConfig(interval=10.0, buckets=6)
    one, two = History(config, clock=clock), History(config, clock=clock)
    one.record_call(*finished(0.010))
    two.record_call(*finished(0.010))
    two.record_call(*finished(1.0, error="ReadTimeout"))
    clock.now += 10
    two.record_call(*finished(0.010))
    one.breaker_transition(BreakerTransition("s", "closed", "open", "5 consecutive failures", 30.0))
    two.breaker_transition(BreakerTransition("s", "closed", "open", "opened by another process", 30.0))
    records = [
        HistoryRecord.from_dict(json.loads(json.dumps(h.export().as_dict())), interval=10.0, size=6) for h in (one, two)
    ]
    merged = HistoryRecord.merge(records, interval=10.0).snapshot(size=6, now=clock.now)
    assert merged.calls[-2:] == (3, 1)
    assert merged.errors[-2:] == (1, 0)
    assert merged.p99_ms[-2] is not None
    assert merged.p99_ms[-2] >= 1000.0
    assert [mark.state for mark in merged.marks] == ["open"]  # one opening, seen by both


@pytest.mark.parametrize(
    "hostile",
    [
        None,
        [],
        {"interval": 5.0, "buckets": []},  # another interval: buckets that do not line up
        {"interval": 10.0, "buckets": "x"},
        {"interval": 10.0, "buckets": [[1, [1, 2, 3], {}]]},
        {"interval": 10.0, "buckets": [[1, [1, 2, 3, 4], {}]]},  # four counts: no stale answers
        {"interval": 10.0, "buckets": [[1, [1, 2, 3, 4, -5], {}]]},
        {"interval": 10.0, "buckets": [[1, [1, 2, 3, 4, "5"], {}]]},
        {"interval": 10.0, "buckets": [[True, [1, 2, 3, 4, 0], {}]]},
        {"interval": 10.0, "buckets": [[1, [1, 2, 3, 4, 0], {"999": 1}]]},
        {"interval": 10.0, "buckets": [[1, [1, 2, 3, 4, 0], {"1": 10**30}]]},
        {"interval": 10.0, "buckets": [[index, [0, 0, 0, 0, 0], {}] for index in range(7)]},
        {"interval": 10.0, "buckets": [], "marks": [{"at": "never", "kind": "breaker"}]},
        {"interval": 10.0, "buckets": [], "marks": [{"at": "2026-01-01T00:00:00+00:00", "kind": "rm -rf"}]},
        {"interval": 10.0, "buckets": [], "marks": [{"at": "2026-01-01T00:00:00", "kind": "breaker"}]},  # no offset
        {"interval": 10.0, "buckets": [], "marks": [{"at": "9999-12-31T23:59:59-23:59", "kind": "pause"}]},
        {"interval": 10.0, "buckets": [], "marks": [{"at": "2026-01-01T00:00:00+00:00", "kind": "pause", "until": 5}]},
        {"interval": 10.0, "buckets": [[-1, [0, 0, 0, 0, 0], {}]]},
        {"interval": 10.0, "buckets": [[10**30, [0, 0, 0, 0, 0], {}]]},
    ],
)
def test_a_hostile_record_is_refused(hostile: Any) -> None:
    with pytest.raises(INVALID):
        HistoryRecord.from_dict(hostile, interval=10.0, size=6)


def test_a_published_history_is_cut_to_its_budget_oldest_buckets_first() -> None:
    clock = WallClock()
    history = History(HistoryConfig(interval=10.0, buckets=6), clock=clock)
    for _ in range(6):
        clock.now += 10.0
        history.record_call(*finished(0.010))
    record = history.export()
    whole = record.as_dict()
    cut = record.as_dict(budget=250)
    assert len(whole["buckets"]) == 6
    assert 0 < len(cut["buckets"]) < 6
    assert cut["buckets"] == whole["buckets"][-len(cut["buckets"]) :]  # the newest kept


@pytest.mark.parametrize(
    "history",
    [
        None,
        "x",
        {"interval": 0, "end": "2026-01-01T00:00:00+00:00", "calls": [1], "errors": [0], "p95_ms": [1.0]},
        {"interval": 1.0, "end": "never", "calls": [1], "errors": [0], "p95_ms": [1.0]},
        {"interval": 1.0, "end": "2026-01-01T00:00:00+00:00", "calls": [1, 2], "errors": [0], "p95_ms": [1.0]},
        {"interval": 1.0, "end": "2026-01-01T00:00:00+00:00", "calls": [], "errors": [], "p95_ms": []},
    ],
)
def test_the_page_leaves_out_a_history_it_cannot_read(history: Any) -> None:
    from outbound._page import render_page

    page = render_page({"status": "ok", "services": {"api": {"status": "ok", "history": history}}})
    assert "<svg" not in page
    assert "History" not in page  # nor listed as an unknown key


def test_the_page_escapes_what_a_mark_says() -> None:
    from outbound._page import render_page

    clock = WallClock()
    history = History(HistoryConfig(interval=1.0, buckets=5), clock=clock)
    history.record_call(*finished(0.01, error="<script>alert(1)</script>"))
    history.breaker_transition(BreakerTransition("s", "closed", "open", "<img src=x onerror=alert(1)>", 1.0))
    page = render_page(
        {
            "status": "ok",
            "services": {
                "api": {"status": "down", "breaker": {"state": "open"}, "history": history.snapshot().as_dict()}
            },
        }
    )
    assert "<img src=x" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert 'data-mark="open"' in page
    assert "Breaker open since" in page


def test_a_pause_the_upstream_asked_for_is_a_mark(make_registry: RegistryFactory, upstream: Upstream) -> None:
    registry = make_registry(health=HISTORY, api={"base_url": upstream.url, "retry": None})
    session = registry.session("api")
    session.get("status/503", params={"retry_after": "5"})
    with pytest.raises(outbound.RateLimitedError):
        session.get("ok")
    marks = registry.report(history=True).as_dict()["services"]["api"]["history"]["marks"]
    assert [mark["kind"] for mark in marks] == ["pause"]
    started, until = (datetime.fromisoformat(marks[0][key]) for key in ("at", "until"))
    assert 3.0 <= (until - started).total_seconds() <= 5.0
    # A second refusal during the same pause is not a second mark.
    with pytest.raises(outbound.RateLimitedError):
        session.get("ok")
    assert len(registry.report(history=True).as_dict()["services"]["api"]["history"]["marks"]) == 1


@pytest.mark.parametrize("client", ["httpx", "async"])
def test_httpx_clients_feed_the_history_too(make_registry: RegistryFactory, upstream: Upstream, client: str) -> None:
    import asyncio

    registry = make_registry(health=HISTORY, api={"base_url": upstream.url, "client": "httpx", "retry": None})
    if client == "httpx":
        registry.client("api").get("ok")
        registry.client("api").get("status/503")
    else:

        async def calls() -> None:
            await registry.async_client("api").get("ok")
            await registry.async_client("api").get("status/503")

        asyncio.run(calls())
    history = registry.report(history=True).as_dict()["services"]["api"]["history"]
    assert sum(history["calls"]) == 2
    assert sum(history["errors"]) == 1


def test_a_stale_answer_counts_in_its_bucket(
    make_registry: RegistryFactory, upstream: Upstream, kind: str, send: Send
) -> None:
    # A cached GET, then the upstream fails: the cache answers with the stored response (stale-if-error), and the
    # bucket of that moment counts one stale answer beside the error it replaced.
    service = {
        "base_url": upstream.url,
        "client": client_of(kind),
        "retry": {"total": 0},
        "cache": {"ttl": 1, "stale_if_error": 60},
    }
    registry = make_registry(health={**HISTORY, "show_details": "always"}, s=service)
    assert send(registry, "s", "GET", "catalogue").status_code == 200
    later(registry, "s", 5)  # the stored response is past its freshness
    upstream.set_mode("failing", status=503)
    answer = send(registry, "s", "GET", "catalogue")
    assert (answer.status_code, cache_of(answer)) == (200, "stale")
    history = json.loads(serving.respond(registry, authorization=None, history="1").body)["services"]["s"]["history"]
    assert sum(history["stale"]) == 1
    assert max(history["stale"]) == 1  # in one bucket
    assert sum(history["errors"]) == 1  # the 503 it stood in for
    assert sum(history["calls"]) == 2
    assert len(history["stale"]) == len(history["calls"]) == 6
    # A stale answer while the breaker refuses (no call sent) is one too.
    open_breaker(registry, "s")
    assert cache_of(send(registry, "s", "GET", "catalogue")) == "stale"
    assert sum(registry.report(history=True).as_dict()["services"]["s"]["history"]["stale"]) == 2


def test_a_stale_answer_of_an_async_client_counts_too(make_registry: RegistryFactory, upstream: Upstream) -> None:
    import asyncio

    service = {"base_url": upstream.url, "client": "httpx", "retry": None, "cache": {"ttl": 1, "stale_if_error": 60}}
    registry = make_registry(health=HISTORY, s=service)

    async def calls() -> Any:
        await registry.async_client("s").get("catalogue")
        later(registry, "s", 5)
        upstream.set_mode("failing", status=503)
        return await registry.async_client("s").get("catalogue")

    assert cache_of(asyncio.run(calls())) == "stale"
    assert sum(registry.report(history=True).as_dict()["services"]["s"]["history"]["stale"]) == 1


def test_the_cache_event_is_built_only_when_someone_listens(
    make_registry: RegistryFactory, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    from outbound._cache import _layer

    built: list[CacheServed] = []

    def counted(*args: Any) -> CacheServed:
        built.append(CacheServed(*args))
        return built[-1]

    monkeypatch.setattr(_layer, "CacheServed", counted)
    service = {"base_url": upstream.url, "retry": None, "cache": {"ttl": 1, "stale_if_error": 60}}
    for health, events in (({}, 0), (HISTORY, 1)):
        registry = make_registry(health=health, s=service)
        registry.session("s").get("catalogue")
        later(registry, "s", 5)
        open_breaker(registry, "s")
        assert cache_of(registry.session("s").get("catalogue")) == "stale"
        assert len(built) == events, health  # no history, no observer of it: no event
    assert built[-1] == CacheServed("s", "GET", "stale", "CircuitOpenError")


def test_a_fallback_is_not_a_stale_answer() -> None:
    clock = WallClock()
    history = History(HistoryConfig(interval=10.0, buckets=3), clock=clock)
    history.cache_served(CacheServed("s", "GET", "fallback", "ConnectError"))
    history.cache_served(CacheServed("s", "GET", "stale", "ConnectError"))
    assert history.snapshot().stale == (0, 0, 1)
    clock.now += 10.0
    history.cache_served(CacheServed("s", "GET", "stale", "status 503"))
    assert history.snapshot().stale == (0, 1, 1)
    record = HistoryRecord.from_dict(json.loads(json.dumps(history.export().as_dict())), interval=10.0, size=3)
    merged = HistoryRecord.merge([record, record], interval=10.0).snapshot(size=3, now=clock.now)
    assert merged.stale == (0, 2, 2)


def test_the_cached_text_of_buckets_that_are_over_is_what_json_writes() -> None:
    # The JSON of a history is built from the text its buckets that are over wrote once: it must be json.dumps of
    # the dict, whatever happened since (buckets closing, gaps, marks, and a late call into a bucket already read).
    clock = WallClock()
    history = History(HistoryConfig(interval=10.0, buckets=4), clock=clock)

    def served() -> dict[str, Any]:
        snapshot = history.snapshot()
        assert snapshot.closed_json is not None  # the cached path, not the fallback to json.dumps
        assert snapshot.as_json() == json.dumps(snapshot.as_dict())
        data: dict[str, Any] = json.loads(snapshot.as_json())
        return data

    assert served()["calls"] == [0, 0, 0, 0]
    history.record_call(*finished(0.010))
    history.record_call(*finished(0.5, error="ReadTimeout"))
    assert served()["calls"] == [0, 0, 0, 2]
    clock.now += 10.0
    history.record_call(*finished(0.020))
    history.breaker_transition(BreakerTransition("s", "closed", "open", "5 consecutive failures", 30.0))
    assert served()["calls"] == [0, 0, 2, 1]
    clock.now += 20.0  # a bucket without calls between
    history.record_call(*finished(0.003))  # under 10 ms: a percentile with decimals
    data = served()
    assert data["calls"] == [2, 1, 0, 1]
    assert data["p95_ms"][1] is not None
    assert data["p95_ms"][1] < 100.0
    # A late call and a late stale answer, into a bucket that is over and whose text was written (the clock set back
    # as NTP may): the next answer reads that bucket again.
    clock.now -= 20.0
    history.record_call(*finished(0.9, error="ReadTimeout"))
    history.cache_served(CacheServed("s", "GET", "stale", "ReadTimeout"))
    clock.now += 20.0
    data = served()
    assert data["calls"] == [2, 2, 0, 1]
    assert data["errors"] == [1, 1, 0, 0]
    assert data["stale"] == [0, 1, 0, 0]
    assert data["p95_ms"][1] >= 900.0  # its percentiles too
    clock.now += 10.0
    assert served()["calls"] == [2, 0, 1, 0]
    # Bucket after bucket, the text shifts by one value each time a bucket closes (some empty, some under 10 ms).
    expected = [2, 0, 1, 0]
    for step in range(12):
        for _ in range(step % 3):
            history.record_call(*finished(0.002 * (step + 1)))
        expected[-1] = step % 3
        assert served()["calls"] == expected
        clock.now += 10.0
        expected = [*expected[1:], 0]
        assert served()["calls"] == expected
    # A late call into a bucket of the window that had none (its ring slot held a bucket older than the window).
    history.record_call(*finished(0.5))
    clock.now += 20.0
    assert served()["calls"] == [2, 1, 0, 0]
    clock.now -= 10.0
    history.record_call(*finished(0.05))
    clock.now += 10.0
    data = served()
    assert data["calls"] == [2, 1, 1, 0]
    assert data["p95_ms"][2] is not None
    # The clock set back by more than the window: that old bucket takes the slot of one of the window's, which then
    # shows nothing, its percentiles included.
    clock.now -= 50.0
    history.record_call(*finished(0.05))
    clock.now += 50.0
    data = served()
    assert data["calls"] == [2, 1, 0, 0]
    assert data["p95_ms"][2:] == [None, None]


def test_the_served_json_is_the_report_as_json_writes_it(make_registry: RegistryFactory, upstream: Upstream) -> None:
    registry = make_registry(
        health={**HISTORY, "show_details": "always"},
        api={"base_url": upstream.url, "retry": {"total": 0}, "breaker": {"fail_max": 2}},
        quiet={"base_url": upstream.url},
        plain={"base_url": upstream.url},
    )
    session = registry.session("api")
    session.get("ok")
    session.get("status/503")
    session.get("status/503")
    report = registry.report(history=True)
    assert report.as_json() == json.dumps(report.as_dict())
    assert report.as_json(details=False) == json.dumps({"status": report.status})
    plain = registry.report()
    assert plain.as_json() == json.dumps(plain.as_dict())  # without histories: json.dumps itself, as before
    body = json.loads(serving.respond(registry, authorization=None, history="1").body)
    assert [mark["state"] for mark in body["services"]["api"]["history"]["marks"]] == ["open"]
    assert sum(body["services"]["api"]["history"]["calls"]) == 3


def test_the_page_says_how_many_answers_were_stale() -> None:
    from outbound._page import render_page

    clock = WallClock()
    history = History(HistoryConfig(interval=1.0, buckets=5), clock=clock)
    for _ in range(2):
        history.record_call(*finished(0.01, error="ReadTimeout"))
        history.cache_served(CacheServed("s", "GET", "stale", "ReadTimeout"))
    history.record_call(*finished(0.01))

    def page(data: dict[str, Any]) -> str:
        service = {"status": "ok", "breaker": {"state": "closed"}, "history": data}
        return render_page({"status": "ok", "services": {"api": service}})

    shown = page(history.snapshot().as_dict())
    assert 'data-stale="2"' in shown
    assert ">2 stale answers</span>" in shown  # beside the error share
    assert "; 2 stale answers from the cache in place of an error" in shown  # and in the picture's words
    # None in the window, or a server that counts none: nothing said.
    quiet = History(HistoryConfig(interval=1.0, buckets=5), clock=clock)
    quiet.record_call(*finished(0.01))
    assert "stale answer" not in page(quiet.snapshot().as_dict())
    older = {key: value for key, value in history.snapshot().as_dict().items() if key != "stale"}
    assert "stale answer" not in page(older)
    assert 'data-series="errors"' in page(older)


def test_a_late_call_reaches_the_fleet_record_too() -> None:
    # A bucket an export read as over is not read again by the next ones, unless a late call changed it.
    clock = WallClock()
    history = History(HistoryConfig(interval=10.0, buckets=4), clock=clock)
    history.record_call(*finished(0.010))
    clock.now += 10.0
    bucket = int((clock.now - 10.0) // 10.0)
    assert history.export().buckets[bucket][0][0] == 1
    clock.now -= 10.0
    history.record_call(*finished(0.010, error="ReadTimeout"))
    clock.now += 10.0
    counts, histogram = history.export().buckets[bucket]
    assert counts[:2] == (2, 1)
    assert sum(histogram.values()) == 2
