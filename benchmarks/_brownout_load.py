"""Measurement 9's load, in its own process so it never competes with the benchmark for a GIL.

    python -m benchmarks._brownout_load --url http://127.0.0.1:8000 [--threads 16] [--seconds 10] [--ramp 2]

Each thread has its own keep-alive connection (``http.client``, the lightest client in the standard library, so
the load generator takes as little CPU from the server as it can) and alternates ``GET /local`` and
``GET /upstream``; half the threads start with each, so the mix is even from the first request. After a short
warm-up on ``/local`` that opens the connections, the threads run for ``seconds``, and the figures come from every
request started in that window; the first ``ramp`` seconds are also summarised on their own, to show what a
client does while its breaker has not opened yet. Requests in flight at the end are allowed to finish and are
counted with the time they take, so a server that makes callers wait is not flattered by requests cut short. It is
a closed loop: a thread waits for each answer, so a slow ``/upstream`` also delays that thread's next ``/local``.
Prints one JSON line (see ``summarise``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

REQUEST_TIMEOUT = 30.0  # per socket operation: far above any queueing the scenarios cause, and still bounded
JOIN_GRACE_SECONDS = 2 * REQUEST_TIMEOUT + 5  # a thread's last request may reconnect once, each step bounded
WARMUP_REQUESTS = 3  # per thread, on its own connection, before anything is recorded
MAX_REQUESTS = 500_000  # per thread: a bound on the loop (and its memory) far above what a window can hold
TRANSPORT_ERROR = 0  # the status recorded when no HTTP answer came back


@dataclass(frozen=True, slots=True)
class Sample:
    """One request: which route, when it started (``perf_counter``), how long it took and the status (0: none)."""

    local: bool
    started: float
    seconds: float
    status: int


def get(conn: http.client.HTTPConnection, path: str) -> int:
    """GET ``path`` on a keep-alive connection; the response status, or ``TRANSPORT_ERROR``.

    A reused connection the server has just closed (an idle keep-alive ending as the request goes out) is retried
    once on a new connection, as HTTP client pools do: that race says nothing about the app.
    """
    for attempt in range(2):
        reused = conn.sock is not None
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            conn.close()
            if reused and attempt == 0:
                continue
            return TRANSPORT_ERROR
        except (OSError, http.client.HTTPException):  # timeouts, refused connections, broken responses
            conn.close()
            return TRANSPORT_ERROR
        if response.will_close:
            conn.close()
        return response.status
    return TRANSPORT_ERROR


def run(url: str, *, local: str, upstream: str, threads: int, seconds: float) -> tuple[list[Sample], float]:
    """Run the load; every thread's samples, and the ``perf_counter`` time at which the window opened."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    clock: dict[str, float] = {}

    def start_clock() -> None:
        # A barrier's action runs once every thread has arrived and before any is released: each reads the end.
        clock["opened"] = time.perf_counter()
        clock["end"] = clock["opened"] + seconds

    barrier = threading.Barrier(threads + 1, action=start_clock)
    per_thread: list[list[Sample]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT)
        try:
            for _ in range(WARMUP_REQUESTS):
                get(conn, local)
            barrier.wait()
            end = clock["end"]
            routes = (True, False) if index % 2 == 0 else (False, True)
            samples = per_thread[index]
            for turn in range(MAX_REQUESTS):
                started = time.perf_counter()
                if started >= end:
                    break
                is_local = routes[turn % 2]
                status = get(conn, local if is_local else upstream)
                samples.append(Sample(is_local, started, time.perf_counter() - started, status))
        except BaseException as error:  # reported by the main thread
            errors.append(error)
            barrier.abort()
        finally:
            conn.close()

    workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for thread in workers:
        thread.start()
    warmup_seconds = WARMUP_REQUESTS * REQUEST_TIMEOUT + 5  # the warm-up is bounded like everything else
    try:
        barrier.wait(timeout=warmup_seconds)
    except threading.BrokenBarrierError:
        if errors:
            raise errors[0] from None
        raise RuntimeError(f"the warm-up did not finish within {warmup_seconds:.0f}s") from None
    for thread in workers:
        thread.join(timeout=seconds + JOIN_GRACE_SECONDS)
        if thread.is_alive():
            raise RuntimeError("a load thread overran its run")
    if errors:
        raise errors[0]
    opened = clock["opened"]
    return [sample for samples in per_thread for sample in samples], opened


def percentile(values: Sequence[float], share: float) -> float | None:
    """The nearest-rank percentile (``share`` in 0-1) of ``values``, or ``None`` when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def route_stats(samples: Sequence[Sample], seconds: float) -> dict[str, Any]:
    """Requests per second over ``seconds`` (successful ones, and all), p50/p99 latency of every request (ms), and
    the statuses (``"0"``: no answer)."""
    latencies = [sample.seconds * 1000 for sample in samples]
    statuses = Counter(str(sample.status) for sample in samples)
    return {
        "count": len(samples),
        "per_second": statuses.get("200", 0) / seconds if seconds > 0 else 0.0,
        "all_per_second": len(samples) / seconds if seconds > 0 else 0.0,
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "statuses": dict(statuses),
    }


def summarise(samples: Sequence[Sample], opened: float, ramp: float) -> dict[str, Any]:
    """``local`` and ``upstream``: each route's figures over the whole window; ``ramp``: ``/local``'s figures for the
    requests started in its first ``ramp`` seconds.

    The window runs from its opening until the last request has finished (the nominal end or later).
    """
    window = max((s.started + s.seconds for s in samples), default=opened) - opened
    ramp_samples = [s for s in samples if s.local and s.started < opened + ramp]
    return {
        "seconds": window,
        "local": route_stats([s for s in samples if s.local], window),
        "upstream": route_stats([s for s in samples if not s.local], window),
        "ramp": route_stats(ramp_samples, min(ramp, window)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Alternate GET /local and GET /upstream from many threads.")
    parser.add_argument("--url", required=True, help="the app's base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--local", default="/local", help="the route that calls no upstream")
    parser.add_argument("--upstream", default="/upstream", help="the route that calls the upstream")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0, help="the measured window")
    parser.add_argument("--ramp", type=float, default=2.0, help="its first seconds, also summarised on their own")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.seconds <= 0 or not 0 < args.ramp <= args.seconds:
        parser.error("--threads must be >= 1, --seconds > 0 and --ramp in (0, --seconds]")
    samples, opened = run(
        args.url,
        local=args.local,
        upstream=args.upstream,
        threads=args.threads,
        seconds=args.seconds,
    )
    print(json.dumps(summarise(samples, opened, args.ramp)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
