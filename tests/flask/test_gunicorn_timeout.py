"""``outbound.W012`` under a real gunicorn: a service whose longest call outlasts the worker timeout is named in the
log at startup, wherever the timeout was set (command line, ``GUNICORN_CMD_ARGS``, ``-c`` file, ``gunicorn.conf.py``
in the working directory), and only when that timeout bounds a request (sync workers).

The app is tests/flask/e2e_app.py: ``backend``'s longest call is 10 s (``timeout.total``), ``search``'s 20 s (one
attempt of four 5 s phases).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from gunicorn.config import KNOWN_SETTINGS

from tests.flask.e2e_app import UPSTREAM_ENV
from tests.upstream import Upstream, wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0
APP = "tests.flask.e2e_app:create_app()"
W012 = re.compile(
    r"OUTBOUND\[services\.(\w+)\]: one call can take up to (\d+)s, .*gunicorn's worker timeout \((\d+)s\)"
)

RunGunicorn = Callable[..., str]


@pytest.fixture
def run_gunicorn(upstream: Upstream, tmp_path: Path) -> RunGunicorn:
    """Start gunicorn with ``args`` in ``tmp_path``, wait until a worker has loaded the app and answered, stop it,
    and return everything it logged."""

    def run(*args: str, env: dict[str, str] | None = None) -> str:
        # gunicorn >= 25 opens a control socket at one fixed path per user; two test servers at once would collide.
        no_control = (
            ["--no-control-socket"] if any(s.cli and "--no-control-socket" in s.cli for s in KNOWN_SETTINGS) else []
        )
        log_path = tmp_path / f"gunicorn-{time.monotonic_ns()}.log"
        environ = {**os.environ, UPSTREAM_ENV: upstream.url, "PYTHONPATH": str(ROOT)}
        environ.pop("GUNICORN_CMD_ARGS", None)  # only the test's own settings
        environ.update(env or {})
        with log_path.open("w") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "--bind=127.0.0.1:0", *no_control, *args, APP],
                cwd=tmp_path,
                env=environ,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                listening: list[str] = []

                def listening_at() -> bool:
                    listening[:] = re.findall(r"Listening at: (http://127\.0\.0\.1:\d+)", log_path.read_text())
                    return bool(listening) or process.poll() is not None

                wait_until(listening_at, START_TIMEOUT)
                assert listening, log_path.read_text()

                def answered() -> bool:
                    try:
                        return requests.get(f"{listening[0]}/health/outbound", timeout=5).status_code == 200
                    except requests.ConnectionError:
                        return False

                # The only worker answered: it has loaded the app, and logged whatever it warns about.
                assert wait_until(answered, START_TIMEOUT), log_path.read_text()
            finally:
                process.terminate()
                process.wait(timeout=15)
        return log_path.read_text()

    return run


def warned(log: str) -> list[tuple[str, int, int]]:
    """(service, longest call, worker timeout) of each W012 line."""
    return [(name, int(longest), int(timeout)) for name, longest, timeout in W012.findall(log)]


def test_the_command_line_timeout(run_gunicorn: RunGunicorn) -> None:
    log = run_gunicorn("--preload", "--timeout=15")
    assert warned(log) == [("search", 20, 15)]
    assert "WORKER TIMEOUT" in log  # the message says what gunicorn would log
    assert "(outbound.W012)" in log


def test_gunicorn_cmd_args_without_preload(run_gunicorn: RunGunicorn) -> None:
    # Loaded in the worker rather than the master: the worker finds the same configuration.
    log = run_gunicorn(env={"GUNICORN_CMD_ARGS": "--timeout=8"})
    assert warned(log) == [("backend", 10, 8), ("search", 20, 8)]


def test_a_config_file(run_gunicorn: RunGunicorn, tmp_path: Path) -> None:
    (tmp_path / "settings.py").write_text("timeout = 12\n", encoding="utf-8")
    assert warned(run_gunicorn("--config=settings.py")) == [("search", 20, 12)]


def test_gunicorn_conf_py_in_the_working_directory(run_gunicorn: RunGunicorn, tmp_path: Path) -> None:
    (tmp_path / "gunicorn.conf.py").write_text("timeout = 12\npreload_app = True\n", encoding="utf-8")
    assert warned(run_gunicorn()) == [("search", 20, 12)]


@pytest.mark.parametrize(
    "args",
    [
        pytest.param((), id="default-30s"),
        pytest.param(("--timeout=8", "--worker-class=gthread"), id="gthread"),
        pytest.param(("--timeout=8", "--threads=4"), id="threads"),
        pytest.param(("--timeout=0",), id="timeout-off"),
    ],
)
def test_no_warning_when_the_timeout_does_not_cut_a_call(run_gunicorn: RunGunicorn, args: tuple[str, ...]) -> None:
    log = run_gunicorn("--preload", *args)
    assert "W012" not in log
    assert "Booting worker" in log
