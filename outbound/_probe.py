"""``outbound probe``: one request to each service's probe path, all at once, that leaves the services alone.

A probe asks "can this host reach the upstream right now?", so it must not be what it measures: no retries (a
failure is the answer), no breaker (an open breaker would answer for the upstream), and no change to the service's
breaker or stats (a probe run during an incident must not close, open or count anything). Each probe therefore runs
through a throwaway ``Service`` built from the same settings — the same TLS, proxy, headers and credentials — with
retries off and a deadline of connect + read, and every service is probed in its own thread.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import sys
import time
from collections.abc import Sequence

import httpx
import requests

from ._config import RetryConfig, ServiceConfig, Timeouts
from ._errors import OutboundError, redact_url
from ._service import Service
from .health import ProbeResult

# When a service disables its connect or read timeout, a probe still ends: it answers a person at a terminal.
UNBOUNDED_PHASE_SECONDS = 30.0


def probe_all(services: Sequence[Service]) -> list[ProbeResult]:
    """Probe every service concurrently; results in the order given."""
    if not services:
        return []
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(services), thread_name_prefix="outbound-probe") as pool:
        return list(pool.map(probe, services))


def probe(of: Service) -> ProbeResult:
    """One GET to the service's ``probe`` path (a skipped result when it has none), through a client of its own that
    is built as the service's is (its settings, and the transport a test gave it)."""
    config = of.config
    if config.probe is None:
        return ProbeResult(service=config.name, critical=config.critical, url=None, ok=None)
    service = Service(_probe_config(config), transport=of.transport)
    started = time.perf_counter()
    url = ""
    try:
        if config.client == "requests":
            session = service.session()
            url = session.join(config.probe)
            status = session.get(url, allow_redirects=False).status_code
        else:
            client = service.client()
            url = str(client.build_request("GET", config.probe).url)
            status = client.get(config.probe).status_code
    except _errors(config.client) as error:
        return ProbeResult(
            service=config.name,
            critical=config.critical,
            url=redact_url(url) if url else None,
            ok=False,
            latency_ms=round((time.perf_counter() - started) * 1000, 1),
            error=f"{type(error).__name__}: {error}",
        )
    finally:
        service.close()
    return ProbeResult(
        service=config.name,
        critical=config.critical,
        url=redact_url(url),
        ok=status < 400,
        status=status,
        latency_ms=round((time.perf_counter() - started) * 1000, 1),
    )


def _errors(client: str) -> tuple[type[Exception], ...]:
    # What a probe reports as its answer. httpx2's own errors are not httpx's; it was loaded by the client the probe
    # made (or the probe failed before, with outbound's error).
    errors: tuple[type[Exception], ...] = (OutboundError, requests.RequestException, httpx.HTTPError)
    httpx2 = sys.modules.get("httpx2") if client == "httpx2" else None
    return (*errors, httpx2.HTTPError) if httpx2 is not None else errors


def _probe_config(config: ServiceConfig) -> ServiceConfig:
    timeout = config.timeout
    connect = timeout.connect if timeout.connect is not None else UNBOUNDED_PHASE_SECONDS
    read = timeout.read if timeout.read is not None else UNBOUNDED_PHASE_SECONDS
    bounded = Timeouts(connect=connect, read=read, write=timeout.write, pool=timeout.pool, total=connect + read)
    return dataclasses.replace(config, timeout=bounded, retry=RetryConfig(total=0, budget=None))
