"""_lifecycle: the one fork hook (held weakly, run in order, in a real forked child) and the Daemon's starts and
ends (started on need, ended by stop() or when idle, absent in a forked child until needed there)."""

from __future__ import annotations

import gc
import os
import threading
import time
from typing import Any

import pytest

from outbound import _lifecycle
from outbound._lifecycle import Daemon, on_fork
from tests.upstream import wait_until


class Owner:
    def __init__(self, log: list[str], name: str) -> None:
        self.log = log
        self.name = name

    def child(self) -> None:
        self.log.append(f"child {self.name}")

    def before(self) -> None:
        self.log.append(f"before {self.name}")

    def parent(self) -> None:
        self.log.append(f"parent {self.name}")


def _in_child(work: Any) -> int:
    """Fork, run ``work()`` in the child, and return its exit status (0: it held)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child's coverage is not collected)
        code = 1
        try:
            code = 0 if work() else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_hooks_run_in_order_around_a_real_fork() -> None:
    log: list[str] = []
    first, second = Owner(log, "1"), Owner(log, "2")
    for owner in (first, second):
        on_fork(owner, child=Owner.child, before=Owner.before, parent=Owner.parent)
    assert _in_child(lambda: log[-2:] == ["child 1", "child 2"]) == 0
    assert log[-4:] == ["before 2", "before 1", "parent 1", "parent 2"]  # before: nested, the last one first


def test_an_owner_is_held_weakly_and_its_hook_forgotten() -> None:
    log: list[str] = []
    owner = Owner(log, "gone")
    on_fork(owner, child=Owner.child)
    del owner
    gc.collect()
    kept = Owner(log, "kept")
    on_fork(kept, child=Owner.child)  # a registration prunes the dead ones
    owners = [ref() for ref, *_ in _lifecycle._hooks]
    assert all(owner is not None for owner in owners)
    assert kept in owners


def test_a_daemon_starts_on_need_and_ends_on_stop() -> None:
    ran = threading.Event()

    def body(stop: threading.Event) -> None:
        ran.set()
        stop.wait(10)

    daemon = Daemon("test-daemon", body)
    assert not daemon.running
    daemon.ensure()
    daemon.ensure()  # running: no second thread
    assert ran.wait(2)
    assert [t.name for t in threading.enumerate()].count("test-daemon") == 1
    daemon.stop(timeout=2)
    assert not daemon.running
    assert "test-daemon" not in [t.name for t in threading.enumerate()]


def test_a_daemon_that_ends_when_idle_never_strands_new_work() -> None:
    # The body ends when there is no work, decided under the daemon's lock: work added at any moment either finds
    # it running or starts a new one, so every item is handled.
    work: list[int] = []
    done: list[int] = []
    lock = threading.Lock()

    def body(stop: threading.Event) -> None:
        while not stop.is_set():
            with lock:
                taken = work[:]
                work.clear()
            done.extend(taken)
            if daemon.exit_if(lambda: not work):
                return

    daemon = Daemon("test-idle", body)
    for item in range(200):
        with lock:
            work.append(item)
        daemon.ensure()
        if item % 20 == 0:
            time.sleep(0.001)
    assert wait_until(lambda: len(done) == 200, timeout=5)
    daemon.stop(timeout=2)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX")
def test_a_forked_child_has_no_thread_until_it_needs_one() -> None:
    started: list[int] = []

    def body(stop: threading.Event) -> None:
        started.append(os.getpid())
        stop.wait(10)

    daemon = Daemon("test-fork", body)
    daemon.ensure()
    assert wait_until(lambda: started, timeout=2)

    def child() -> bool:
        if daemon.running:
            return False  # the parent's thread does not run here
        daemon.ensure()
        return wait_until(lambda: started[-1] == os.getpid(), timeout=2)

    assert _in_child(child) == 0
    daemon.stop(timeout=2)
