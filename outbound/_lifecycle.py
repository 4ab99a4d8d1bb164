"""Fork safety and background threads, in one place.

After ``fork()`` the child has a copy of every object but only the thread that forked: locks another thread held
stay held, threads the parent ran do not run, sockets are shared with the parent. Every part of outbound that keeps
such state says what to do about it here, once:

- ``on_fork(owner, child=..., before=..., parent=...)``: call ``child(owner)`` in a forked child — and ``before`` /
  ``parent`` around a fork in the parent — for as long as ``owner`` lives. One ``os.register_at_fork`` hook serves
  the whole library and holds owners weakly: ``register_at_fork`` can never forget a callback, so registering one per
  registry would keep every discarded registry's hook (and whatever it refers to) for the life of the process.
- ``hold_across_fork(owner, lock, child=...)``: the common case of ``on_fork`` — the parent takes ``owner``'s lock
  (the attribute named ``lock``) just before a fork and gives it back after, so no thread is in the middle of what
  it guards when the child is made; the child then runs ``child(owner)`` (which makes a new lock).
- ``Daemon``: a background thread started when first needed (``ensure``), stopped by ``stop()``, which may end by
  itself when idle (``exit_if``: decided under its lock, so work added meanwhile either finds it running or starts a
  new one), and which after a fork is not running in the child until the child needs it.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

Hook = Callable[[Any], None]
_hooks: list[tuple[weakref.ref[Any], Hook | None, Hook | None, Hook]] = []
_hooks_lock = threading.Lock()


def on_fork(
    owner: T,
    *,
    child: Callable[[T], None],
    before: Callable[[T], None] | None = None,
    parent: Callable[[T], None] | None = None,
) -> None:
    """Around every fork while ``owner`` lives: ``before(owner)`` in the parent just before it, ``parent(owner)`` in
    the parent after it, ``child(owner)`` in the child. Hooks run in the order they were registered (``before`` in
    the reverse order, as nested locks are taken)."""
    with _hooks_lock:
        _hooks[:] = [hook for hook in _hooks if hook[0]() is not None]  # forget the owners that are gone
        _hooks.append((weakref.ref(owner), before, parent, child))


def hold_across_fork(owner: T, lock: str, *, child: Callable[[T], None]) -> None:
    """``on_fork`` with ``owner``'s lock (its attribute named ``lock``, a new one after each ``child``) taken in the
    parent around the fork: a write in progress ends first, and the next waits until the fork is done."""
    on_fork(
        owner,
        before=lambda held: getattr(held, lock).acquire(),
        parent=lambda held: getattr(held, lock).release(),
        child=child,
    )


def _live() -> list[tuple[Any, Hook | None, Hook | None, Hook]]:
    hooks = list(_hooks)
    return [(owner, before, parent, child) for ref, before, parent, child in hooks if (owner := ref()) is not None]


def _before() -> None:
    _hooks_lock.acquire()  # no registration may be half done in the child
    for owner, before, _, _ in reversed(_live()):
        if before is not None:
            before(owner)


def _after_in_parent() -> None:
    for owner, _, parent, _ in _live():
        if parent is not None:
            parent(owner)
    _hooks_lock.release()


def _after_in_child() -> None:
    global _hooks_lock
    _hooks_lock = threading.Lock()
    for owner, _, _, child in _live():
        child(owner)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before, after_in_parent=_after_in_parent, after_in_child=_after_in_child)


class Daemon:
    """One background thread of the library's (see the module's docstring).

    ``target(stop)`` is the thread's body: it runs until ``stop`` is set, or until it decides it has nothing to do
    (``exit_if``), and returns.
    """

    def __init__(self, name: str, target: Callable[[threading.Event], None]) -> None:
        self.name = name
        self._target = target
        self._new_process()
        on_fork(self, child=Daemon._new_process)

    def _new_process(self) -> None:
        self.lock = threading.Lock()  # decisions to start and to end are made under it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.running = False

    def ensure(self) -> None:
        """Start the thread unless it runs: cheap when it does (one attribute read)."""
        if self.running:
            return
        with self.lock:
            if self.running:
                return
            self.running = True
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, args=(self._stop,), name=self.name, daemon=True)
            self._thread.start()

    def exit_if(self, idle: Callable[[], bool]) -> bool:
        """For the thread's body: end when ``idle()`` says so, as one decision with ``ensure``'s (``True``: return
        now)."""
        with self.lock:
            if idle():
                self.running = False
                return True
            return False

    def stop(self, timeout: float | None = None) -> None:
        """Ask the thread to end, and wait up to ``timeout`` seconds for it; an ``ensure`` after this starts a new
        one, whether or not the old one has ended yet."""
        with self.lock:
            self._stop.set()
            self.running = False
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self, stop: threading.Event) -> None:
        try:
            self._target(stop)
        finally:
            with self.lock:
                if self._stop is stop:  # not a thread an ensure() after a stop() has replaced
                    self.running = False
