"""The example apps' ``OUTBOUND`` settings and their view logic, shared by the Django site and the Flask app.

Three upstream services on the simulator: ``catalog`` (requests), ``search`` (httpx, used from an async view) and
``billing`` (requests, critical: when its breaker opens, ``/health/outbound`` answers 503).
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import requests

import outbound

HEALTH_TOKEN = "demo-token"  # the demo's /health/outbound token; a real app reads it from its secrets
REDIS_ENV = "OUTBOUND_DEMO_REDIS"


def outbound_settings() -> dict[str, Any]:
    upstream = os.environ.get("OUTBOUND_DEMO_UPSTREAM", "http://127.0.0.1:8001/").rstrip("/") + "/"
    redis = os.environ.get(REDIS_ENV)
    return {
        "defaults": {
            "timeout": {"connect": 1.0, "read": 2.0, "total": 5.0},
            "retry": {"total": 1, "backoff_factor": 0.05, "backoff_jitter": 0.05},
            # Short enough for a demo that finishes in seconds; the defaults are fail_max 5 and 30 s. The fleet demo
            # (`run.py --redis`) closes its breaker with `outbound reset`, never by waiting it out: a minute keeps it
            # open through every phase that checks it, even on a loaded machine where a shell takes 20 s to start.
            "breaker": {"fail_max": 3, "reset_timeout": 60.0 if redis else 3.0},
        },
        "services": {
            "catalog": {"base_url": upstream + "catalog/", "probe": "/ok"},
            "search": {"base_url": upstream + "search/", "client": "httpx", "probe": "/ok"},
            "billing": {"base_url": upstream + "billing/", "critical": True, "probe": "/ok"},
        },
        "health": {"show_details": "when_authorized", "token": HEALTH_TOKEN},
        # `run.py --redis`: the workers share their breakers and stats through the demo's own redis-server.
        **({"state": {"backend": "redis", "url": redis, "sync_interval": 0.2}} if redis else {}),
    }


Result = tuple[dict[str, Any], int]


def _failure(service: str, error: Exception, started: float) -> Result:
    payload: dict[str, Any] = {
        "service": service,
        "ok": False,
        "error": type(error).__name__,
        "worker": os.getpid(),
        "ms": round((time.perf_counter() - started) * 1000, 2),
    }
    if isinstance(error, outbound.CircuitOpenError):
        payload["retry_in"] = round(error.retry_in, 2)
        return payload, 503
    payload["message"] = str(error)
    return payload, 502


def _success(service: str, status: int, started: float) -> Result:
    payload = {"service": service, "ok": status < 400, "status": status, "worker": os.getpid()}
    payload["ms"] = round((time.perf_counter() - started) * 1000, 2)
    return payload, 200 if status < 400 else 502


def call(service: str, send: Callable[[], requests.Response | httpx.Response]) -> Result:
    """Make one upstream call and describe it as JSON: what the views return."""
    started = time.perf_counter()
    try:
        return _success(service, send().status_code, started)
    except outbound.OutboundError as error:
        return _failure(service, error, started)


async def call_async(service: str, send: Callable[[], Awaitable[httpx.Response]]) -> Result:
    started = time.perf_counter()
    try:
        return _success(service, (await send()).status_code, started)
    except outbound.OutboundError as error:
        return _failure(service, error, started)


LOGGING_FORMAT = "outbound | %(levelname)s %(name)s: %(message)s"
