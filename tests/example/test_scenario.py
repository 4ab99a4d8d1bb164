"""The README's demo, run as CI runs it: non-interactive, both frameworks, nothing left running afterwards."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead but not yet reaped by its (already exited) parent's reaper.
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


@pytest.mark.e2e
@pytest.mark.parametrize("framework", ["django", "flask"])
def test_demo_scenario_opens_and_closes_the_breaker(framework: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "example_project" / "run.py"), "--framework", framework],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_COLOR": "1"},
        check=False,
    )
    output = result.stdout
    assert result.returncode == 0, output + result.stderr
    assert "RESULT opened=True fast_fail=True health=200,503,200 closed=True" in output
    # The app's own log lines show the transitions as they happened.
    assert "circuit breaker for 'billing' opened" in output
    assert "circuit breaker for 'billing' closed" in output
    assert "requests that reached the upstream meanwhile: 0" in output

    stopped = re.search(r"stopped\s+simulator and app \(pids ([\d, ]+)\)", output)
    assert stopped is not None
    pids = [int(pid) for pid in stopped.group(1).split(", ")]
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids), "the demo left a process running"
    ready = re.search(r"app http://127\.0\.0\.1:(\d+), simulator http://127\.0\.0\.1:(\d+)/", output)
    assert ready is not None
    for port in ready.groups():  # nothing (no worker child either) still listens on the ports it used
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", int(port))) != 0, f"port {port} still open"


@pytest.mark.e2e
@pytest.mark.parametrize("framework", ["django", "flask"])
def test_fleet_demo_shows_two_workers_agreeing(framework: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "example_project" / "run.py"), "--redis", "--framework", framework],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "NO_COLOR": "1"},
        check=False,
    )
    output = result.stdout
    assert result.returncode == 0, output + result.stderr
    assert "RESULT fleet=True" in output
    # Each worker on its own port, each asked in turn: two processes answered and each told the fleet's story.
    ready = re.search(r"app workers http://127\.0\.0\.1:(\d+) and http://127\.0\.0\.1:(\d+), simulator", output)
    assert ready is not None, output
    answered = set(re.findall(r"answered by worker (\d+)", output))
    told = re.findall(r"health\s+worker (\d+): scope fleet, 2 workers, billing open", output)
    assert len(answered) == 2, output
    assert sorted(told) == sorted(answered), output
    stopped = re.search(r"stopped\s+simulator and app \(pids ([\d, ]+)\) and redis-server", output)
    assert stopped is not None, output  # it stopped the redis-server it started
    pids = [int(pid) for pid in stopped.group(1).split(", ")]
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids), "the fleet demo left a process running"
    for port in ready.groups():
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", int(port))) != 0, f"port {port} still open"
