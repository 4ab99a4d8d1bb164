"""Two opt-in middleware: ``DeadlineMiddleware`` (a budget shared by each request's outbound calls) and
``UpstreamErrorMiddleware`` (a failed or refused outbound call answered as a gateway would: 502, 503, 504).

``DeadlineMiddleware``: every request's outbound calls share the budget the caller sent, or the view's default.
Add it to ``MIDDLEWARE`` as high as you like the deadline to start (its clock starts when the request reaches it)::

    MIDDLEWARE = ["outbound_django.middleware.DeadlineMiddleware", ...]

The budget comes from the first of the settings' ``deadline.headers`` the request carries well formed (``grpc-timeout``,
``X-Request-Timeout``, ``x-envoy-expected-rq-timeout-ms``), cut to ``deadline.max``; else from the view's
``@default_deadline(seconds)``; else from ``deadline.default``. The rest of the request — the middleware below this
one and the view — then runs inside ``outbound.deadline(budget)``. Sync and async views alike: asgiref's bridges
carry the deadline into the thread or event loop the view runs on.

``UpstreamErrorMiddleware``: a view that lets an outbound refusal or upstream failure escape gets the core's answer
(``outbound.error_answer``: 503 with ``Retry-After`` for a refusal, 504 for a timeout, 502 for a failed
connection, a small JSON body) instead of Django's 500 page. Its place in ``MIDDLEWARE`` does not matter.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.urls import Resolver404, resolve

import outbound
from outbound._criticality import request_finished, request_started
from outbound._deadline import view_default

from .conf import get_registry

logger = logging.getLogger(__name__)

V = TypeVar("V")

_warned: set[str] = set()
_warned_lock = threading.Lock()


class DeadlineMiddleware:
    """Run the rest of each request inside ``outbound.deadline(budget)`` when it has a budget (see the module).

    A malformed budget header is ignored, and logged once per header name per process at WARNING (logger
    ``outbound_django.middleware``), without its value. While ``settings.OUTBOUND`` is invalid requests run without
    a deadline: the outbound accessors raise the ``ConfigError`` where a call is made.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self._acall(request)
        budget = _budget(request)
        if budget is None:
            return self.get_response(request)
        with outbound.deadline(budget):
            return self.get_response(request)

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]] = self.get_response
        budget = _budget(request)
        if budget is None:
            return await get_response(request)
        async with outbound.deadline(budget):
            return await get_response(request)


class CriticalityMiddleware:
    """Make each request's outbound calls critical by default (``outbound.criticality``; code outside a request is
    sheddable). Under WSGI the app does this without it (through Django's ``request_started`` signal); under ASGI
    Django runs that signal's receivers outside the request's context, so add this middleware there::

        MIDDLEWARE = ["outbound_django.middleware.CriticalityMiddleware", ...]
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self._acall(request)
        token = request_started()
        try:
            return self.get_response(request)
        finally:
            if token is not None:
                request_finished(token)

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]] = self.get_response
        token = request_started()
        try:
            return await get_response(request)
        finally:
            if token is not None:
                request_finished(token)


def _budget(request: HttpRequest) -> float | None:
    try:
        config = get_registry().config.deadline
    except outbound.ConfigError:
        return None
    budget, malformed = outbound.budget_from(request.headers, config, default=lambda: _view_default(request))
    if malformed is not None:
        _warn_once(malformed)
    return budget


def _view_default(request: HttpRequest) -> float | None:
    # Django resolves the view only after the middleware has run, so it is looked up here too (only for requests
    # that send no budget), following a urlconf an earlier middleware set (request.urlconf).
    try:
        match = resolve(request.path_info, urlconf=getattr(request, "urlconf", None))
    except Resolver404:
        return None
    return view_default(match.func)


def _warn_once(header: str) -> None:
    with _warned_lock:
        if header in _warned:
            return
        _warned.add(header)
    # The value is the client's and may be anything, so it is never logged; the name tells what to look for.
    logger.warning("ignored a malformed %s header of an inbound request (logged once per process)", header)


class UpstreamErrorMiddleware:
    """Answer a view's ``RejectedError``, ``PoolTimeoutError`` or ``TransportFailure`` with ``outbound.error_answer``.

    Through ``process_exception``, so it sees what the view raises, sync or async, and nothing else: an error raised
    in another middleware or while a streaming response is sent still reaches Django's own handling, as does every
    other exception (a plain ``CallError`` — TLS, proxy — included). ``django.request`` logs the answer as it logs
    any 5xx response ("Service Unavailable: /path"), without the traceback; ``outbound.call`` has already logged the
    failed call itself.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        # Sync or async alike: the response (or its coroutine) passes through; Django calls process_exception.
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        """The core's answer for ``exception``, or ``None`` to let Django handle it."""
        answer = outbound.error_answer(exception)
        if answer is None:
            return None
        return HttpResponse(answer.body, status=answer.status, headers=answer.headers)
