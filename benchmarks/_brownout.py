"""Measurement 9: what outbound is for. An app under a real server keeps serving while its upstream browns out.

Each variant is one app (``benchmarks/brownout_apps/``) under gunicorn ``-w 2 --threads 4`` (gthread) or, for the
ASGI variant, uvicorn with one worker (see ``ASGI_WORKERS``), with one client on its ``/upstream`` route. Each cell
(a variant under a scenario) starts its own upstream process in the scenario's mode (healthy; ``slow`` with a 2 s
delay; ``refuse``), then a fresh server, so no cell inherits another's breaker state or pooled connections (a
connection opened before ``refuse`` would keep being answered: the test upstream only closes its listener). A load
process (``benchmarks/_brownout_load.py``) then alternates ``/local`` and ``/upstream`` from 16 threads, and the
figures are ``/local``'s: the route that needs no upstream and should not notice it. They cover the scenario from
its first second, so the time each client takes to stop waiting on the upstream counts, the same for all.

This module also renders the client x scenario table that ``benchmarks/RESULTS.md`` and the README show, and keeps
the README's copy (between two marker lines) equal to it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from benchmarks import brownout_apps
from benchmarks._harness import ROOT, Row, Target, UpstreamProcess, die_with_parent

if TYPE_CHECKING:
    from benchmarks._scenarios import Settings

MEASUREMENT = 9
THREADS = 16  # load threads, twice the app's 8 worker threads
WORKERS = 2  # gunicorn's worker processes
THREADS_PER_WORKER = 4
# uvicorn gets one worker. With --workers it binds the listening socket itself, as a plain socket.socket() whose
# proto is 0, and asyncio only sets TCP_NODELAY on accepted sockets whose proto is IPPROTO_TCP: every response on
# a keep-alive connection then waits ~40 ms for the client's delayed ACK (measured here on a trivial ASGI app:
# 44 ms per request with --workers 2, 0.6 ms with one worker), which would swamp what the row measures.
ASGI_WORKERS = 1
SLOW_SECONDS = 2.0  # the brownout: the upstream answers, 2 s late
STARTUP_SECONDS = 30.0  # how long a server may take to answer on every worker ...
STARTUP_PROBES = 3_000  # ... and how many requests it may take (each a new connection) to reach them all
STOP_SECONDS = 10.0
LOAD_GRACE_SECONDS = 120.0  # the load process's own bounds (warm-up, last requests) fit well inside this
HEALTHY_WINDOWS = 5  # the healthy figures: each round's window is a fifth of a degraded cell's
AT_LEAST_80 = Target(">=", 0.8, ">= 0.8")

MARKER_START = "<!-- brownout-table:start -->"
MARKER_END = "<!-- brownout-table:end -->"
README = ROOT / "README.md"

Scenario = Literal["healthy", "brownout", "outage"]
SCENARIOS: tuple[Scenario, ...] = ("healthy", "brownout", "outage")
UPSTREAM_MODES: dict[Scenario, dict[str, Any]] = {
    "healthy": {"name": "healthy"},
    "brownout": {"name": "slow", "delay": SLOW_SECONDS},
    "outage": {"name": "refuse"},
}
DEGRADED: dict[Scenario, str] = {  # the scenarios compared with healthy, as row titles name them
    "brownout": f"upstream slow ({SLOW_SECONDS:.0f} s)",
    "outage": "upstream down",
}
COLUMNS: dict[Scenario, str] = {
    "healthy": "upstream healthy",
    "brownout": f"brownout: upstream answers after {SLOW_SECONDS:.0f} s",
    "outage": "outage: upstream refuses connections",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Variant:
    """One app, server and client; ``label`` is its line in the table, ``short`` its name in row titles."""

    short: str
    label: str
    framework: Literal["flask", "django"]
    server: Literal["gunicorn", "uvicorn"]
    client: str  # BROWNOUT_CLIENT
    target: Target | None  # outbound's variants must keep serving; the baselines are reported

    @property
    def workers(self) -> int:
        return ASGI_WORKERS if self.server == "uvicorn" else WORKERS

    @property
    def paths(self) -> tuple[str, str]:
        """``/local`` and ``/upstream`` as this app serves them (the ASGI site's are its async views)."""
        return ("/async/local", "/async/upstream") if self.server == "uvicorn" else ("/local", "/upstream")

    def command(self, port: int) -> list[str]:
        if self.server == "uvicorn":
            return [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "benchmarks.brownout_apps.django_site:asgi_application",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(ASGI_WORKERS),
                "--no-access-log",
                "--log-level",
                "warning",
                "--timeout-graceful-shutdown",
                "1",
            ]
        app = (
            "benchmarks.brownout_apps.flask_app:create_app()"
            if self.framework == "flask"
            else "benchmarks.brownout_apps.django_site:wsgi_application()"
        )
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "--workers",
            str(WORKERS),
            "--threads",
            str(THREADS_PER_WORKER),
            "--worker-class",
            "gthread",
            "--bind",
            f"127.0.0.1:{port}",
            "--graceful-timeout",
            "1",  # stop promptly: requests to a slow upstream may still be in flight
            "--log-level",
            "warning",
            *_no_control_socket(),
            app,
        ]

    def env(self, upstream_url: str) -> dict[str, str]:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            brownout_apps.CLIENT_ENV: self.client,
            brownout_apps.UPSTREAM_ENV: upstream_url,
        }
        if self.framework == "django":
            env["DJANGO_SETTINGS_MODULE"] = "benchmarks.brownout_apps.django_site"
        return env


_OUTBOUND_SETTINGS = (
    f"read {brownout_apps.READ_TIMEOUT} s, retry {brownout_apps.RETRIES}, fail_max {brownout_apps.FAIL_MAX}"
)
VARIANTS: tuple[Variant, ...] = (
    Variant(
        short="Flask + plain Session",
        label=f"Flask, plain `requests.Session`, timeouts ({brownout_apps.CONNECT_TIMEOUT}, "
        f"{brownout_apps.READ_TIMEOUT})",
        framework="flask",
        server="gunicorn",
        client="plain",
        target=None,
    ),
    Variant(
        short="Flask + Retry adapter + pybreaker",
        label=f"Flask, textbook recipe: `Retry(total={brownout_apps.RETRIES})` adapter + `pybreaker` "
        f"(fail_max {brownout_apps.FAIL_MAX})",
        framework="flask",
        server="gunicorn",
        client="recipe",
        target=None,
    ),
    Variant(
        short="Flask + outbound",
        label=f"Flask, outbound ({_OUTBOUND_SETTINGS})",
        framework="flask",
        server="gunicorn",
        client="outbound",
        target=AT_LEAST_80,
    ),
    Variant(
        short="Django + outbound",
        label="Django (gunicorn), outbound",
        framework="django",
        server="gunicorn",
        client="outbound",
        target=AT_LEAST_80,
    ),
    Variant(
        short="Django ASGI + outbound async",
        label=f"Django ASGI (uvicorn, {ASGI_WORKERS} worker), outbound `async_client`",
        framework="django",
        server="uvicorn",
        client="outbound",
        target=AT_LEAST_80,
    ),
)
ROW_KEYS = tuple(f"{MEASUREMENT}{chr(ord('a') + i)}" for i in range(2 * len(VARIANTS)))


def _no_control_socket() -> list[str]:
    # gunicorn >= 25 opens a control socket at one fixed path per user; two servers at once would collide.
    from gunicorn.config import KNOWN_SETTINGS  # type: ignore[import-untyped]  # (gunicorn ships no type hints)

    return ["--no-control-socket"] if any(s.cli and "--no-control-socket" in s.cli for s in KNOWN_SETTINGS) else []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the server ------------------------------------------------------------------------------------------------------


class AppServer:
    """A variant's server in its own process group on a free port of 127.0.0.1; leaving the block stops the group,
    whatever happened inside it. Its output is collected by a thread (so the pipe never fills) for error messages."""

    def __init__(self, variant: Variant, upstream_url: str) -> None:
        self.variant = variant
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process = subprocess.Popen(
            variant.command(self.port),
            cwd=ROOT,
            env=variant.env(upstream_url),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: stop() ends the workers too
            preexec_fn=die_with_parent(),  # no orphaned server if this process is killed
        )
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, name="app-server-log", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self._lines[-60:])

    def __enter__(self) -> AppServer:
        try:
            self.wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def wait_until_ready(self) -> None:
        """Return once every worker process has answered ``/local``: a server whose second worker is still
        importing the app would start the run with half its capacity."""
        local = self.variant.paths[0]
        pids: set[int] = set()
        deadline = time.monotonic() + STARTUP_SECONDS
        for _ in range(STARTUP_PROBES):
            if time.monotonic() >= deadline:
                break
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.variant.short}: the server exited during startup; its output:\n{self.log}")
            # A new connection per probe ("Connection: close"), so the kernel offers it to any worker.
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            try:
                conn.request("GET", local, headers={"Connection": "close"})
                response = conn.getresponse()
                body = response.read()
                if response.status == 200:
                    pids.add(int(json.loads(body)["pid"]))
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                time.sleep(0.05)  # not listening yet, or a worker still booting
            finally:
                conn.close()
            if len(pids) == self.variant.workers:
                return
        raise RuntimeError(
            f"{self.variant.short}: {len(pids)} of {self.variant.workers} workers answered within "
            f"{STARTUP_SECONDS:.0f}s and {STARTUP_PROBES} requests; the server's output:\n{self.log}"
        )

    def stop(self) -> None:
        """SIGTERM to the whole group, SIGKILL if it lingers, then SIGKILL to any worker the master left behind."""
        process = self._process
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_SECONDS)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        self._reader.join(timeout=5)
        if process.stdout is not None:
            process.stdout.close()


# -- one cell: a variant under a scenario ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteFigures:
    """One route in one cell: requests per second (successful, all), p50 and p99 (ms, of every request), statuses."""

    per_second: float
    all_per_second: float
    p50_ms: float | None
    p99_ms: float | None
    count: int
    statuses: Mapping[str, int]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RouteFigures:
        return cls(
            per_second=float(data["per_second"]),
            all_per_second=float(data["all_per_second"]),
            p50_ms=data["p50_ms"],
            p99_ms=data["p99_ms"],
            count=int(data["count"]),
            statuses=dict(data["statuses"]),
        )

    def share(self, status: int) -> float:
        return self.statuses.get(str(status), 0) / self.count if self.count else 0.0

    def latency_text(self) -> str:
        return f"p50 {_ms(self.p50_ms)}, p99 {_ms(self.p99_ms)}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Cell:
    """What the load process measured in one cell: ``/local`` and ``/upstream`` over the window, and ``/local``
    over its first seconds alone."""

    local: RouteFigures
    upstream: RouteFigures
    ramp: RouteFigures

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Cell:
        return cls(
            local=RouteFigures.from_json(data["local"]),
            upstream=RouteFigures.from_json(data["upstream"]),
            ramp=RouteFigures.from_json(data["ramp"]),
        )


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} ms" if value < 10 else f"{value:,.0f} ms"


def measure_cell(variant: Variant, scenario: Scenario, s: Settings) -> Cell:
    """Start an upstream in the scenario's mode, then a fresh server, run the load against it, stop both.

    Each cell gets its own upstream process: in ``refuse`` mode its control endpoint cannot be reached to heal it,
    and a brownout's sleeping answers must not spill into the next cell.
    """
    with UpstreamProcess() as up:
        up.set_mode(**UPSTREAM_MODES[scenario])
        with AppServer(variant, up.url) as server:
            return run_load(server, seconds=s.brownout_seconds, ramp=s.brownout_ramp)


def measure_healthy(variants: Sequence[Variant], s: Settings) -> dict[str, list[Cell]]:
    """Every variant's server against one healthy upstream, the load run on each in turn for short windows,
    round after round (A B C A B C ...): each round's figures are comparable across variants, as rows 1-2's slices
    are, where one long run per variant would compare different moments of a noisy machine. Per variant (by
    ``short``), one cell per round."""
    window = _window(s)
    cells: dict[str, list[Cell]] = {variant.short: [] for variant in variants}
    with UpstreamProcess() as up, contextlib.ExitStack() as stack:
        servers = [stack.enter_context(AppServer(variant, up.url)) for variant in variants]
        for _ in range(max(2, s.rounds)):
            for server in servers:
                cells[server.variant.short].append(run_load(server, seconds=window, ramp=min(s.brownout_ramp, window)))
    return cells


def run_load(server: AppServer, *, seconds: float, ramp: float) -> Cell:
    """The load process against ``server`` for ``seconds`` (its first ``ramp`` seconds also on their own)."""
    local, upstream = server.variant.paths
    command = [
        sys.executable,
        "-m",
        "benchmarks._brownout_load",
        "--url",
        server.url,
        "--local",
        local,
        "--upstream",
        upstream,
        "--threads",
        str(THREADS),
        "--seconds",
        str(seconds),
        "--ramp",
        str(ramp),
    ]
    done = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=seconds + LOAD_GRACE_SECONDS,
        check=False,
        preexec_fn=die_with_parent(),  # no orphaned server if this process is killed
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{server.variant.short}: the load process failed ({done.returncode}):\n"
            f"{done.stderr[-3000:]}\nthe server's output:\n{server.log}"
        )
    return Cell.from_json(json.loads(done.stdout.strip().splitlines()[-1]))


def pooled(cells: Sequence[Cell]) -> Cell:
    """Several windows' cells as one: requests and time summed, latency percentiles the windows' median."""
    return Cell(
        local=_pooled_route([cell.local for cell in cells]),
        upstream=_pooled_route([cell.upstream for cell in cells]),
        ramp=cells[0].ramp,
    )


def _pooled_route(figures: Sequence[RouteFigures]) -> RouteFigures:
    seconds = sum(f.count / f.all_per_second for f in figures if f.all_per_second)
    ok = sum(f.per_second * (f.count / f.all_per_second) for f in figures if f.all_per_second)
    count = sum(f.count for f in figures)
    statuses: Counter[str] = Counter()
    for f in figures:
        statuses.update(f.statuses)

    def middle(values: list[float | None]) -> float | None:
        known = [value for value in values if value is not None]
        return statistics.median(known) if known else None

    return RouteFigures(
        per_second=ok / seconds if seconds else 0.0,
        all_per_second=count / seconds if seconds else 0.0,
        p50_ms=middle([f.p50_ms for f in figures]),
        p99_ms=middle([f.p99_ms for f in figures]),
        count=count,
        statuses=dict(statuses),
    )


# -- rows ------------------------------------------------------------------------------------------------------------


def brownout(shared: UpstreamProcess, s: Settings) -> list[Row]:
    """Row 9: per variant, ``/local``'s throughput with the upstream slow and with it refusing, over healthy.

    The run's ``shared`` upstream is not used: every cell starts its own (see ``measure_cell``).
    """
    rows: list[Row] = []
    letters = iter(ROW_KEYS)
    healthy_rounds = measure_healthy(VARIANTS, s)
    plain = healthy_rounds[VARIANTS[0].short]
    for variant in VARIANTS:
        # The degraded cells run back to back after the healthy rounds; the healthy figure is the variant's rounds
        # pooled, and for the Flask apps also its ratio to the plain Session's, round by round.
        rounds = healthy_rounds[variant.short]
        cells = {"healthy": pooled(rounds)}
        cells.update({scenario: measure_cell(variant, scenario, s) for scenario in DEGRADED})
        versus_plain = (
            [mine.local.per_second / theirs.local.per_second for mine, theirs in zip(rounds, plain, strict=True)]
            if variant.framework == "flask" and variant is not VARIANTS[0]
            else None
        )
        healthy = cells["healthy"].local.per_second
        for scenario, what in DEGRADED.items():
            cell = cells[scenario]
            rows.append(
                Row(
                    next(letters),
                    f"{variant.short}: /local req/s, {what} / healthy",
                    "x",
                    [cell.local.per_second / healthy if healthy else 0.0],
                    variant.target,
                    _detail(cells, scenario, s),
                    digits=2,
                    # The table of every variant x scenario is rendered from the first row of each variant.
                    extra={"brownout": (variant.label, cells, versus_plain)} if scenario == "brownout" else {},
                )
            )
    return rows


def _detail(cells: Mapping[Scenario, Cell], scenario: Scenario, s: Settings) -> str:
    healthy, cell = cells["healthy"], cells[scenario]
    upstream = cell.upstream
    outcomes = ", ".join(
        f"{name} {_percent(upstream.share(status))}"
        for name, status in (("200", 200), ("502 failed", 502), ("503 breaker open", 503), ("no answer", 0))
        if upstream.share(status)
    )
    text = (
        f"/local healthy {healthy.local.per_second:,.0f} req/s ({healthy.local.latency_text()}), "
        f"{scenario} {cell.local.per_second:,.0f} req/s ({cell.local.latency_text()}); "
        f"/upstream in {scenario}: {upstream.all_per_second:,.0f} req/s ({outcomes or 'none'}); "
        f"the first {s.brownout_ramp:g} s of {scenario} alone: /local {cell.ramp.per_second:,.0f} req/s, "
        f"{cell.ramp.latency_text()}"
    )
    errors = cell.local.count - cell.local.statuses.get("200", 0)
    return text + (f"; /local errors: {errors}" if errors else "")


def _percent(share: float) -> str:
    return "<1%" if 0 < share < 0.005 else f"{share:.0%}"


# -- the table the README shows --------------------------------------------------------------------------------------


def render_table(rows: Sequence[Row], s: Settings) -> str | None:
    """The client x scenario table of ``/local``'s req/s, p50 and p99, or ``None`` when row 9 did not run."""
    measured = [row.extra["brownout"] for row in rows if "brownout" in row.extra]
    if not measured:
        return None
    lines = [
        "| app and its client | " + " | ".join(COLUMNS[scenario] for scenario in SCENARIOS) + " |",
        "|---" * (len(SCENARIOS) + 1) + "|",
    ]
    for label, cells, versus_plain in measured:
        texts = [f"{f.per_second:,.0f} req/s, {f.latency_text()}" for f in (cells[sc].local for sc in SCENARIOS)]
        if versus_plain:
            low, middle, high = min(versus_plain), statistics.median(versus_plain), max(versus_plain)
            texts[0] += f" ({middle:.2f}x [{low:.2f}-{high:.2f}] of the plain Session's, alternated)"
        lines.append(f"| {label} | " + " | ".join(texts) + " |")
    caption = (
        f"Requests per second and latency of `/local`, a route that calls no upstream, while {THREADS} client "
        f"threads alternate it with `/upstream` for {s.brownout_seconds:g} s from the start of the brownout or "
        f"outage. Healthy: every app runs at once and the load visits each in turn, {_window(s):g} s at a time for "
        f"{max(2, s.rounds)} rounds, so the apps are compared at the same moments (the ratio's spread is the "
        f"rounds'); gunicorn `-w {WORKERS} --threads {THREADS_PER_WORKER}`, uvicorn with {ASGI_WORKERS} worker. "
        f"Row {MEASUREMENT} of benchmarks/RESULTS.md; `python3 benchmarks/run.py --only {MEASUREMENT}` measures it "
        "again."
    )
    # Wrapped like the rest of the README; the table's lines cannot be.
    lines += ["", textwrap.fill(caption, width=120, break_long_words=False, break_on_hyphens=False)]
    return "\n".join(lines)


def _window(s: Settings) -> float:
    return max(s.brownout_seconds / HEALTHY_WINDOWS, 0.2)


def results_section(table: str) -> str:
    """``RESULTS.md``'s section for the table, between the same markers as the README's copy."""
    return "\n".join(
        [
            f"## An app whose upstream browns out (row {MEASUREMENT})",
            "",
            'The table the README\'s "Why" section shows (`benchmarks/run.py` copies it there).',
            "",
            MARKER_START,
            table,
            MARKER_END,
        ]
    )


def extract_block(text: str) -> str | None:
    """The text between the markers (stripped), or ``None`` when they are missing or out of order."""
    start, end = text.find(MARKER_START), text.find(MARKER_END)
    if start < 0 or end < start:
        return None
    return text[start + len(MARKER_START) : end].strip()


def replace_block(text: str, table: str) -> str | None:
    """``text`` with the markers' contents replaced by ``table``; ``None`` when the markers are missing."""
    start, end = text.find(MARKER_START), text.find(MARKER_END)
    if start < 0 or end < start:
        return None
    return text[: start + len(MARKER_START)] + "\n" + table + "\n" + text[end:]


def update_readme(table: str, path: Path = README) -> bool:
    """Write ``table`` between the README's markers; ``False`` (the file untouched) when they are missing."""
    text = path.read_text()
    updated = replace_block(text, table)
    if updated is None:
        return False
    if updated != text:
        path.write_text(updated)
    return True
