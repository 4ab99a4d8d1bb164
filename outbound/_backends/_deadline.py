"""Holding the call's total deadline *inside* an attempt, however the upstream trickles.

Per-phase timeouts bound each read, not the sum of reads: an upstream that sends one byte every 0.3 s never trips a
0.5 s read timeout and can hold a caller for as long as it likes. So, while an attempt runs:

- httpx and httpx2 (sync, asyncio and trio): the transport's httpcore pool reads and writes through
  ``_httpcore.DeadlineBackend``, whose streams cut every read's and write's timeout to what is left of the deadline
  (``_attempt.ATTEMPT`` holds it for the attempt), so the read that would cross it times out at the deadline; the
  first write of an attempt is also where its send gates are asked (``_attempt.py``);
- requests: urllib3 sets one timeout on the socket per phase, so a ``Watchdog`` thread (one per process, asleep
  while no attempt runs) shuts down the socket of an attempt still running at its deadline; the blocked read then
  returns at once, the connection is discarded, and the attempt reports a deadline timeout.

Only the attempt's own reads are bounded this way: the body of a response streamed to the caller
(``stream=True``) is read after the attempt returned, under the per-read timeout alone.
"""

from __future__ import annotations

import _socket
import contextlib
import math
import socket
import threading
import time
from typing import Any

from .._lifecycle import Daemon, on_fork
from ._attempt import DEADLINE_MESSAGE

__all__ = ["DEADLINE_MESSAGE", "WATCHDOG", "Watch"]


class Watch:
    """One attempt under the watchdog: its deadline, the connection it took, and whether the deadline struck."""

    __slots__ = ("conn", "deadline", "fired", "shut")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.conn: Any = None
        self.fired = False
        self.shut = False


class Watchdog:
    """One daemon thread per process that shuts down the socket of an attempt still running at its deadline.

    Watching costs a dict insert and removal, and wakes nothing: the thread sleeps until the earliest deadline it
    knows of and is woken only by a watch that ends sooner than that. Calls of a service start one after another with
    the same total, so their deadlines come in order and a busy process wakes it about once per deadline's length,
    not once per call (waking a thread per call costs a GIL handover on every request). A deadline that struck before
    its connection was made is looked at again every ``POLL`` seconds; with nothing to watch the thread exits after
    ``IDLE_EXIT`` seconds.
    """

    POLL = 0.02  # the most a deadline can be overrun by, beyond the read that notices the shutdown
    IDLE_EXIT = 5.0

    def __init__(self) -> None:
        self._daemon = Daemon("outbound-deadline-watchdog", self._run)
        self.reset_after_fork()
        on_fork(self, child=Watchdog.reset_after_fork)

    def reset_after_fork(self) -> None:
        # The parent's thread does not exist here, and its attempts are not ours.
        self._watches: dict[int, Watch] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._next = math.inf  # the deadline the thread sleeps until; infinity while there is none
        self._added = 0  # watches made so far: the thread scans again when one came while it scanned

    def watch(self, deadline: float) -> Watch:
        watch = Watch(deadline)
        self._watches[id(watch)] = watch
        self._added += 1
        if deadline < self._next or not self._daemon.running:
            self._kick()
        return watch

    def forget(self, watch: Watch) -> None:
        self._watches.pop(id(watch), None)

    def _kick(self) -> None:
        with self._lock:
            self._next = -math.inf  # scanning: no other watch needs to wake it
            self._wake.set()
        self._daemon.ensure()

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            added = self._added
            now = time.monotonic()
            following = math.inf
            for watch in list(self._watches.values()):
                if watch.deadline <= now:
                    self._strike(watch)
                    if not watch.shut:
                        following = min(following, now + self.POLL)  # not connected yet: look again soon
                else:
                    following = min(following, watch.deadline)
            with self._lock:
                if self._added != added:
                    continue  # a watch came while this scan ran: it may end sooner than what the scan found
                self._next = following
                self._wake.clear()
            if following != math.inf:
                self._wake.wait(max(0.0, following - time.monotonic()))
            elif not self._wake.wait(self.IDLE_EXIT) and self._daemon.exit_if(self._idle):
                return  # nothing to strike for a while: the next watch starts a new thread

    def _idle(self) -> bool:
        if self._wake.is_set() or self._watches:
            return False
        self._next = math.inf
        return True

    @staticmethod
    def _strike(watch: Watch) -> None:
        watch.fired = True
        sock = getattr(watch.conn, "sock", None)
        if sock is None or watch.shut:
            return  # not connected yet (the connect timeout is cut to the deadline): look again next time
        watch.shut = True
        # The base class's shutdown, also for an SSLSocket (whose own shutdown drops its TLS object under the
        # reading thread): the blocked read returns at once; the connection is then discarded, not reused.
        with contextlib.suppress(OSError):
            _socket.socket.shutdown(sock, socket.SHUT_RDWR)


WATCHDOG = Watchdog()
