"""End to end: tests/flask/e2e_app.py under gunicorn (two workers, ``--preload``) against the real test upstream.

The registry is built once in the gunicorn master and inherited by both workers; each worker then has its own
connections and its own breaker. Every wait is bounded, and gunicorn is always stopped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from gunicorn.config import KNOWN_SETTINGS

from tests.flask.e2e_app import HEALTH_TOKEN, UPSTREAM_ENV
from tests.upstream import Upstream, wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PHASE_TIMEOUT = 30.0
AUTH = {"Authorization": f"Bearer {HEALTH_TOKEN}"}


class Gunicorn:
    """A gunicorn subprocess whose combined output is collected by a thread, so its pipe never fills up."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, name="gunicorn-log", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_for_log(self, pattern: str, *, count: int = 1, timeout: float = PHASE_TIMEOUT) -> list[re.Match[str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            matches = [m for line in list(self.lines) if (m := re.search(pattern, line))]
            if len(matches) >= count:
                return matches
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"gunicorn never logged {pattern!r} x{count}; its output:\n{self.log}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._reader.join(timeout=5)
        assert self.process.stdout is not None
        self.process.stdout.close()


@pytest.fixture
def server(upstream: Upstream) -> Iterator[tuple[str, Gunicorn]]:
    """The app's base URL, served by gunicorn on a free port of 127.0.0.1."""
    # gunicorn >= 25 opens a control socket at one fixed path per user; two test servers at once would collide.
    no_control = ["--no-control-socket"] if any("--no-control-socket" in s.cli for s in KNOWN_SETTINGS if s.cli) else []
    args = [
        sys.executable,
        "-m",
        "gunicorn",
        "--preload",
        "--workers",
        "2",
        "--bind",
        "127.0.0.1:0",  # the kernel picks a free port; gunicorn logs it
        "--graceful-timeout",
        "5",
        *no_control,
        "tests.flask.e2e_app:create_app()",
    ]
    gunicorn = Gunicorn(args, env={**os.environ, UPSTREAM_ENV: upstream.url, "PYTHONPATH": str(ROOT)})
    try:
        [listening] = gunicorn.wait_for_log(r"Listening at: (http://127\.0\.0\.1:\d+)")
        gunicorn.wait_for_log(r"Booting worker with pid", count=2)
        yield listening.group(1), gunicorn
    finally:
        gunicorn.stop()


def get(url: str, **headers: str) -> requests.Response:
    # A new connection per call ("Connection: close"), so the kernel spreads the calls over both workers.
    return requests.get(url, headers={"Connection": "close", **headers}, timeout=10)


def poll(step: Callable[[], bool], what: str, gunicorn: Gunicorn) -> None:
    assert wait_until(step, PHASE_TIMEOUT), f"timed out waiting until {what}; gunicorn output:\n{gunicorn.log}"


def test_breaker_opens_health_goes_503_and_recovers(server: tuple[str, Gunicorn], upstream: Upstream) -> None:
    base, gunicorn = server

    # 1. Calls succeed from both workers, through the requests session and the per-loop async client.
    pids: set[int] = set()
    async_pids: set[int] = set()

    def both_workers_answer() -> bool:
        call, async_call = get(f"{base}/call"), get(f"{base}/async-call")
        assert (call.status_code, call.json()["upstream"]) == (200, 200), call.text
        assert (async_call.status_code, async_call.json()["upstream"]) == (200, 200), async_call.text
        pids.add(call.json()["pid"])
        async_pids.add(async_call.json()["pid"])
        return len(pids) == 2 and len(async_pids) == 2

    poll(both_workers_answer, "both workers answered", gunicorn)
    assert get(f"{base}/health/outbound").json() == {"status": "ok"}

    # 2. The upstream fails: each worker's breaker opens after two failures and its health answers 503.
    upstream.set_mode("failing", status=503)
    seen: dict[str, Any] = {}

    def health_is_down() -> bool:
        call = get(f"{base}/call")
        assert call.status_code in (502, 503), call.text
        seen["health"] = get(f"{base}/health/outbound", **AUTH)
        return seen["health"].status_code == 503

    poll(health_is_down, "/health/outbound answered 503", gunicorn)
    down = seen["health"].json()
    assert down["status"] == "down"
    assert down["services"]["backend"]["breaker"]["state"] == "open"
    assert down["services"]["search"]["status"] == "ok"  # untouched: /async-call was not called meanwhile

    def call_is_rejected() -> bool:
        call = get(f"{base}/call")
        assert call.status_code in (502, 503), call.text
        return call.json().get("error") == "circuit open"  # failed fast, without reaching the upstream

    poll(call_is_rejected, "an open breaker rejected a call", gunicorn)

    # 3. The upstream heals: after reset_timeout a trial call closes each breaker and health is 200 again.
    upstream.set_mode("healthy")
    healed: set[int] = set()

    def recovered() -> bool:
        call = get(f"{base}/call")
        if call.status_code == 200:
            healed.add(call.json()["pid"])
        health = get(f"{base}/health/outbound", **AUTH)
        return healed == pids and health.status_code == 200 and health.json()["status"] == "ok"

    poll(recovered, "both workers called the upstream again and health was 200", gunicorn)
    assert "Traceback" not in gunicorn.log, gunicorn.log
