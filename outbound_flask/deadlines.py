"""Deadlines from the inbound request: ``Outbound(app, deadlines=True)`` and ``@default_deadline(seconds)``.

With ``deadlines=True`` each request runs inside ``outbound.deadline(budget)``, from a ``before_request`` function
to a ``teardown_request`` function, so the request's before-request functions registered after ``init_app``, its
view, error handlers and after-request functions all share one budget. The budget comes from the first of the
settings' ``deadline.headers`` the request carries well formed (``grpc-timeout``, ``X-Request-Timeout``,
``x-envoy-expected-rq-timeout-ms``), cut to ``deadline.max``; else from the view's ``@default_deadline(seconds)``;
else from ``deadline.default``; else there is none.

Both functions run in the request's context, where Flask sets its own context variables, so the deadline is set
and reset in that one context. An ``async def`` view runs through asgiref's ``async_to_sync``, which runs it in a
copy of that context: it sees the deadline too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import ExitStack
from typing import TypeVar

from flask import Flask, current_app, request

import outbound
from outbound._criticality import request_finished, request_started
from outbound._deadline import mark_view_default, view_default

from ._state import registry_for

logger = logging.getLogger(__name__)

ENVIRON_KEY = "outbound.deadline"  # the request's scope, kept in its WSGI environ from the first hook to the last

V = TypeVar("V")

_warned: set[str] = set()
_warned_lock = threading.Lock()


def default_deadline(seconds: float) -> Callable[[V], V]:
    """Decorate a view (a function, or a class-based view's class) with the budget of requests that send none.

    A budget the request sends (within ``deadline.max``) still wins; the view's default wins over the settings'
    ``deadline.default``. The view is returned unchanged, with the default as an attribute, so the decorator may
    sit above or below ``@app.route``. It takes effect on apps set up with ``Outbound(app, deadlines=True)``.

        @app.get("/search")
        @default_deadline(2.5)
        def search(): ...

    Raises:
        ValueError: ``seconds`` is not a finite number > 0.
    """
    return mark_view_default(seconds)


def install(app: Flask) -> None:
    """Run each of ``app``'s requests inside ``outbound.deadline`` (what ``Outbound(deadlines=True)`` does)."""
    app.before_request(_start)
    app.teardown_request(_finish)


CRITICALITY_KEY = "outbound.criticality"  # the request's default criticality, from the first hook to the last


def install_criticality(app: Flask) -> None:
    """Make the calls of ``app``'s requests critical by default (``outbound.criticality``; others are sheddable)."""
    app.before_request(_critical)
    app.teardown_request(_critical_ended)


def _critical() -> None:
    request.environ[CRITICALITY_KEY] = request_started()


def _critical_ended(error: BaseException | None) -> None:
    token = request.environ.pop(CRITICALITY_KEY, None)
    if token is not None:
        request_finished(token)


def _start() -> None:
    config = registry_for(current_app).config.deadline
    budget, malformed = outbound.budget_from(request.headers.get, config, default=_view_default)
    if malformed is not None:
        _warn_once(malformed)
    if budget is not None:
        scope = ExitStack()
        scope.enter_context(outbound.deadline(budget))
        request.environ[ENVIRON_KEY] = scope


def _finish(error: BaseException | None) -> None:
    scope = request.environ.pop(ENVIRON_KEY, None)
    if isinstance(scope, ExitStack):
        scope.close()


def _view_default() -> float | None:
    return view_default(current_app.view_functions.get(request.endpoint) if request.endpoint else None)


def _warn_once(header: str) -> None:
    with _warned_lock:
        if header in _warned:
            return
        _warned.add(header)
    # The value is the client's and may be anything, so it is never logged; the name tells what to look for.
    logger.warning("ignored a malformed %s header of an inbound request (logged once per process)", header)
