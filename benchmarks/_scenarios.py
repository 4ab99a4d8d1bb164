"""The measurements: the eight of issue 6, each comparing variants in the same run against the upstream process,
and row 9 (issue 18, ``benchmarks/_brownout.py``): an app under a real server while its upstream browns out.

Every scenario takes the running upstream and the run's ``Settings`` and returns its table rows. Comparisons
alternate the variants A B A B ... (the sequential ones in short slices, see ``harness.interleave``) and report one
ratio per round, so both sides of each ratio ran side by side on the same machine.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pybreaker
import requests
import requests.adapters

import outbound
from benchmarks import (
    _adaptive,
    _brownout,
    _cache,
    _chaos,
    _deadline,
    _egress,
    _endpoints,
    _fleet,
    _healthy,
    _hedging,
    _imports,
    _metrics,
    _policy,
    _sdks,
    _speed,
    _stages,
    _trends,
)
from benchmarks._harness import (
    ROOT,
    Row,
    Slice,
    Target,
    Throughput,
    UpstreamProcess,
    alternate,
    interleave,
    interleave_async,
    median_text,
    ratios,
    run_async_slice,
    run_slice,
    task_rate,
    threaded_rate,
)
from outbound._backends._client_work import SharedClientWork
from outbound._outcome import Kind
from outbound._stats import LATENCY_WINDOW  # the most latencies a service keeps (row 7b fills it)

AT_LEAST_95 = Target(">=", 0.95, ">= 0.95")
AT_LEAST_97 = Target(">=", 0.97, ">= 0.97")  # issue 15's target for the sync clients
SLOW_PATH = "slow?delay=0.05"  # the 50 ms upstream of rows 2 and 3
THREADS = 16
TASKS = 200
POOL_WAIT_SECONDS = 10.0  # row 3's pool timeout (see tasks())
HEALTH_SERVICES = 50
USED_SERVICES = 40

# What a careful user would configure by hand: the same timeouts and pool sizes outbound uses by default, so the
# only difference left between the variants is outbound itself.
TIMEOUTS = outbound.Timeouts()
POOL = outbound.PoolConfig()
REQUESTS_TIMEOUT = (TIMEOUTS.connect, TIMEOUTS.read)


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Counts and durations for one run; ``QUICK`` only proves the code paths work."""

    rounds: int
    slices: int  # alternations per round in the sequential measurements (see harness.interleave)
    slice_seconds: float  # one slice of a sequential variant ...
    slice_calls: int  # ... and its call bound
    concurrent_seconds: float  # one timed run of the 16-thread and 200-task variants
    failing_calls: int  # row 6, logical calls per round
    leak_calls: int  # row 8, in total
    leak_segments: int
    warmup_calls: int
    brownout_seconds: float  # row 9, the measured window of each cell ...
    brownout_ramp: float  # ... and its first seconds, also reported on their own


FULL = Settings(
    rounds=7,
    slices=20,
    slice_seconds=0.05,
    slice_calls=5_000,
    concurrent_seconds=1.5,
    failing_calls=600,
    leak_calls=50_000,
    leak_segments=5,
    warmup_calls=200,
    brownout_seconds=10.0,
    brownout_ramp=2.0,
)
QUICK = Settings(
    rounds=2,
    slices=2,
    slice_seconds=0.01,
    slice_calls=20,
    concurrent_seconds=0.15,
    failing_calls=12,
    leak_calls=400,
    leak_segments=2,
    warmup_calls=5,
    brownout_seconds=1.0,
    brownout_ramp=0.3,
)


def service(url: str, client: str = "requests", **settings: object) -> dict[str, Any]:
    """One service's settings: outbound's defaults unless the scenario says otherwise."""
    return {"base_url": url, "client": client, **settings}


def registry(**services: dict[str, Any]) -> outbound.Registry:
    return outbound.Registry.from_mapping({"services": services})


def tuned_session() -> requests.Session:
    """A bare ``requests.Session`` tuned by hand: bounded blocking pool, no urllib3 retries (callers pass timeouts)."""
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(
        pool_connections=4, pool_maxsize=POOL.max_connections, max_retries=0, pool_block=True
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def httpx_options(url: str, *, pool_wait: float | None = TIMEOUTS.pool, library: Any = httpx) -> dict[str, Any]:
    """A bare httpx (or httpx2: ``library``) client configured like outbound configures its own."""
    return {
        "base_url": url,
        "timeout": library.Timeout(connect=TIMEOUTS.connect, read=TIMEOUTS.read, write=TIMEOUTS.write, pool=pool_wait),
        "limits": library.Limits(
            max_connections=POOL.max_connections,
            max_keepalive_connections=POOL.max_keepalive,
            keepalive_expiry=POOL.keepalive_expiry,
        ),
        "trust_env": False,
    }


def expect_ok(response: requests.Response | httpx.Response) -> None:
    if response.status_code != 200:
        raise RuntimeError(f"expected 200 from the upstream, got {response.status_code}")


def warm_up(calls: int, *variants: Callable[[], object]) -> None:
    """Open connections and fill caches before anything is timed."""
    for variant in variants:
        for _ in range(calls):
            variant()


def pair_bounds(s: Settings) -> dict[str, Any]:
    """A round of calls in pairs (``paired_difference``, ``paired_throughput``): ~4 s of calls in a full run (two
    calls a pair, ~0.5 ms each), bounded in time too."""
    return {"pairs": min(4_000, s.slices * s.slice_calls), "max_seconds": 4 * s.slices * s.slice_seconds}


def sliced(s: Settings, call: Callable[[], object]) -> Callable[[], Slice]:
    """One timed slice of ``call`` under the run's bounds."""
    return lambda: run_slice(call, max_calls=s.slice_calls, max_seconds=s.slice_seconds)


def overhead_detail(runs: list[list[float]]) -> str:
    """Throughputs of outbound and bare, and the per-call difference (median of the per-round differences)."""
    outbound_runs, bare_runs = runs
    extra = statistics.median(1e6 / o - 1e6 / b for o, b in zip(outbound_runs, bare_runs, strict=True))
    return (
        f"throughput {throughput_detail(('outbound', 'bare'), runs)}; per call "
        f"{1e6 / statistics.median(outbound_runs):.0f} us vs {1e6 / statistics.median(bare_runs):.0f} us: "
        f"outbound adds {extra:.1f} us"
    )


def throughput_detail(names: tuple[str, ...], runs: list[list[float]], unit: str = "calls/s") -> str:
    return "; ".join(f"{name} {median_text(values)} {unit}" for name, values in zip(names, runs, strict=True))


# -- 1: sequential GETs ----------------------------------------------------------------------------------------------


def sequential(up: UpstreamProcess, s: Settings) -> list[Row]:
    """Row 1: one caller, back-to-back GETs of a tiny response: the client's own cost dominates (1d and 1e: the same
    with httpx2, httpx's maintained fork)."""
    import httpx2  # only this row's httpx2 variants need it

    reg = registry(req=service(up.url), hx=service(up.url, "httpx"), hx2=service(up.url, "httpx2"))
    bare_session = tuned_session()
    # The same session without requests' per-request reading of the environment (proxy variables scanned twice,
    # ~/.netrc looked up on disk), which outbound's sessions do once per origin: what the policy itself costs.
    envless_session = tuned_session()
    envless_session.trust_env = False
    bare_client = httpx.Client(**httpx_options(up.url))
    bare_client2 = httpx2.Client(**httpx_options(up.url, library=httpx2))
    shortcut_client = ShortcutClient(**httpx_options(up.url))
    url = up.url + "ok"

    def outbound_session() -> None:
        expect_ok(reg.session("req").get("ok"))

    def bare_requests() -> None:
        expect_ok(bare_session.get(url, timeout=REQUESTS_TIMEOUT))

    def envless_requests() -> None:
        expect_ok(envless_session.get(url, timeout=REQUESTS_TIMEOUT))

    def outbound_client() -> None:
        expect_ok(reg.client("hx").get("ok"))

    def bare_httpx() -> None:
        expect_ok(bare_client.get("ok"))

    def shortcut_httpx() -> None:
        expect_ok(shortcut_client.get("ok"))

    def outbound_client2() -> None:
        expect_ok(reg.client("hx2").get("ok"))

    def bare_httpx2() -> None:
        expect_ok(bare_client2.get("ok"))

    try:
        warm_up(s.warmup_calls, outbound_session, bare_requests, envless_requests, outbound_client, bare_httpx)
        warm_up(s.warmup_calls, outbound_client2, bare_httpx2, shortcut_httpx)
        sequence = {"rounds": s.rounds, "slices": s.slices}
        req_runs = interleave([sliced(s, outbound_session), sliced(s, bare_requests)], **sequence)
        envless_runs = interleave([sliced(s, outbound_session), sliced(s, envless_requests)], **sequence)
        hx_runs = interleave([sliced(s, outbound_client), sliced(s, bare_httpx)], **sequence)
        async_runs = asyncio.run(_sequential_async(reg, up.url, s))
        hx2_runs = interleave([sliced(s, outbound_client2), sliced(s, bare_httpx2)], **sequence)
        shortcut_runs = interleave([sliced(s, outbound_client), sliced(s, shortcut_httpx)], **sequence)
        async2_runs = asyncio.run(_sequential_async(reg, up.url, s, "hx2", httpx2))
    finally:
        bare_session.close()
        envless_session.close()
        bare_client.close()
        bare_client2.close()
        shortcut_client.close()
        reg.close()
    return [
        Row(
            "1a",
            "sequential GETs, requests: outbound session / bare tuned Session",
            "x",
            ratios(*req_runs),
            AT_LEAST_97,
            overhead_detail(req_runs),
        ),
        Row(
            "1b",
            "sequential GETs, httpx: outbound client / bare httpx.Client",
            "x",
            ratios(*hx_runs),
            AT_LEAST_97,
            overhead_detail(hx_runs),
        ),
        Row(
            "1c",
            "sequential GETs, async: outbound AsyncClient / bare AsyncClient",
            "x",
            ratios(*async_runs),
            AT_LEAST_95,
            overhead_detail(async_runs),
        ),
        Row(
            "1d",
            "sequential GETs, httpx2: outbound client / bare httpx2.Client",
            "x",
            ratios(*hx2_runs),
            AT_LEAST_97,
            overhead_detail(hx2_runs),
        ),
        Row(
            "1e",
            "sequential GETs, httpx2 async: outbound AsyncClient / bare httpx2.AsyncClient",
            "x",
            ratios(*async2_runs),
            AT_LEAST_95,
            overhead_detail(async2_runs),
        ),
        Row(
            "1f",
            "sequential GETs, requests: outbound session / bare tuned Session with trust_env=False",
            "x",
            ratios(*envless_runs),
            None,
            overhead_detail(envless_runs) + " (the bare session skips reading the environment; outbound reads it "
            "once per origin: what is left is the policy's own cost)",
        ),
        Row(
            "1g",
            "sequential GETs, httpx: outbound client / bare httpx.Client with outbound's once-per-client shortcuts",
            "x",
            ratios(*shortcut_runs),
            None,
            overhead_detail(shortcut_runs) + " (the bare client remembers merged URLs and skips the cookie jar for "
            "answers without Set-Cookie, as outbound's clients do: what is left is the policy's own cost)",
        ),
    ]


class ShortcutClient(SharedClientWork, httpx.Client):
    """A bare ``httpx.Client`` given the work outbound's clients do once instead of per request (row 1g)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._keep_shared_work()


async def _sequential_async(
    reg: outbound.Registry, url: str, s: Settings, name: str = "hx", library: Any = httpx
) -> list[list[float]]:
    # One event loop for every round: outbound keeps one AsyncClient per loop, and a new loop would mean new
    # connections for both variants.
    async with library.AsyncClient(**httpx_options(url, library=library)) as bare:

        async def outbound_async() -> None:
            expect_ok(await reg.async_client(name).get("ok"))

        async def bare_async() -> None:
            expect_ok(await bare.get("ok"))

        for _ in range(s.warmup_calls):
            await outbound_async()
            await bare_async()
        return await interleave_async(
            [
                lambda: run_async_slice(outbound_async, max_calls=s.slice_calls, max_seconds=s.slice_seconds),
                lambda: run_async_slice(bare_async, max_calls=s.slice_calls, max_seconds=s.slice_seconds),
            ],
            rounds=s.rounds,
            slices=s.slices,
        )


# -- 2: 16 threads, 50 ms upstream -----------------------------------------------------------------------------------


def threads(up: UpstreamProcess, s: Settings) -> list[Row]:
    """Row 2: 16 threads share one client and one breaker; a lock held across the call would serialise them."""
    reg = registry(req=service(up.url))
    bare_session = tuned_session()
    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    url = up.url + SLOW_PATH

    def outbound_session() -> None:
        expect_ok(reg.session("req").get(SLOW_PATH))

    def bare_requests() -> None:
        expect_ok(bare_session.get(url, timeout=REQUESTS_TIMEOUT))

    def in_pybreaker() -> None:
        breaker.call(bare_requests)

    cpu: dict[str, list[float]] = {"outbound": [], "bare": [], "pybreaker": []}

    def timed(name: str, call: Callable[[], None]) -> Callable[[], float]:
        def run() -> float:
            result: Throughput = threaded_rate(call, threads=THREADS, seconds=s.concurrent_seconds)
            cpu[name].append(result.cpu)
            return result.per_second

        return run

    try:
        threaded_rate(outbound_session, threads=THREADS, seconds=0.1)  # opens the 16 connections of each
        threaded_rate(bare_requests, threads=THREADS, seconds=0.1)
        runs = alternate(
            [timed("outbound", outbound_session), timed("bare", bare_requests), timed("pybreaker", in_pybreaker)],
            s.rounds,
        )
    finally:
        bare_session.close()
        reg.close()
    detail = throughput_detail(("outbound", "bare", "pybreaker.call"), runs) + (
        f" (ideal: {THREADS} / 50 ms = {THREADS / 0.05:.0f}/s); client CPU use: "
        + ", ".join(f"{name} {median_text(values, 2)}" for name, values in cpu.items())
    )
    return [
        Row(
            "2a",
            f"{THREADS} threads, 50 ms upstream: outbound session (breaker on) / bare session",
            "x",
            ratios(runs[0], runs[1]),
            AT_LEAST_95,
            detail,
        ),
        Row(
            "2b",
            f"{THREADS} threads, 50 ms upstream: bare session inside pybreaker.CircuitBreaker.call / bare",
            "x",
            ratios(runs[2], runs[1]),
            None,
            "the pattern outbound's breaker replaces: pybreaker holds its lock across the call",
        ),
    ]


# -- 3: 200 asyncio tasks, 50 ms upstream ----------------------------------------------------------------------------


def tasks(up: UpstreamProcess, s: Settings) -> list[Row]:
    """Row 3: 200 tasks on one loop sharing one client, with outbound's default pool of 20 connections for both.

    httpcore's async pool matches waiting requests to connections in O(waiting x connections) on every change, so
    200 tasks make both clients CPU-bound in that bookkeeping whatever the pool size (measured with bare httpx:
    20 connections 270/s, 100 connections 70/s, 200 connections 40/s). The smallest pool is the fastest and leaves
    the most room for outbound's own cost to show. The pool wait is raised to 10 s for both, so a slow moment on a
    noisy machine does not turn into pool timeouts.
    """
    timeout = {"pool": POOL_WAIT_SECONDS}
    reg = registry(hx=service(up.url, "httpx", timeout=timeout))
    cpu: dict[str, list[float]] = {"outbound": [], "bare": []}

    async def main() -> list[list[float]]:
        async with httpx.AsyncClient(**httpx_options(up.url, pool_wait=POOL_WAIT_SECONDS)) as bare:

            async def outbound_async() -> None:
                expect_ok(await reg.async_client("hx").get(SLOW_PATH))

            async def bare_async() -> None:
                expect_ok(await bare.get(SLOW_PATH))

            def timed(name: str, call: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[float]]:
                async def run() -> float:
                    result = await task_rate(call, tasks=TASKS, seconds=s.concurrent_seconds)
                    cpu[name].append(result.cpu)
                    return result.per_second

                return run

            await task_rate(outbound_async, tasks=TASKS, seconds=0.05)  # open the connections
            await task_rate(bare_async, tasks=TASKS, seconds=0.05)
            runs: list[list[float]] = [[], []]
            for _ in range(s.rounds):  # A B A B ...
                runs[0].append(await timed("outbound", outbound_async)())
                runs[1].append(await timed("bare", bare_async)())
            return runs

    try:
        runs = asyncio.run(main())
    finally:
        reg.close()
    return [
        Row(
            "3",
            f"{TASKS} asyncio tasks, 50 ms upstream: outbound AsyncClient / bare AsyncClient",
            "x",
            ratios(*runs),
            AT_LEAST_95,
            throughput_detail(("outbound", "bare"), runs)
            + f" (a pool of {POOL.max_connections} connections could carry {POOL.max_connections / 0.05:.0f}/s; "
            "httpcore's pool bookkeeping for 200 waiting tasks keeps both below that); client CPU use: "
            + ", ".join(f"{name} {median_text(values, 2)}" for name, values in cpu.items()),
        )
    ]


# -- 4: the patterns outbound replaces -------------------------------------------------------------------------------


def patterns(up: UpstreamProcess, s: Settings) -> list[Row]:
    """Row 4: ``requests.get`` per call (a new session and connection each time) and a new ``httpx.Client`` per call
    (a new SSL context, pool and connection each time), against outbound's long-lived clients."""
    reg = registry(req=service(up.url), hx=service(up.url, "httpx"))
    url = up.url + "ok"

    def outbound_session() -> None:
        expect_ok(reg.session("req").get("ok"))

    def requests_get() -> None:
        expect_ok(requests.get(url, timeout=REQUESTS_TIMEOUT))

    def outbound_client() -> None:
        expect_ok(reg.client("hx").get("ok"))

    def new_httpx_client() -> None:
        with httpx.Client(timeout=5.0) as client:
            expect_ok(client.get(url))

    try:
        warm_up(max(1, s.warmup_calls // 10), outbound_session, requests_get, outbound_client, new_httpx_client)
        # Half the slices: the replaced patterns are slow, and their speed-ups are large enough to need less.
        sequence = {"rounds": s.rounds, "slices": max(1, s.slices // 2)}
        req_runs = interleave([sliced(s, outbound_session), sliced(s, requests_get)], **sequence)
        hx_runs = interleave([sliced(s, outbound_client), sliced(s, new_httpx_client)], **sequence)
    finally:
        reg.close()
    return [
        Row(
            "4a",
            "outbound session vs requests.get per call: speed-up",
            "x",
            ratios(*req_runs),
            None,
            "throughput " + throughput_detail(("outbound", "requests.get"), req_runs) + "; on loopback without TLS a "
            "new connection costs little, over TLS and real distances the gap grows",
            digits=1,
        ),
        Row(
            "4b",
            "outbound httpx client vs a new httpx.Client per call: speed-up",
            "x",
            ratios(*hx_runs),
            None,
            "throughput " + throughput_detail(("outbound", "new httpx.Client"), hx_runs),
            digits=1,
        ),
    ]


# -- 5: open breaker -------------------------------------------------------------------------------------------------


def rejected(up: UpstreamProcess, s: Settings) -> list[Row]:
    """Row 5: the whole cost of a call refused by an open breaker, accessor lookup and ``except`` included."""
    retry, breaker = {"total": 0}, {"fail_max": 1, "reset_timeout": 3600}
    reg = registry(
        req=service(up.url, retry=retry, breaker=breaker), hx=service(up.url, "httpx", retry=retry, breaker=breaker)
    )
    try:
        reg.session("req").get("status/503")  # one failure opens each breaker for an hour
        reg.client("hx").get("status/503")
        for name in ("req", "hx"):
            if reg[name].policy.breaker.state != "open":
                raise RuntimeError(f"the breaker of {name!r} did not open")
        hits = up.hits()

        def through_session() -> None:
            try:
                reg.session("req").get("ok")
            except outbound.CircuitOpenError:
                return
            raise RuntimeError("the open breaker let a call through")

        def through_client() -> None:
            try:
                reg.client("hx").get("ok")
            except outbound.CircuitOpenError:
                return
            raise RuntimeError("the open breaker let a call through")

        warm_up(s.warmup_calls, through_session, through_client)
        rates = interleave([sliced(s, through_session), sliced(s, through_client)], rounds=s.rounds, slices=s.slices)
        runs = [[1e6 / per_second for per_second in variant] for variant in rates]
        if up.hits() != hits:
            raise RuntimeError("a rejected call reached the upstream")
    finally:
        reg.close()
    target = Target("<=", 20.0, "<= 20 us")
    note = "per rejected call, in one thread; the upstream saw none of them"
    return [
        Row("5a", "open breaker: rejected call via registry.session(name).get()", "us", runs[0], target, note, 1),
        Row("5b", "open breaker: rejected call via registry.client(name).get()", "us", runs[1], target, note, 1),
    ]


# -- 6: retry budget -------------------------------------------------------------------------------------------------


def budget(up: UpstreamProcess, s: Settings) -> list[Row]:
    """Row 6: a dead upstream (503 to everything), ``retry.total = 3``: how much traffic do retries add?

    Backoff is 0 so rounds are short, and ``fail_max`` is out of reach so the breaker never hides the retries.
    Each round builds a fresh registry, so each starts with an empty budget window.
    """
    settings = {"backoff_factor": 0, "backoff_jitter": 0, "total": 3}
    no_breaker = {"fail_max": 1_000_000}

    def hits_per_call(budget_on: bool) -> float:
        retry = settings if budget_on else {**settings, "budget": None}
        reg = registry(api=service(up.url, retry=retry, breaker=no_breaker))
        try:
            before = up.hits()
            for _ in range(s.failing_calls):
                if reg.session("api").get("api/orders").status_code != 503:
                    raise RuntimeError("the failing upstream answered something other than 503")
            return (up.hits() - before) / s.failing_calls
        finally:
            reg.close()

    up.set_mode("failing", status=503)
    try:
        on, off = alternate([lambda: hits_per_call(True), lambda: hits_per_call(False)], s.rounds)
    finally:
        up.reset()
    defaults = outbound.BudgetConfig()
    return [
        Row(
            "6a",
            "always-failing upstream, retry.total=3, budget on: upstream requests per call",
            "req/call",
            on,
            Target("<=", 1.25, "<= 1.25"),
            f"budget defaults (ratio {defaults.ratio}, min_per_second {defaults.min_per_second} over a 10 s window) "
            f"allow {1 + defaults.ratio:.2f} + {defaults.min_per_second * 10:.0f}/calls; {s.failing_calls} calls "
            "per round, counted at the upstream",
        ),
        Row(
            "6b",
            "always-failing upstream, retry.total=3, budget off: upstream requests per call",
            "req/call",
            off,
            None,
            "without a budget every call makes 1 + retry.total attempts",
        ),
    ]


# -- 7: health -------------------------------------------------------------------------------------------------------


def health(up: UpstreamProcess, s: Settings) -> list[Row]:
    """Row 7: ``registry.health()`` over 50 services, half requests and half httpx, in two registries timed A B A B.

    In both, 40 services have made real calls (so pools and stats are populated) and one has an open breaker. In
    7b every used service's latency window is also full, as on a busy server: those latencies are recorded through
    the service's ``Stats`` directly, because 40 x 1024 real calls would add nothing but time.
    """
    populated, full = _health_registry(up), _health_registry(up)
    try:
        for svc in list(full)[:USED_SERVICES]:
            stats = svc.policy.stats  # fed as a successful call feeds it
            for i in range(LATENCY_WINDOW):
                stats.started()
                stats.finished(Kind.RESPONSE, 0.001 + (i * 7919 % 1000) / 1e6, None, None)
        warm_up(s.warmup_calls, populated.health, full.health)
        slices = {"rounds": s.rounds, "slices": max(1, s.slices // 4)}
        rates = interleave([sliced(s, populated.health), sliced(s, full.health)], **slices)
        for reg in (populated, full):
            report = reg.health()
            if len(report["services"]) != HEALTH_SERVICES or report["status"] != "degraded":
                raise RuntimeError(f"unexpected health report: status {report['status']}")
    finally:
        populated.close()
        full.close()
    ms = [[1e3 / per_second for per_second in variant] for variant in rates]
    target = Target("<=", 2.0, "<= 2 ms")
    return [
        Row(
            "7a",
            f"registry.health(), {HEALTH_SERVICES} services, {USED_SERVICES} used 5 times",
            "ms",
            ms[0],
            target,
            f"{HEALTH_SERVICES - USED_SERVICES} services never used; one breaker open, so the report is degraded",
        ),
        Row(
            "7b",
            f"registry.health(), {HEALTH_SERVICES} services, {USED_SERVICES} with full latency windows",
            "ms",
            ms[1],
            Target("<=", 1.0, "<= 1 ms"),  # issue 23: the window is kept sorted, so percentiles are read by index
            f"{LATENCY_WINDOW} latencies per used service, the most a service keeps (kept sorted as calls finish, "
            "so a report reads its percentiles by index)",
        ),
    ]


def _health_registry(up: UpstreamProcess) -> outbound.Registry:
    services = {
        f"svc{i:02d}": service(up.url, "requests" if i % 2 == 0 else "httpx", breaker={"fail_max": 1})
        for i in range(HEALTH_SERVICES)
    }
    reg = outbound.Registry.from_mapping({"services": services})
    for index, svc in enumerate(list(reg)[:USED_SERVICES]):
        call = reg.session if svc.config.client == "requests" else reg.client
        for _ in range(5):
            expect_ok(call(svc.name).get("ok"))
        if index == 0:
            call(svc.name).get("status/503")  # opens this one's breaker
    return reg


# -- 8: descriptors and memory ---------------------------------------------------------------------------------------


def leaks(up: UpstreamProcess, s: Settings) -> list[Row]:
    """Row 8: many calls with failures and breaker trips in a fresh process (see ``benchmarks/_leak.py``)."""
    command = [
        sys.executable,
        "-m",
        "benchmarks._leak",
        "--url",
        up.url,
        "--calls",
        str(s.leak_calls),
        "--segments",
        str(s.leak_segments),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the leak run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    calls = result["outcomes"]
    total = sum(calls.values())
    outcome_text = ", ".join(f"{name} {count:,} ({count / total:.0%})" for name, count in calls.items())
    segments = result["segments"]
    fd_detail = (
        f"open FDs: baseline {result['fds_before']}, after each {segments[0]['calls']:,} calls "
        f"{[seg['fds'] for seg in segments]} (pooled connections open), after close + gc {result['fds_after']}"
    )
    rss_detail = (
        f"RSS: baseline {result['rss_before_mb']:.1f} MB (after a warm-up run), after each segment "
        f"{[round(seg['rss_mb'], 1) for seg in segments]} MB, after close + gc {result['rss_after_mb']:.1f} MB"
    )
    run_detail = (
        f"{total:,} logical calls in {result['seconds']:.0f}s (requests and httpx from 4 threads each, async from "
        f"{result['event_loops']} event loops): {outcome_text}; breaker opened {result['breaker_opened']} times"
    )
    return [
        Row(
            "8a",
            f"{s.leak_calls:,} calls, 20% to a failing path, breaker trips: open FDs after close - baseline",
            "FDs",
            [float(result["fds_after"] - result["fds_before"])],
            Target("<=", 0, "back to baseline"),
            fd_detail + "; " + run_detail,
            digits=0,
        ),
        Row(
            "8b",
            f"{s.leak_calls:,} calls, 20% to a failing path, breaker trips: RSS growth after close",
            "MB",
            [result["rss_after_mb"] - result["rss_before_mb"]],
            Target("<", 10.0, "< 10 MB"),
            rss_detail,
            digits=1,
        ),
    ]


SCENARIOS: dict[int, Callable[[UpstreamProcess, Settings], list[Row]]] = {
    1: sequential,
    2: threads,
    3: tasks,
    4: patterns,
    5: rejected,
    6: budget,
    7: health,
    8: leaks,
    _brownout.MEASUREMENT: _brownout.brownout,
    _fleet.MEASUREMENT: _fleet.fleet,
    _policy.MEASUREMENT: _policy.policy,
    _hedging.MEASUREMENT: _hedging.hedging,
    _metrics.MEASUREMENT: _metrics.metrics,
    _speed.MEASUREMENT: _speed.speed,
    _deadline.MEASUREMENT: _deadline.deadline,
    _stages.MEASUREMENT: _stages.stages,
    _healthy.MEASUREMENT: _healthy.healthy,
    _imports.MEASUREMENT: _imports.imports,
    _sdks.MEASUREMENT: _sdks.sdks,
    _egress.MEASUREMENT: _egress.egress,
    _endpoints.MEASUREMENT: _endpoints.endpoints,
    _adaptive.MEASUREMENT: _adaptive.adaptive,
    _cache.MEASUREMENT: _cache.cache,
    _trends.MEASUREMENT: _trends.trends,
    _chaos.MEASUREMENT: _chaos.chaos,
}
ROW_KEYS: dict[int, tuple[str, ...]] = {
    1: ("1a", "1b", "1c", "1d", "1e", "1f", "1g"),
    2: ("2a", "2b"),
    3: ("3",),
    4: ("4a", "4b"),
    5: ("5a", "5b"),
    6: ("6a", "6b"),
    7: ("7a", "7b"),
    8: ("8a", "8b"),
    _brownout.MEASUREMENT: _brownout.ROW_KEYS,
    _fleet.MEASUREMENT: _fleet.ROW_KEYS,
    _policy.MEASUREMENT: _policy.ROW_KEYS,
    _hedging.MEASUREMENT: _hedging.ROW_KEYS,
    _metrics.MEASUREMENT: _metrics.ROW_KEYS,
    _speed.MEASUREMENT: _speed.ROW_KEYS,
    _deadline.MEASUREMENT: _deadline.ROW_KEYS,
    _stages.MEASUREMENT: _stages.ROW_KEYS,
    _healthy.MEASUREMENT: _healthy.ROW_KEYS,
    _imports.MEASUREMENT: _imports.ROW_KEYS,
    _sdks.MEASUREMENT: _sdks.ROW_KEYS,
    _egress.MEASUREMENT: _egress.ROW_KEYS,
    _endpoints.MEASUREMENT: _endpoints.ROW_KEYS,
    _adaptive.MEASUREMENT: _adaptive.ROW_KEYS,
    _cache.MEASUREMENT: _cache.ROW_KEYS,
    _trends.MEASUREMENT: _trends.ROW_KEYS,
    _chaos.MEASUREMENT: _chaos.ROW_KEYS,
}
