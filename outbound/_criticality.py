"""Criticality: ``outbound.criticality("critical" | "sheddable")``, which calls adaptive protection sheds first.

When the upstream is short of capacity, the adaptive concurrency limit (``_adaptive.py``) and client-side throttling
(``_throttle.py``) refuse *sheddable* calls before *critical* ones: a sheddable call never waits for room and never
takes the last quarter of the limit, and it is throttled at ``k`` while a critical call is throttled only at ``2k``.

The level is a context variable, so it follows the work of one inbound request as ``outbound.deadline`` does (into
asyncio tasks, ``contextvars.copy_context().run`` and asgiref's bridges). Its default depends on where the code
runs: an inbound request of Django (``outbound_django``'s app, through the ``request_started`` and
``request_finished`` signals) or Flask (``Outbound(app)``, through its request hooks) is **critical**; code outside
a request — a Celery task, a management command, a cron script — is **sheddable**. A scope overrides either::

    with outbound.criticality("sheddable"):   # a view's prefetch that may be dropped
        client.get("recommendations")
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import Literal

from ._scope import Scope

Criticality = Literal["critical", "sheddable"]
LEVELS: tuple[Criticality, ...] = ("critical", "sheddable")

_LEVEL: ContextVar[Criticality | None] = ContextVar("outbound_criticality", default=None)


class criticality(Scope):  # lower case: used like a function, `with outbound.criticality("sheddable"):`
    """A scope whose outbound calls have criticality ``level``: ``"critical"`` or ``"sheddable"``.

    Inside, the adaptive ``concurrency`` limit and ``throttle`` refuse sheddable calls first. Scopes nest (the inner
    one wins until it is left). Outside any scope, a call made while serving a Django or Flask request is critical
    and any other call sheddable.

    Raises:
        ValueError: ``level`` is neither ``"critical"`` nor ``"sheddable"``.
    """

    __slots__ = ("level",)
    _var = _LEVEL

    def __init__(self, level: Criticality) -> None:
        if level not in LEVELS:
            raise ValueError(f"criticality must be 'critical' or 'sheddable', got {level!r}")
        self.level: Criticality = level
        super().__init__()

    def _entered(self) -> Criticality:
        return self.level

    def __repr__(self) -> str:
        return f"outbound.criticality({self.level!r})"


def current() -> Criticality:
    """The criticality of a call made now: the innermost scope's, else ``"sheddable"`` (no request is served)."""
    return _LEVEL.get() or "sheddable"


def sheddable() -> bool:
    """Whether a call made now may be shed first."""
    return _LEVEL.get() != "critical"


def request_started() -> Token[Criticality | None] | None:
    """An inbound request starts: its calls are critical unless a scope says otherwise. The token for
    ``request_finished`` (``None`` when a scope already set a level: it stands)."""
    if _LEVEL.get() is not None:
        return None
    return _LEVEL.set("critical")


def request_finished(token: Token[Criticality | None] | None = None) -> None:
    """The inbound request ended: its default no longer holds (``token``: the one ``request_started`` gave, when the
    caller kept it; without it, a ``"critical"`` default set in this context is dropped)."""
    if token is None:
        if _LEVEL.get() == "critical":
            _LEVEL.set(None)
        return
    try:
        _LEVEL.reset(token)
    except ValueError:  # made in another context: drop the default in this one
        _LEVEL.set(None)
