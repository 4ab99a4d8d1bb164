"""The apps of measurement 9 (an app whose upstream browns out): what the Flask app and the Django site share.

Each app has two routes: ``/local``, which needs no upstream (it JSON-encodes a small dict), and ``/upstream``,
which makes one GET to the test upstream's mode-governed path. The server's environment chooses the client that
``/upstream`` uses (``BROWNOUT_CLIENT``) and where the upstream is (``BROWNOUT_UPSTREAM``):

- ``plain``: a ``requests.Session`` tuned by hand: a bounded blocking pool, no retries, ``timeout=(0.5, 0.5)``;
- ``recipe``: the textbook recipe: the same session with ``HTTPAdapter(max_retries=Retry(total=1, ...))`` and
  every call inside one module-level ``pybreaker.CircuitBreaker(fail_max=5)``'s ``.call()``;
- ``outbound``: the framework's outbound integration with the same settings: read timeout 0.5 s, one retry,
  breaker ``fail_max`` 5; and every capability of round 3 configured but off (row 17 holds it to costing nothing).

The three get the same timeouts, pool size, retry count, backoff factor, breaker threshold and reset timeout, so the
only difference left is how each client behaves while the upstream is slow or gone. ``/upstream`` answers 200 when
the upstream did, 503 when a breaker refused the call, and 502 for any other failure.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import pybreaker
import requests
import requests.adapters
from urllib3.util.retry import Retry

import outbound

CLIENT_ENV = "BROWNOUT_CLIENT"
UPSTREAM_ENV = "BROWNOUT_UPSTREAM"
CLIENTS = ("plain", "recipe", "outbound")

# Any path tests/upstream.py gives no fixed behaviour follows the mode the benchmark sets (healthy, slow, refuse).
UPSTREAM_PATH = "api/data"
SERVICE = "upstream"  # the outbound service /upstream calls (requests)
ASYNC_SERVICE = "upstream_async"  # the same upstream through httpx, for the ASGI variant's async view

# The settings all three clients share. The pool holds 20 connections (outbound's default), more than a worker's 4
# threads can use. The breaker waits 5 s before a trial call: shorter than the measured window, so the figures
# include the trials a long brownout would see (outbound's default of 30 s would hide them).
CONNECT_TIMEOUT = 0.5
READ_TIMEOUT = 0.5
RETRIES = 1
BACKOFF_FACTOR = 0.25
FAIL_MAX = 5
RESET_TIMEOUT = 5.0
POOL_SIZE = 20
RETRY_STATUSES = (502, 503, 504)

OK, BAD_GATEWAY, UNAVAILABLE = 200, 502, 503

# /local's work: encode a small document, as a route that reads nothing from elsewhere would.
_DOCUMENT: dict[str, Any] = {
    "items": [{"id": index, "name": f"item {index}", "price": index * 1.25} for index in range(20)],
    "page": 1,
}


def client_kind() -> str:
    """The client ``/upstream`` uses in this server, from ``BROWNOUT_CLIENT``.

    Raises:
        RuntimeError: the variable is missing or names no known client.
    """
    kind = os.environ.get(CLIENT_ENV, "")
    if kind not in CLIENTS:
        raise RuntimeError(f"set {CLIENT_ENV} to one of {', '.join(CLIENTS)} (got {kind!r})")
    return kind


def upstream_url() -> str:
    """The test upstream's base URL, from ``BROWNOUT_UPSTREAM``, with a trailing slash.

    Raises:
        RuntimeError: the variable is not set.
    """
    url = os.environ.get(UPSTREAM_ENV, "")
    if not url:
        raise RuntimeError(f"set {UPSTREAM_ENV} to the test upstream's URL")
    return url.rstrip("/") + "/"


def local_body() -> bytes:
    """What ``/local`` answers: the document above, with the worker's pid (the benchmark's readiness check waits
    until every worker process has answered)."""
    return json.dumps({**_DOCUMENT, "pid": os.getpid()}).encode()


def status_body(status: int) -> bytes:
    return json.dumps({"status": status, "pid": os.getpid()}).encode()


def outbound_settings(base_url: str) -> dict[str, Any]:
    """``OUTBOUND`` for the ``outbound`` variant: the other clients' settings in outbound's terms."""
    service = {
        "base_url": base_url,
        "timeout": {"connect": CONNECT_TIMEOUT, "read": READ_TIMEOUT},
        "pool": {"max_connections": POOL_SIZE, "max_keepalive": POOL_SIZE},
        "retry": {"total": RETRIES, "backoff_factor": BACKOFF_FACTOR, "status_forcelist": list(RETRY_STATUSES)},
        "breaker": {"fail_max": FAIL_MAX, "reset_timeout": RESET_TIMEOUT},
    }
    # Every capability of round 3 is configured, and off (benchmarks/_stages.py): an app pays nothing for what it
    # leaves off, and row 17 holds it to that under a real server.
    from benchmarks._stages import every_capability_off, merge

    off, top = every_capability_off()
    settings: dict[str, Any] = {"services": {SERVICE: service, ASYNC_SERVICE: {**service, "client": "httpx"}}}
    for configured in settings["services"].values():
        merge(configured, off)
    merge(settings, top)
    return settings


def _session(retries: Retry | int) -> requests.Session:
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=POOL_SIZE, pool_block=True, max_retries=retries)
    session.mount("http://", adapter)
    return session


def upstream_caller(kind: str, base_url: str, outbound_session: Callable[[], requests.Session]) -> Callable[[], int]:
    """The function ``/upstream`` calls for client ``kind``; it returns the status ``/upstream`` answers.

    ``outbound_session`` returns the framework's managed session (``ext.session(SERVICE)`` in Flask,
    ``outbound_django.session(SERVICE)`` in Django), looked up on each call as application code would.
    """
    url = base_url + UPSTREAM_PATH
    timeout = (CONNECT_TIMEOUT, READ_TIMEOUT)
    if kind == "plain":
        plain = _session(0)

        def call_plain() -> int:
            try:
                response = plain.get(url, timeout=timeout)
            except requests.RequestException:
                return BAD_GATEWAY
            return OK if response.ok else BAD_GATEWAY

        return call_plain

    if kind == "recipe":
        # One breaker and one session per worker process, created at import as the recipe's examples do; urllib3's
        # Retry also retries connect errors and read timeouts of a GET, as outbound does.
        retry = Retry(total=RETRIES, backoff_factor=BACKOFF_FACTOR, status_forcelist=RETRY_STATUSES)
        recipe = _session(retry)
        breaker = pybreaker.CircuitBreaker(fail_max=FAIL_MAX, reset_timeout=RESET_TIMEOUT)

        def fetch() -> requests.Response:
            response = recipe.get(url, timeout=timeout)
            response.raise_for_status()  # a 5xx must count as a failure, as it does for outbound's breaker
            return response

        def call_recipe() -> int:
            try:
                breaker.call(fetch)
            except pybreaker.CircuitBreakerError:
                return UNAVAILABLE
            except requests.RequestException:
                return BAD_GATEWAY
            return OK

        return call_recipe

    def call_outbound() -> int:
        try:
            response = outbound_session().get(UPSTREAM_PATH)
        except outbound.CircuitOpenError:
            return UNAVAILABLE
        except outbound.OutboundError:
            return BAD_GATEWAY
        return OK if response.ok else BAD_GATEWAY

    return call_outbound


async def call_async(client: Callable[[], outbound.ServiceAsyncClient]) -> int:
    """``/upstream`` of the ASGI variant: one GET through the event loop's managed ``httpx.AsyncClient``."""
    try:
        response = await client().get(UPSTREAM_PATH)
    except outbound.CircuitOpenError:
        return UNAVAILABLE
    except outbound.OutboundError:
        return BAD_GATEWAY
    return OK if response.is_success else BAD_GATEWAY
