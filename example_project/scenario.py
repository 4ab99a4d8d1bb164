"""The demo scenario: processes, traffic, and a readable account of what the breaker does."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import httpx

from example_project.services import HEALTH_TOKEN, REDIS_ENV, outbound_settings
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
BREAKER = outbound_settings()["defaults"]["breaker"]
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
# The fleet demo's waits: how many tries and seconds a phase has for the fleet to agree, and the pause between tries.
FLEET_CALLS = 100
FLEET_WAIT = 20.0
POLL = 0.1
SHELL_TRIES = 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Narrator:
    """Prints each event with the seconds since the start; plain text when not on a terminal."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.color = sys.stdout.isatty() and "NO_COLOR" not in os.environ

    def say(self, tag: str, text: str, *, color: str = "") -> None:
        codes = {"red": "31", "green": "32", "yellow": "33", "cyan": "36", "bold": "1"}
        label = f"{tag:<10}"
        if self.color and color:
            label = f"\033[{codes[color]}m{label}\033[0m"
        with self.lock:
            print(f"[{time.monotonic() - self.started:5.1f}s] {label} {text}", flush=True)


class Stack:
    """The simulator and one example app, each in its own process group; stop() ends both, whatever happens."""

    def __init__(self, framework: str, narrator: Narrator, *, redis: bool = False) -> None:
        self.framework = framework
        self.narrator = narrator
        self.redis: RedisServer | None = None
        self._redis_dir: tempfile.TemporaryDirectory[str] | None = None
        if redis:
            self._redis_dir = tempfile.TemporaryDirectory(prefix="outbound-demo-redis")
            self.redis = RedisServer(Path(self._redis_dir.name))
        self.upstream_url = f"http://127.0.0.1:{_free_port()}/"
        # With Redis, two workers, each a gunicorn of its own on its own port: the demo reaches each one on purpose
        # (behind one shared socket the kernel picks the worker, and a worker still starting never gets picked).
        self.worker_urls = [f"http://127.0.0.1:{_free_port()}" for _ in range(2 if redis else 1)]
        self.app_url = self.worker_urls[0]
        self.processes: list[subprocess.Popen[str]] = []

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OUTBOUND_DEMO_UPSTREAM": self.upstream_url}
        port = self.upstream_url.rsplit(":", 1)[1].strip("/")
        self._spawn([sys.executable, "-m", "example_project.upstream", "--port", port], env, log=False)
        self._wait_until_up(self.upstream_url + "_control/stats")
        if self.redis is not None:
            self.redis.start()
            env[REDIS_ENV] = self.redis.url
            self.env = env
            # Two workers sharing one Redis: the fleet in miniature (as two hosts would, they share nothing else).
            # gunicorn for both frameworks (WSGI; Django's async view runs through async_to_sync, with one event loop
            # and client per call).
            wsgi = "example_project.django_site.wsgi:application" if self.framework == "django" else None
            if wsgi is not None:
                env["DJANGO_SETTINGS_MODULE"] = "example_project.django_site.settings"
            app = wsgi or "example_project.flask_app:create_app()"
            for url in self.worker_urls:
                command = [sys.executable, "-m", "gunicorn", "--workers", "1", "--threads", "4"]
                command += ["--log-level", "warning", "--bind", url.removeprefix("http://"), app]
                self._spawn(command, env, log=True)
            for url in self.worker_urls:
                self._wait_until_up(url + "/health/outbound")
            return
        self.env = env
        if self.framework == "django":
            env["DJANGO_SETTINGS_MODULE"] = "example_project.django_site.settings"
            command = [
                sys.executable,
                "-m",
                "uvicorn",
                "example_project.django_site.asgi:application",
                "--no-access-log",
            ]
            command += ["--host", "127.0.0.1", "--port", self.app_url.rsplit(":", 1)[1], "--log-level", "warning"]
        else:
            command = [sys.executable, "-m", "gunicorn", "--workers", "1", "--threads", "4", "--log-level", "warning"]
            command += ["--bind", self.app_url.removeprefix("http://"), "example_project.flask_app:create_app()"]
        self._spawn(command, env, log=True)
        self._wait_until_up(self.app_url + "/health/outbound")

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=STOP_TIMEOUT)
        if self.redis is not None:
            self.redis.stop()
            assert self._redis_dir is not None
            self._redis_dir.cleanup()
        pids = ", ".join(str(p.pid) for p in self.processes)
        self.narrator.say("stopped", f"simulator and app (pids {pids}){' and redis-server' if self.redis else ''}")

    def _spawn(self, command: list[str], env: dict[str, str], *, log: bool) -> None:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE if log else subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # its own process group: stop() ends the server's workers too
        )
        self.processes.append(process)
        if log:
            threading.Thread(target=self._relay_logs, args=(process,), daemon=True).start()

    def _relay_logs(self, process: subprocess.Popen[str]) -> None:
        # The app logs outbound's breaker transitions (WARNING on open, INFO on close): show them as they happen.
        assert process.stderr is not None
        for line in process.stderr:
            if line.startswith("outbound |"):
                self.narrator.say("app log", line.removeprefix("outbound |").strip(), color="cyan")

    def _wait_until_up(self, url: str) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.processes):
                raise RuntimeError(f"a process exited during startup: {[p.args for p in self.processes]}")
            try:
                httpx.get(url, timeout=1.0)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"{url} did not answer within {STARTUP_TIMEOUT:.0f}s")


@contextmanager
def running(framework: str, narrator: Narrator, *, redis: bool = False) -> Iterator[Stack]:
    stack = Stack(framework, narrator, redis=redis)

    def on_signal(signum: int, frame: Any) -> NoReturn:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        signal.signal(signal.SIGTERM, previous)


class Demo:
    """Drives the app and reads its health report (with the demo token) to narrate the breaker."""

    def __init__(self, stack: Stack, narrator: Narrator) -> None:
        self.stack = stack
        self.say = narrator.say
        self.http = httpx.Client(base_url=stack.app_url, timeout=10.0)
        self.health_codes: list[int] = []
        self.fast_fails: list[float] = []

    def close(self) -> None:
        self.http.close()

    def upstream(self, mode: str, **params: float) -> None:
        query = "&".join([f"name={mode}", *(f"{key}={value}" for key, value in params.items())])
        httpx.post(f"{self.stack.upstream_url}_control/mode?{query}", timeout=5.0).raise_for_status()

    def upstream_hits(self) -> int:
        return int(httpx.get(self.stack.upstream_url + "_control/stats", timeout=5.0).json()["hits"])

    def breaker(self, service: str = "billing") -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {HEALTH_TOKEN}"}
        report = self.http.get("/health/outbound", headers=headers).json()
        return dict(report["services"][service]["breaker"])

    def call(self, path: str, http: httpx.Client | None = None) -> dict[str, Any]:
        response = (http or self.http).get(path)
        body = response.json()
        if body.get("ok"):
            outcome = f"{body['status']} from {body['service']}"
        elif "status" in body:
            outcome = f"upstream answered {body['status']}"
        else:
            outcome = body["error"] + (f" (next trial in {body['retry_in']:.1f}s)" if "retry_in" in body else "")
        color = "green" if body.get("ok") else "red" if response.status_code == 503 else "yellow"
        self.say("call", f"GET {path:<10} -> {response.status_code}  {outcome}  in {body['ms']:.1f} ms", color=color)
        return dict(body)

    def health(self) -> int:
        response = self.http.get("/health/outbound")
        self.health_codes.append(response.status_code)
        color = "green" if response.status_code == 200 else "red"
        self.say("health", f"GET /health/outbound -> {response.status_code} {json.dumps(response.json())}", color=color)
        return response.status_code

    def run(self) -> bool:
        self.say("phase", "1. the upstream is healthy", color="bold")
        for path in ("/catalog", "/search", "/checkout"):
            self.call(path)
        self.health()

        self.say("phase", "2. the upstream starts failing: every call gets 503", color="bold")
        self.upstream("failing", status=503)
        for _ in range(BREAKER["fail_max"] * 2):
            self.call("/checkout")
            if self.breaker()["state"] == "open":
                break
        state = self.breaker()
        opened = state["state"] == "open"
        self.say("breaker", f"billing is {state['state'].upper()} (opened at {state['opened_at']})", color="red")

        self.say("phase", "3. while open, calls fail fast and nothing reaches the upstream", color="bold")
        hits = self.upstream_hits()
        for _ in range(3):
            body = self.call("/checkout")
            if body.get("error") == "CircuitOpenError":
                self.fast_fails.append(body["ms"])
        sent = self.upstream_hits() - hits
        self.say("upstream", f"requests that reached the upstream meanwhile: {sent}")
        down = self.health() == 503

        self.say("phase", "4. the upstream heals; the breaker waits out reset_timeout", color="bold")
        self.upstream("healthy")
        deadline = time.monotonic() + BREAKER["reset_timeout"] + 5
        while time.monotonic() < deadline and (retry_in := self.breaker()["retry_in"] or 0) > 0:
            self.say("breaker", f"still open: next trial in {retry_in:.1f}s")
            time.sleep(min(1.0, retry_in))
        self.say("breaker", "trial due: the next call is the half-open probe", color="yellow")
        trial = self.call("/checkout")
        state = self.breaker()
        closed = trial.get("ok") is True and state["state"] == "closed"
        self.say("breaker", f"billing is {state['state'].upper()}", color="green" if closed else "red")
        recovered = self.health() == 200
        self.call("/search")

        fast = bool(self.fast_fails) and sent == 0
        checks = {
            "breaker opened": opened,
            "calls failed fast without reaching the upstream": fast,
            "/health/outbound went 503": down,
            "half-open trial closed the breaker": closed,
            "/health/outbound back to 200": recovered,
        }
        for name, passed in checks.items():
            self.say("check", f"{'ok  ' if passed else 'FAIL'} {name}", color="green" if passed else "red")
        fast_fail_ms = max(self.fast_fails) if self.fast_fails else float("nan")
        print(
            f"RESULT opened={opened} fast_fail={fast} health={','.join(map(str, self.health_codes))} "
            f"closed={closed} slowest_fast_fail_ms={fast_fail_ms:.1f}",
            flush=True,
        )
        return all(checks.values())


def run_scenario(framework: str) -> int:
    narrator = Narrator()
    server = "uvicorn (ASGI)" if framework == "django" else "gunicorn (WSGI)"
    narrator.say("start", f"upstream simulator and the {framework} example app under {server}")
    with running(framework, narrator) as stack:
        narrator.say("ready", f"app {stack.app_url}, simulator {stack.upstream_url}")
        demo = Demo(stack, narrator)
        try:
            passed = demo.run()
        finally:
            demo.close()
    return 0 if passed else 1


def serve(framework: str, *, redis: bool = False) -> int:
    narrator = Narrator()
    with running(framework, narrator, redis=redis) as stack:
        control = stack.upstream_url + "_control/mode?name="
        others = "".join(
            f"\nits other worker:     {url}/   (the same app, sharing state through Redis)"
            for url in stack.worker_urls[1:]
        )
        print(
            f"""
{framework} example app:  {stack.app_url}/   (try /catalog, /search, /checkout){others}
health:               {stack.app_url}/health/outbound
  details:            curl -H 'Authorization: Bearer {HEALTH_TOKEN}' {stack.app_url}/health/outbound
upstream simulator:   {stack.upstream_url}_control/stats
  make it fail:       curl -X POST '{control}failing&status=503'
  slow / refuse:      curl -X POST '{control}slow&delay=3'     curl -X POST '{control}refuse'
  flapping / heal:    curl -X POST '{control}flapping&period=2'  curl -X POST '{control}healthy'

the README's table (an app that keeps serving while its upstream browns out), measured again:
                      python3 benchmarks/run.py --only 9

Ctrl+C stops them all.""",
            flush=True,
        )
        try:
            while all(process.poll() is None for process in stack.processes):
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0


class FleetDemo(Demo):
    """``--redis``: two workers, one Redis. One opening for both, one story from every health answer and a shell.

    Each worker has its own port, so every phase asks each worker in turn; a phase that waits for the fleet (a
    transition reaching the other worker through Redis, a worker's stats heartbeat) asks again until its condition
    holds, bounded by ``FLEET_CALLS`` tries and ``FLEET_WAIT`` seconds, never for a fixed sleep.
    """

    def __init__(self, stack: Stack, narrator: Narrator) -> None:
        super().__init__(stack, narrator)
        self.workers = [httpx.Client(base_url=url, timeout=10.0) for url in stack.worker_urls]
        self.pids: list[int] = []

    def close(self) -> None:
        super().close()
        for http in self.workers:
            http.close()

    def call_worker(self, index: int, path: str) -> dict[str, Any]:
        body = self.call(path, self.workers[index])
        self.say("", f"   answered by worker {body['worker']}")
        return body

    def fleet_report(self, index: int) -> dict[str, Any]:
        """One worker's detailed ``/health/outbound``."""
        headers = {"Authorization": f"Bearer {HEALTH_TOKEN}"}
        return dict(self.workers[index].get("/health/outbound", headers=headers).json())

    def shell(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``manage.py outbound ...`` / ``flask outbound ...`` in a new process: an operator's shell."""
        if self.stack.framework == "django":
            command = [sys.executable, "-m", "django", "outbound", *args]
        else:
            command = [sys.executable, "-m", "flask", "--app", "example_project.flask_app:create_app()", "outbound"]
            command += args
        self.say("shell", " ".join(["outbound", *args]), color="cyan")
        done = subprocess.run(command, cwd=ROOT, env=self.stack.env, capture_output=True, text=True, timeout=60)
        for line in done.stdout.strip().splitlines():
            self.say("", f"   {line}")
        return done

    def until_every_worker(self, path: str, answered: Callable[[dict[str, Any]], bool]) -> set[int]:
        """Call each worker in turn until each has given an answer that satisfies ``answered`` (bounded); return the
        indexes of the workers that did."""
        done: set[int] = set()
        deadline = time.monotonic() + FLEET_WAIT
        for attempt in range(FLEET_CALLS):
            waiting = [index for index in range(len(self.workers)) if index not in done]
            if not waiting or time.monotonic() > deadline:
                break
            index = waiting[attempt % len(waiting)]
            if answered(self.call_worker(index, path)):
                done.add(index)
            else:
                time.sleep(POLL)  # news from the other worker (through Redis) may be a moment away
        return done

    def run(self) -> bool:
        self.say("phase", "1. two workers share their state through Redis; the upstream is healthy", color="bold")
        answers = [self.call_worker(index, "/checkout") for index in range(len(self.workers))]
        self.pids = [body["worker"] for body in answers]
        both_answered = all(body.get("ok") for body in answers) and len(set(self.pids)) == 2

        self.say(
            "phase",
            f"2. the upstream fails: the fleet opens billing's breaker after {BREAKER['fail_max']} "
            "failures in all, not per worker",
            color="bold",
        )
        self.upstream("failing", status=503)
        hits = self.upstream_hits()
        refused = self.until_every_worker("/checkout", lambda body: body.get("error") == "CircuitOpenError")
        sent = self.upstream_hits() - hits
        self.say("upstream", f"failing requests that reached the upstream: {sent} (each request retries once)")

        self.say("phase", "3. every worker's /health/outbound tells the same story", color="bold")
        agree = all(self.wait_for_report(index) for index in range(len(self.workers)))

        self.say(
            "phase", "4. an operator's shell (a new process) reads the fleet, then resets the breaker", color="bold"
        )
        shell_sees = self.shell_sees_fleet()
        self.upstream("healthy")
        self.shell("reset", "billing")
        closed = self.until_every_worker("/checkout", lambda body: body.get("ok") is True)

        every_worker = set(range(len(self.workers)))
        checks = {
            "both workers answered": both_answered,
            "one opening refused calls on both workers": refused == every_worker,
            f"the upstream saw at most (fail_max + 2 workers) x 2 attempts ({sent})": sent
            <= (BREAKER["fail_max"] + 2) * 2,
            "every worker's health answer: fleet scope, 2 workers, billing open": agree,
            "a shell's outbound status saw the fleet": shell_sees,
            "outbound reset closed the breaker on both workers": closed == every_worker,
        }
        for name, passed in checks.items():
            self.say("check", f"{'ok  ' if passed else 'FAIL'} {name}", color="green" if passed else "red")
        print(f"RESULT fleet={all(checks.values())} upstream_requests={sent}", flush=True)
        return all(checks.values())

    def wait_for_report(self, index: int) -> bool:
        """Read a worker's report until it shows the fleet (both workers' heartbeats live) with billing open."""
        deadline = time.monotonic() + FLEET_WAIT
        for _ in range(FLEET_CALLS):
            report = self.fleet_report(index)
            billing = report["services"]["billing"]["breaker"]["state"]
            agrees = report["scope"] == "fleet" and report["workers"] == 2 and billing == "open"
            if agrees or time.monotonic() > deadline:
                break
            time.sleep(POLL)
        self.say(
            "health",
            f"worker {self.pids[index]}: scope {report['scope']}, {report['workers']} workers, billing {billing}",
            color="green" if agrees else "red",
        )
        return agrees

    def shell_sees_fleet(self) -> bool:
        """``outbound status`` from a new process, again (a few times at most) until it counts both workers."""
        for _ in range(SHELL_TRIES):
            out = self.shell("status", "--service", "billing").stdout
            if "scope: fleet (2 workers" in out and " open" in out:
                return True
        return False


def run_fleet_scenario(framework: str) -> int:
    narrator = Narrator()
    narrator.say(
        "start", f"upstream simulator, redis-server and the {framework} example app: 2 workers, each its own gunicorn"
    )
    with running(framework, narrator, redis=True) as stack:
        workers = " and ".join(stack.worker_urls)
        redis = stack.redis.url if stack.redis else "-"
        narrator.say("ready", f"app workers {workers}, simulator {stack.upstream_url}, redis {redis}")
        demo = FleetDemo(stack, narrator)
        try:
            passed = demo.run()
        finally:
            demo.close()
    return 0 if passed else 1
