"""End to end: the e2e_project under gunicorn (2 workers, --preload) and uvicorn, against the real test upstream.

Every wait is bounded and every server is stopped in a fixture's teardown, even when an assertion fails.
"""

from __future__ import annotations

import os
import queue
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.django.conftest import django_admin
from tests.upstream import Upstream, wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0
PHASE_TIMEOUT = 30.0  # each phase below takes a second or two; this only bounds a broken run
REQUEST_TIMEOUT = 10.0

StartServer = Callable[..., "Server"]


class Server:
    """A server subprocess whose combined output is collected by a thread, so waiting on it never blocks."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self._new_lines: queue.Queue[str] = queue.Queue()
        self.process = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: stop() reaches the workers too
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip())
            self._new_lines.put(line)

    def wait_for_output(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._new_lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no line matching {pattern!r}; server output:\n{self.output}")

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_exit(self, timeout: float = START_TIMEOUT) -> int:
        """The exit code; fails with the output if the server is still running after ``timeout`` seconds."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout}s; output:\n{self.output}") from None
        self._reader.join(timeout=5)
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)  # SIGTERM: a graceful stop of the master and its workers
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(timeout=10)
        self._reader.join(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def start_server(upstream: Upstream) -> Iterator[StartServer]:
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="ob") as home:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "DJANGO_SETTINGS_MODULE": "tests.django.e2e_project.settings",
            "OUTBOUND_E2E_UPSTREAM": upstream.url,
            # gunicorn >= 24 opens a control socket under $HOME: keep it private to this test run.
            "HOME": home,
        }

        def start(*args: str, settings: str | None = None) -> Server:
            server = Server(
                [sys.executable, "-m", *args], {**env, "DJANGO_SETTINGS_MODULE": settings} if settings else env
            )
            servers.append(server)
            return server

        try:
            yield start
        finally:
            for server in servers:
                server.stop()


def get(url: str) -> requests.Response:
    # A new connection per request, so the kernel spreads them over gunicorn's workers.
    return requests.get(url, headers={"Connection": "close"}, timeout=REQUEST_TIMEOUT)


def poll(step: Callable[[], bool], what: str, server: Server, timeout: float = PHASE_TIMEOUT) -> None:
    """Call ``step()`` until it returns True; fail with the server's output after ``timeout`` seconds."""
    assert wait_until(step, timeout), f"timed out waiting until {what}; server output:\n{server.output}"


def test_gunicorn_two_preloaded_workers(start_server: StartServer, upstream: Upstream) -> None:
    server = start_server(
        "gunicorn",
        "--preload",
        "--workers=2",
        "--bind=127.0.0.1:0",
        "--graceful-timeout=5",
        "--log-level=info",
        "tests.django.e2e_project.wsgi:application",
    )
    base = server.wait_for_output(r"Listening at: (http://127\.0\.0\.1:\d+)").group(1)
    workers = {int(server.wait_for_output(r"Booting worker with pid: (\d+)").group(1)) for _ in range(2)}

    # 1. Calls succeed from both workers, each using the registry the master built before forking.
    served: set[int] = set()

    def both_workers_call() -> bool:
        response = get(f"{base}/call")
        assert response.status_code == 200, response.text
        served.add(response.json()["pid"])
        return served == workers

    poll(both_workers_call, "both workers served a call", server)
    health = get(f"{base}/health/outbound")
    assert (health.status_code, health.json()["status"]) == (200, "ok")

    # 2. The upstream fails: each worker's breaker for the critical service opens, and health answers 503.
    upstream.set_mode("failing", status=503)
    rejected: set[int] = set()

    def both_breakers_open() -> bool:
        body = get(f"{base}/call").json()
        if body.get("circuit_open"):
            rejected.add(body["pid"])
        return rejected == workers

    poll(both_breakers_open, "both workers' breakers opened", server)
    down_in_a_row = 0

    def health_down_repeatedly() -> bool:
        nonlocal down_in_a_row
        response = get(f"{base}/health/outbound")
        down_in_a_row = down_in_a_row + 1 if response.status_code == 503 else 0
        if response.status_code == 503:
            body: dict[str, Any] = response.json()
            assert body["status"] == "down"
            assert body["services"]["orders"]["breaker"]["state"] == "open"
        return down_in_a_row >= 6

    poll(health_down_repeatedly, "/health/outbound answered 503 six times in a row", server)

    # 3. The upstream heals: after reset_timeout a trial call closes each breaker and health is 200 again.
    upstream.set_mode("healthy")
    recovered: set[int] = set()
    ok_in_a_row = 0

    def recovered_everywhere() -> bool:
        nonlocal ok_in_a_row
        call = get(f"{base}/call")
        if call.status_code == 200:
            recovered.add(call.json()["pid"])
        response = get(f"{base}/health/outbound")
        ok_in_a_row = ok_in_a_row + 1 if response.json()["status"] == "ok" else 0
        return recovered == workers and ok_in_a_row >= 6

    poll(recovered_everywhere, "both workers recovered and health was ok six times in a row", server)
    assert get(f"{base}/health/outbound").status_code == 200


def test_uvicorn_async_view(start_server: StartServer, upstream: Upstream) -> None:
    # Django's ASGI handler rejects the lifespan scope: tell uvicorn not to send it.
    server = start_server(
        "uvicorn", "--host=127.0.0.1", "--port=0", "--lifespan=off", "tests.django.e2e_project.asgi:application"
    )
    base = server.wait_for_output(r"Uvicorn running on (http://127\.0\.0\.1:\d+)").group(1)
    for _ in range(10):
        response = get(f"{base}/call-async")
        assert response.status_code == 200, response.text
        assert response.json()["upstream"] == 200
    # One event loop, one AsyncClient: its pooled connection served every call.
    assert upstream.connections_total == 1
    assert get(f"{base}/call").status_code == 200  # a sync view under ASGI runs in a thread, with the session

    report = get(f"{base}/health/outbound").json()
    assert report["status"] == "ok"
    assert report["services"]["catalog"]["stats"]["requests"] == 10
    assert report["services"]["orders"]["stats"]["requests"] == 1

    upstream.set_mode("failing", status=503)

    def critical_down() -> bool:
        get(f"{base}/call")
        return get(f"{base}/health/outbound").status_code == 503

    poll(critical_down, "/health/outbound answered 503", server)
    upstream.set_mode("healthy")

    def healed() -> bool:
        get(f"{base}/call")
        return get(f"{base}/health/outbound").status_code == 200

    poll(healed, "/health/outbound answered 200 again", server)


# -- invalid OUTBOUND settings: servers refuse to boot, management commands still report -----------------------------

BROKEN_SETTINGS = "tests.django.e2e_project.broken_settings"
SECRET_IN_SETTINGS = (
    "e2e-secret-api-key"  # the credential broken_settings.py puts in a header (importing it needs the env)
)
MISTAKES = ("OUTBOUND[services.billing.base_url]", "OUTBOUND[services.search.retry.total]")


def assert_refused_with_every_mistake(server: Server) -> None:
    assert server.wait_for_exit() != 0
    assert "django.core.exceptions.ImproperlyConfigured: OUTBOUND[services.billing.base_url]" in server.output
    assert all(mistake in server.output for mistake in MISTAKES), server.output
    assert SECRET_IN_SETTINGS not in server.output


@pytest.mark.parametrize("preload", [True, False], ids=["preload", "in-each-worker"])
def test_gunicorn_exits_at_boot_on_invalid_settings(start_server: StartServer, preload: bool) -> None:
    server = start_server(
        "gunicorn",
        *(["--preload"] if preload else []),
        "--workers=2",
        "--bind=127.0.0.1:0",
        "--log-level=info",
        "tests.django.e2e_project.wsgi:application",
        settings=BROKEN_SETTINGS,
    )
    assert_refused_with_every_mistake(server)
    if not preload:
        assert "Worker failed to boot" in server.output


def test_uvicorn_exits_at_boot_on_invalid_settings(start_server: StartServer) -> None:
    server = start_server(
        "uvicorn",
        "--host=127.0.0.1",
        "--port=0",
        "--lifespan=off",
        "tests.django.e2e_project.asgi:application",
        settings=BROKEN_SETTINGS,
    )
    assert_refused_with_every_mistake(server)


def test_runserver_lists_the_mistakes_and_serves_nothing(start_server: StartServer) -> None:
    # runserver's own system checks refuse to serve; its reloader keeps watching, so fixing the settings restarts it.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = start_server("django", "runserver", f"127.0.0.1:{port}", settings=BROKEN_SETTINGS)
    server.wait_for_output(r"outbound\.E005")
    server.wait_for_output(r"System check identified 2 issues")
    assert server.process.poll() is None  # still watching for a fix
    with pytest.raises(requests.ConnectionError):
        get(f"http://127.0.0.1:{port}/health/outbound")
    assert SECRET_IN_SETTINGS not in server.output


def test_manage_py_check_still_lists_every_mistake(monkeypatch: pytest.MonkeyPatch, upstream: Upstream) -> None:
    monkeypatch.setenv("OUTBOUND_E2E_UPSTREAM", upstream.url)
    result = django_admin(BROKEN_SETTINGS, "check")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "outbound.E004" in result.stderr
    assert "outbound.E005" in result.stderr


# -- gunicorn's worker timeout (outbound.W012) --------------------------------------------------------------------


@pytest.mark.parametrize("preload", [True, False], ids=["preload", "in-each-worker"])
def test_gunicorn_logs_services_whose_calls_outlast_its_worker_timeout(
    start_server: StartServer, preload: bool
) -> None:
    # Both services of the project have a 10 s timeout.total; Django runs no system checks under gunicorn, so the
    # app logs the outbound warnings itself when gunicorn loads the project.
    server = start_server(
        "gunicorn",
        *(["--preload"] if preload else []),
        "--workers=1",
        "--timeout=8",
        "--bind=127.0.0.1:0",
        "--log-level=info",
        "tests.django.e2e_project.wsgi:application",
    )
    base = server.wait_for_output(r"Listening at: (http://127\.0\.0\.1:\d+)").group(1)
    poll(lambda: get(f"{base}/health/outbound").status_code == 200, "the worker answered", server)
    server.stop()  # every line it wrote is read once it has exited
    warned = re.findall(
        r"OUTBOUND\[services\.(\w+)\]: one call can take up to 10s, .* \(outbound\.W012\)", server.output
    )
    assert warned == ["orders", "catalog"]
    assert "gunicorn's worker timeout (8s)" in server.output
    assert "(outbound.W007)" in server.output  # the project's show_details "always": every outbound warning is logged


def test_gunicorn_default_timeout_gives_no_warning_for_these_services(start_server: StartServer) -> None:
    server = start_server(
        "gunicorn", "--preload", "--bind=127.0.0.1:0", "--log-level=info", "tests.django.e2e_project.wsgi:application"
    )
    base = server.wait_for_output(r"Listening at: (http://127\.0\.0\.1:\d+)").group(1)
    poll(lambda: get(f"{base}/health/outbound").status_code == 200, "the worker answered", server)
    server.stop()
    assert "W012" not in server.output
