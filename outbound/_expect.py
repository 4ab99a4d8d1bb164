"""``outbound.expect``: one call's expected statuses and retries, for a caller who cannot reach the request.

A vendor SDK builds its requests itself: its user cannot add ``extensions`` (httpx) or pass ``retries=`` (requests)
to one call. A scope can: calls made inside it, through the client of a service with an ``sdk`` section, take its
settings (``_sdk.py`` and ``_backends/sdk*.py`` read it; other services' clients take ``retries=`` and their
extensions directly, and ignore the scope).

    with outbound.expect(statuses=[429, 503], service="vault"):
        client.sys.read_health_status(method="GET")  # standby and sealed are answers here, not failures

``statuses``: that call's answers, neither breaker failures nor retried (as ``sdk.expected`` for a path) and, with
``sdk.final_responses``, marked so the SDK does not retry them either. ``retries``: outbound's retries for the call
(``False``/``0`` none, ``True`` the service's ``retry.total``, a number that many at most), as ``retries=`` does;
with none, a transport failure is raised as it is, so the SDK's own retries are the one layer. ``service``: only
calls to that service (``None``: every ``sdk`` service's). An inner scope replaces the outer one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from ._retry import retries_for

__all__ = ["Expectation", "current", "expect"]


@dataclass(frozen=True, slots=True)
class Expectation:
    """An ``outbound.expect`` scope's settings."""

    statuses: frozenset[int]
    retries: bool | int | None
    service: str | None


_EXPECT: ContextVar[Expectation | None] = ContextVar("outbound_expect", default=None)


def current(service: str) -> Expectation | None:
    """The scope that applies to a call to ``service`` now, if any."""
    found = _EXPECT.get()
    if found is None or (found.service is not None and found.service != service):
        return None
    return found


@contextmanager
def expect(
    *, statuses: Iterable[int] = (), retries: bool | int | None = None, service: str | None = None
) -> Iterator[Expectation]:
    """Calls made in this block through an ``sdk`` service's client take these statuses as answers and these retries.

    Raises:
        ValueError: a status outside 100-599, ``retries`` neither a bool nor a number from 0 to the maximum, or
            ``service`` not a string.
    """
    found = frozenset(statuses)
    for status in found:
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError(f"statuses must be HTTP statuses from 100 to 599, got {status!r}")
    if retries is not None:
        retries_for(retries, 0)  # raises on a wrong type or range
    if service is not None and not isinstance(service, str):
        raise ValueError(f"service must be a service's name, got {service!r}")
    expectation = Expectation(found, retries, service)
    token = _EXPECT.set(expectation)
    try:
        yield expectation
    finally:
        _EXPECT.reset(token)
