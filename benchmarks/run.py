"""Run outbound's benchmarks: ``python3 benchmarks/run.py [--quick] [--rounds N] [--only 1,2,...] [--results PATH]``.

From a fresh clone this creates ``.venv`` (as ``tests/run.py`` does) and re-runs itself inside it. It starts the
shared test upstream (``tests/upstream.py``) in a separate process on 127.0.0.1, runs the eight measurements of
issue 6 and row 9 of issue 18 (an app under gunicorn or uvicorn while its upstream browns out), prints a table and
writes ``benchmarks/RESULTS.md``. A full run takes about seven minutes on two cores, three of them row 9's.

Only a full run (every measurement, not ``--quick``) writes ``benchmarks/RESULTS.md`` by default; pass
``--results PATH`` to write a partial or quick run somewhere else. When it writes ``benchmarks/RESULTS.md`` with row
9, it also copies row 9's table into ``README.md``, between the ``<!-- brownout-table:start -->`` and
``<!-- brownout-table:end -->`` lines (and leaves the README alone, with a warning, when they are missing).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__":
    # Run as a script, this folder is first on sys.path; the project root replaces it (see example_project/run.py).
    sys.path[0] = str(ROOT)

DEFAULT_RESULTS = ROOT / "benchmarks" / "RESULTS.md"

NOTES = """
## Method

- **Upstream.** `tests/upstream.py`, the suite's shared upstream, runs in its own process on 127.0.0.1 (`python -m
  tests.upstream --port 0`), so its work never competes for the benchmark's GIL. In this run a raw-socket client got
  an answer from it in {raw_us:.0f} us (median of keep-alive `GET /ok`), against the several hundred microseconds one
  GET costs through requests or httpx (row 1's details), so client-side overhead shows, and no separate server was
  written. Most of that round trip is the loopback and waking the other process, which a faster server would not
  remove: when this suite was written, a minimal socket server answering without parsing anything took ~50 us on
  the same machine, against ~68 us for this upstream. Rows 2 and 3 use its `/slow?delay=0.05` path (50 ms).
- **Same run, alternated.** Every comparison runs its variants in the same process, alternated A B A B ..., with
  connections opened and caches warmed first. The sequential rows (1, 4, 5, 7) alternate in short slices (50 ms
  each, 20 per variant per round; 10 in row 4, 5 in row 7) and sum each variant's calls and time per round, so both
  variants sample the same disturbances on a noisy machine; rows 2, 3 and 6 alternate whole runs. Every timed run
  is bounded by a call count and by seconds, and starts after `gc.collect()`. The table shows the median of the
  per-round figures (ratios of the variants run side by side) with min and max; the verdict judges the median.
- **Fair baselines.** The bare clients get the settings a careful user would write by hand, the same as outbound's
  defaults: requests with an `HTTPAdapter(pool_maxsize=20, pool_block=True, max_retries=0)` and
  `timeout=(3.05, 10)` per call; httpx with the same `Timeout`, `Limits` and `trust_env=False`. Outbound runs with
  its defaults (retries with budget, breaker, stats, total deadline) and each call goes through the registry's
  accessor (`registry.session(name).get(...)`), as application code would write it. Every call checks the status.
- **Row 1** is the worst case for overhead: a 12-byte answer from a local upstream, so the client's own work is
  almost the whole call. What outbound adds per call (breaker gate, retry budget, stats, deadline, reading the body
  inside the policy: pure Python) is in row 1's details; against a real upstream a millisecond or more away, that
  is a percent or two of the call or less.
- **Rows 2 and 3** count calls completed from 16 threads / 200 tasks in a fixed window, calls in flight at the end
  included (with the time they take). "Client CPU use" is this process's CPU time over wall time. In row 3 both
  clients are CPU-bound in httpcore's async pool, which matches waiting requests to connections in
  O(waiting x connections) on every change (a profile shows `is_idle()` called ~40,000 times per assignment with
  200 connections); outbound's default pool of 20 connections, used by both, is the fastest setting, and both get a
  10 s pool wait so a slow moment does not become pool timeouts.
- **Row 5** times the whole rejected call in one thread: accessor, the session/client method, the early breaker gate,
  building the `CircuitOpenError` and the caller's `except`.
- **Row 6** sets the upstream to answer 503 to everything, retry.total 3 with no backoff and a breaker that cannot
  open, and counts the requests that reach the upstream (its `/_control/stats`) per logical call; each round uses a
  fresh registry, so each starts with an empty budget window.
- **Row 7** times `registry.health()` (full details). In 7b the used services' latency windows are filled to their
  1024-entry bound through each service's `Stats`, instead of 40 x 1024 real calls.
- **Row 8** runs in a fresh process (`benchmarks/_leak.py`) so the memory is its own: a warm-up run with a throwaway
  registry first (imports, SSL contexts and allocator arenas are one-time costs), then the baseline, then the calls
  in segments, recording descriptors (`/proc/self/fd`) and RSS (`VmRSS`) after each, then `registry.close()` and
  `gc.collect()`. A caller refused by an open breaker waits for the breaker's next trial (at most 20 ms) instead of
  spinning through its share of the calls in microseconds. It is one run, not rounds: the per-segment figures in
  the details show the trend.
- **Row 9** measures what outbound is for rather than what it costs: an app under a real server whose upstream
  browns out. A Flask app and a Django site (`benchmarks/brownout_apps/`) run under gunicorn `-w 2 --threads 4`
  (gthread), and the Django site's async views under uvicorn with one worker (with `--workers`, uvicorn binds a
  socket asyncio does not recognise as TCP, so accepted connections lack `TCP_NODELAY` and every keep-alive
  response waits ~40 ms for a delayed ACK). Each app has `/local`, which calls no upstream (it JSON-encodes a small
  dict), and `/upstream`, which makes one GET to the test upstream with one of three clients: a plain
  `requests.Session` (a blocking pool of 20, no retries, `timeout=(0.5, 0.5)`); the textbook recipe (the same
  session with `HTTPAdapter(max_retries=Retry(total=1, backoff_factor=0.25, status_forcelist=[502, 503, 504]))`,
  every call inside a per-process `pybreaker.CircuitBreaker(fail_max=5, reset_timeout=5)`'s `.call()`); or
  outbound with the same settings (connect and read 0.5 s, retry total 1, backoff 0.25, breaker fail_max 5 and
  reset_timeout 5 s, its defaults otherwise) through the Flask extension's and `outbound_django`'s accessors
  (`async_client` in the async view). The 5 s reset timeout is shorter than the window, so the figures include the
  trial calls a long brownout sees. Each cell (a variant in a scenario) starts its own upstream process in the
  scenario's mode (healthy; brownout: `slow`, every answer 2 s late; outage: `refuse`, its listener closed), then a
  fresh server, and waits until every worker has answered, so no cell inherits another's breaker state or pooled
  connections (the test upstream keeps answering connections opened before `refuse`). A separate load process
  (`benchmarks/_brownout_load.py`) runs 16 threads with a keep-alive connection each, alternating `/local` and
  `/upstream`, after three warm-up requests per thread to `/local`. The measured window is the first 10 s of the
  scenario (1 s in `--quick`), for every client alike: no settling period, so the time a client takes to stop
  waiting on a slow upstream (its breaker opening) counts; the details show the first 2 s on their own. The
  figures are `/local`'s: successful requests per second, and p50 / p99 latency of every request started in the
  window (those in flight at its end finish and count). The load is a closed loop: a thread waits for each answer,
  so a slow `/upstream` also delays that thread's next `/local`, and a stalled server shows in the throughput more
  than in the percentiles (the stalled threads send fewer requests). The row's value is a variant's `/local`
  req/s in the degraded scenario over its own healthy figure, measured one after the other (above 1 when failing
  fast costs the app less than a healthy upstream call did); outbound's variants have a target, the baselines are
  reported. Each cell is one run, not rounds (`--rounds` does not apply), and the machine's CPUs are shared by the
  server, the load process and the upstream, so the healthy figures are CPU-bound and have varied by up to 30%
  from run to run; the degraded ones differ by orders of magnitude, not percents.
- **Row 10** is fleet mode (`benchmarks/_fleet.py`), against a redis-server the run starts on a free port. 10a
  alternates, as row 1 does, sequential GETs through a service whose state is shared through Redis and through the
  same service with the default in-process state. 10b/10c start four worker processes, each with a registry
  (`fail_max` 5, no retries, `reset_timeout` 60 s) calling a path of the upstream every 20 ms; the upstream answers
  503 to everything; the figure is the requests it received on that path from the moment the workers start until
  every worker has refused five calls in a row. A fresh key prefix per round, so no round inherits another's
  breaker. 10e-10k (`benchmarks/_fleetprod.py`) are the fleet in production: a leased fleet rate limit against no
  limit, and its busiest second at the upstream with four workers offering twice it; `health()` time and bytes with
  1,000 simulated workers; an idle worker's Redis commands (Redis's own counters); row 10c on a 3-node Cluster the
  run starts; and a Sentinel primary killed under four workers.
"""


def _bootstrap() -> None:
    """From a fresh clone: build ``.venv`` and re-run this script inside it."""
    from example_project.bootstrap import VENV, ensure_venv

    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    python = ensure_venv()
    os.chdir(ROOT)
    os.execv(python, [python, str(Path(__file__).resolve()), *sys.argv[1:]])  # noqa: S606 (replace this process)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="outbound's benchmarks: each figure a ratio or per-call cost measured in the same run."
    )
    parser.add_argument("--quick", action="store_true", help="tiny counts: proves every row runs (the smoke test)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per measurement (default 7; quick: 2)")
    parser.add_argument("--only", default="", help="comma-separated measurement numbers, e.g. 1,5 (default: all)")
    parser.add_argument("--results", type=Path, default=None, help="where to write the Markdown results")
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the chosen measurements; print the table; write the results file. Returns the exit code."""
    # Imported here, not at the top: before _bootstrap() re-runs this script inside .venv, httpx and friends may be
    # missing from the interpreter that started it.
    from benchmarks import _brownout
    from benchmarks._harness import UpstreamProcess, environment, render_markdown, render_table, timed
    from benchmarks._scenarios import FULL, QUICK, SCENARIOS

    args = parse_args(argv)
    try:
        only = sorted({int(part) for part in args.only.split(",") if part.strip()}) or sorted(SCENARIOS)
    except ValueError:
        print(f"--only takes measurement numbers, got {args.only!r}", file=sys.stderr)
        return 2
    unknown = [number for number in only if number not in SCENARIOS]
    if unknown:
        print(f"--only: no measurement {unknown}; choose from {sorted(SCENARIOS)}", file=sys.stderr)
        return 2
    settings = QUICK if args.quick else FULL
    if args.rounds is not None:
        settings = dataclasses.replace(settings, rounds=args.rounds)
    # Row 5 opens breakers on purpose; their warnings would interleave with the table.
    logging.getLogger("outbound").addHandler(logging.NullHandler())

    rows = []
    with UpstreamProcess() as upstream:
        raw_us = upstream.raw_round_trip_us()
        for number in only:
            with timed(f"measurement {number}"):
                rows += SCENARIOS[number](upstream, settings)

    print(render_table(rows))
    brownout_table = _brownout.render_table(rows, settings)
    if brownout_table is not None:
        print(f"\n{brownout_table}")
    results = args.results
    if results is None and not args.quick and only == sorted(SCENARIOS):
        results = DEFAULT_RESULTS
    if results is not None:
        env = environment()
        run = f"{settings.rounds} rounds, measurements {','.join(map(str, only))}"
        if args.quick:
            run = "QUICK (tiny counts: proves the code runs; the figures and verdicts mean nothing), " + run
        sections = [_brownout.results_section(brownout_table)] if brownout_table is not None else []
        notes = NOTES.format(raw_us=raw_us)
        results.write_text(render_markdown(rows, env=env, settings=run, notes=notes, sections=sections))
        print(f"\nwrote {results}")
        # The README shows the committed results' table: only a run that writes them may change its copy.
        if brownout_table is not None and not args.quick and results.resolve() == DEFAULT_RESULTS:
            if _brownout.update_readme(brownout_table):
                print(f"updated row {_brownout.MEASUREMENT}'s table in README.md")
            else:
                print(
                    f"warning: README.md has no {_brownout.MARKER_START} ... {_brownout.MARKER_END} lines; "
                    "left it untouched",
                    file=sys.stderr,
                )
    return 0


if __name__ == "__main__":
    _bootstrap()
    sys.exit(main())
