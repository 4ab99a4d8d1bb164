"""``status --watch``: the live terminal view, drawn in a real terminal (tmux) against a live server, and quit with
Ctrl-C; and its frames, read in-process."""

from __future__ import annotations

import io
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from werkzeug.serving import make_server

import outbound
from outbound import cli
from outbound._watch import sparkline, watch
from outbound_flask import Outbound
from tests.conftest import RegistryFactory
from tests.upstream import Upstream, wait_until

ROOT = Path(__file__).resolve().parents[2]
TMUX = shutil.which("tmux") or "/usr/bin/tmux"
TOKEN = "watch-test-health-token-0123456789"
HISTORY = {"interval": 1.0, "buckets": 30}


@pytest.fixture
def server(upstream: Upstream) -> Iterator[tuple[str, outbound.Registry]]:
    """A live Flask app on 127.0.0.1 (a thread of this process) whose registry keeps a 1-second history."""
    app = Flask("watched")
    app.config["OUTBOUND"] = {
        "services": {
            "api": {"base_url": upstream.url, "retry": None, "breaker": {"fail_max": 3, "reset_timeout": 300}},
            "quiet": {"base_url": upstream.url},
            # Fails without opening (its breaker needs far more): the view says since when it fails.
            "flaky": {"base_url": upstream.url, "retry": None, "breaker": {"fail_max": 1000}},
        },
        "health": {"token": TOKEN, "history": HISTORY},
    }
    ext = Outbound(app)
    web = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=web.serve_forever, daemon=True)
    thread.start()
    try:
        with app.app_context():
            registry = ext.registry
        yield f"http://127.0.0.1:{web.server_port}/health/outbound", registry
    finally:
        web.shutdown()
        thread.join(timeout=5)


class Tmux:
    """A tmux server of this test's own (its own socket), running one command in a 160 x 40 terminal."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.socket = f"outbound-watch-{secrets.token_hex(4)}"
        # The pane stays after the command ends and says how it ended: a clean exit is part of what is checked. The
        # shell traps Ctrl-C (a trap, unlike an ignore, is not inherited): it reaches the command and the shell lives.
        script = "trap true INT; " + " ".join(_quote(part) for part in command) + '; echo "EXITED WITH $?"; sleep 60'
        subprocess.run(
            [
                TMUX,
                "-L",
                self.socket,
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-s",
                "w",
                "-x",
                "160",
                "-y",
                "40",
                "sh",
                "-c",
                script,
            ],
            check=True,
            env=env,
            cwd=ROOT,
            timeout=10,
        )

    def screen(self) -> str:
        return subprocess.run(
            [TMUX, "-L", self.socket, "capture-pane", "-p", "-t", "w"],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout

    def keys(self, *keys: str) -> None:
        subprocess.run([TMUX, "-L", self.socket, "send-keys", "-t", "w", *keys], check=True, timeout=10)

    def close(self) -> None:
        subprocess.run([TMUX, "-L", self.socket, "kill-server"], check=False, timeout=10)


def _line(screen: str, name: str) -> str:
    """The trends line of service ``name`` on a screen (``""`` before there is one)."""
    trends = screen.split("TRENDS", 1)[1] if "TRENDS" in screen else ""
    return next((line for line in trends.splitlines() if line.startswith(f"{name} ")), "")


def _quote(part: str) -> str:
    return "'" + part.replace("'", "'\\''") + "'"


def test_the_terminal_view_follows_a_live_server_and_quits_on_ctrl_c(
    server: tuple[str, outbound.Registry], upstream: Upstream
) -> None:
    assert Path(TMUX).exists(), "tmux is required for the terminal view test (apt-get install -y tmux)"
    url, registry = server
    session = registry.session("api")
    for _ in range(20):
        session.get("ok")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OUTBOUND_E2E_UPSTREAM": upstream.url}
    command = [sys.executable, "-m", "flask", "--app", "tests.flask.e2e_app:create_app", "outbound", "status"]
    tmux = Tmux([*command, "--watch", "--url", url, "--token", TOKEN], env)
    try:
        assert wait_until(lambda: "TRENDS" in tmux.screen(), timeout=30.0), tmux.screen()
        screen = tmux.screen()
        assert "outbound status --watch" in screen
        assert "Ctrl-C to quit" in screen
        assert "SERVICE" in screen  # the status table's columns
        trends = screen.split("TRENDS", 1)[1]
        api_line = next(line for line in trends.splitlines() if line.startswith("api "))
        assert any(block in api_line for block in "▂▃▄▅▆▇█"), api_line  # a sparkline with the calls in it
        # No transition in the window: since its start, or before.
        assert re.search(r"breaker closed since \d\d:\d\d:\d\d or before$", api_line.rstrip()), api_line
        # A service whose calls fail while its breaker stays closed: "failing since" the first failed bucket.
        for _ in range(6):
            registry.session("flaky").get("status/503")
        assert wait_until(lambda: _line(tmux.screen(), "flaky").count("failing since") == 1, timeout=10.0), (
            tmux.screen()
        )
        assert re.search(r"failing since \d\d:\d\d:\d\d$", _line(tmux.screen(), "flaky").rstrip())
        # The view refreshes by itself: a failure seen by the server shows on the screen within seconds.
        for _ in range(3):
            session.get("status/503")
        assert wait_until(lambda: "breaker open since" in _line(tmux.screen(), "api"), timeout=10.0), tmux.screen()
        assert re.search(r"breaker open since \d\d:\d\d:\d\d$", _line(tmux.screen(), "api").rstrip())
        assert any("api" in line and "down" in line for line in tmux.screen().splitlines())
        tmux.keys("C-c")
        assert wait_until(lambda: "EXITED WITH 0" in tmux.screen(), timeout=10.0), tmux.screen()
        assert "Traceback" not in tmux.screen()
        assert "stopped watching" in tmux.screen()
    finally:
        tmux.close()


def test_frames_read_in_process(make_registry: RegistryFactory, upstream: Upstream) -> None:
    registry = make_registry(
        health={"history": HISTORY}, api={"base_url": upstream.url}, idle={"base_url": upstream.url}
    )
    for _ in range(5):
        registry.session("api").get("ok")
    out = io.StringIO()
    assert cli.watch_status(registry, out=out, frames=2).code == 0
    frames = out.getvalue().split("\x1b[H\x1b[2J")[1:]
    assert len(frames) == 2
    assert "TRENDS (requests/s, last 30 s in 1 s buckets)" in frames[-1]
    lines = frames[-1].split("TRENDS", 1)[1].splitlines()
    assert any(line.startswith("api ") and "█" in line for line in lines), frames[-1]
    assert any(line.startswith("idle ") and "▁" * 30 in line for line in lines), frames[-1]


def test_a_stale_answer_shows_beside_the_errors(make_registry: RegistryFactory, upstream: Upstream) -> None:
    service = {"base_url": upstream.url, "retry": None, "cache": {"ttl": 1, "stale_if_error": 60}}
    registry = make_registry(health={"history": HISTORY}, cached=service)
    session = registry.session("cached")
    session.get("catalogue")
    layer = registry["cached"].policy.cache
    assert layer is not None
    start = layer.now()
    layer.now = lambda: start + 5  # the stored answer is past its freshness
    upstream.set_mode("failing", status=503)
    assert session.get("catalogue").outbound_cache == "stale"  # type: ignore[attr-defined]

    def frame() -> str:
        out = io.StringIO()
        cli.watch_status(registry, out=out, frames=1)
        return out.getvalue()

    # Beside the last complete buckets' numbers (the one still counting is not yet among them).
    assert wait_until(lambda: "stale 1" in frame(), timeout=5.0), frame()
    assert "errors 50%" in frame()


def test_without_a_history_the_view_says_how_to_get_one(make_registry: RegistryFactory, upstream: Upstream) -> None:
    registry = make_registry(api={"base_url": upstream.url})
    out = io.StringIO()
    cli.watch_status(registry, out=out, frames=1)
    assert "api  (no history: set health.history" in out.getvalue()


def test_ctrl_c_ends_the_view_quietly_and_a_failed_read_keeps_it_up() -> None:
    answers = iter([RuntimeError("server gone"), KeyboardInterrupt()])

    def read() -> str:
        raise next(answers)

    slept: list[float] = []
    out = io.StringIO()
    assert watch(read, str, out=out, sleep=slept.append) == 0
    assert "Error: RuntimeError: server gone" in out.getvalue()
    assert out.getvalue().endswith("stopped watching\n")
    assert slept == [1.0]


def test_the_sparkline_scales_to_the_busiest_bucket() -> None:
    from datetime import datetime, timezone

    from outbound.health import HistorySnapshot

    calls = (0, 1, 5, 10, 20, 40)
    history = HistorySnapshot(
        interval=1.0,
        end=datetime.now(timezone.utc),
        calls=calls,
        errors=(0,) * 6,
        refused=(0,) * 6,
        retries=(0,) * 6,
        stale=(0,) * 6,
        p50_ms=(None,) * 6,
        p95_ms=(None,) * 6,
        p99_ms=(None,) * 6,
    )
    line = sparkline(history)
    assert len(line) == 6
    assert line[0] == "▁"
    assert line[-1] == "█"
    assert list(line) == sorted(line)
