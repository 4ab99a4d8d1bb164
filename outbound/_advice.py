"""Settings that are valid but that an expert would question: the warnings both adapters report.

Django reports them as system checks (``outbound.W002`` ...; ``SILENCED_SYSTEM_CHECKS`` silences one), and logs them
when a server loads the project (Django runs no checks there); Flask logs them once when ``init_app`` builds the
registry. Invalid settings are errors instead (``ConfigError``, at startup). The codes are stable: the docs list them.

One warning depends on where the settings run: ``W012``, a call that can outlast gunicorn's worker timeout, is only
given while gunicorn is loading the app, whose configuration it reads (``gunicorn_worker_timeout``).
"""

from __future__ import annotations

import ipaddress
import sys
from types import FrameType
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from ._config import IDEMPOTENT_METHODS, HealthConfig, OutboundConfig, ServiceConfig
from ._retry import backoff_delay

__all__ = ["SettingWarning", "setting_warnings"]

CREDENTIAL_HEADER_WORDS = ("authorization", "cookie", "token", "secret", "api-key", "apikey", "password")
MIN_TOKEN_LENGTH = 16
# Polly's rule (.NET Http.Resilience rejects a sampling duration shorter than twice the attempt timeout): a window
# shorter than that judges only the calls that end quickly, so slow failures never count.
WINDOW_TIMEOUT_FACTOR = 2


class SettingWarning(NamedTuple):
    """One questionable setting: what is wrong, what to do about it, and its ``code`` (``"W004"``)."""

    message: str
    hint: str
    code: str


def setting_warnings(config: OutboundConfig, *, production: bool = False) -> list[SettingWarning]:
    """Every warning for valid settings ``config``, service by service, then the health settings; with
    ``production`` (Django's ``DEBUG = False``, a Flask app not in debug mode), also fault injection configured or
    allowed (``W013``).

    Called while gunicorn loads the app (Django's ``ready()``, Flask's ``init_app``), it also compares each
    service's longest call with gunicorn's worker timeout (``W012``).
    """
    worker_timeout = gunicorn_worker_timeout()
    warnings: list[SettingWarning] = []
    for service in config.services.values():
        warnings.extend(_service(service))
        if worker_timeout is not None:
            warnings.extend(_worker_timeout(service, worker_timeout))
    warnings.extend(_health(config.health))
    if production:
        warnings.extend(_chaos(config))
    return warnings


def _chaos(config: OutboundConfig) -> list[SettingWarning]:
    configured = [name for name, service in config.services.items() if service.chaos is not None]
    allowed = any(service.chaos_allowed for service in config.services.values()) or config.chaos.allow
    if not configured and not allowed:
        return []
    where = f"services {', '.join(configured)} configure chaos" if configured else "no service configures chaos"
    return [
        SettingWarning(
            f"OUTBOUND: fault injection in a production settings module (DEBUG off): {where}, and this process "
            f"{'allows' if allowed else 'does not allow'} it (OUTBOUND_CHAOS=1 or chaos.allow).",
            hint="Keep chaos sections and the allow switch in staging and test settings; a game day in production "
            "should be a decision, not a copied setting.",
            code="W013",
        )
    ]


def _where(service: ServiceConfig, key: str) -> str:
    return f"OUTBOUND[services.{service.name}.{key}]"


def _service(service: ServiceConfig) -> list[SettingWarning]:
    warnings: list[SettingWarning] = []
    timeout, retry = service.timeout, service.retry
    unbounded = [phase for phase in ("connect", "read", "write", "pool") if getattr(timeout, phase) is None]
    if unbounded:
        keys = ", ".join(f"timeout.{phase}" for phase in unbounded)
        warnings.append(
            SettingWarning(
                f"OUTBOUND[services.{service.name}]: {keys} is null, so a call can wait forever in that phase "
                "and hold a worker for as long as the upstream hangs.",
                hint="Set a number of seconds; for a genuinely slow upstream, a large one.",
                code="W002",
            )
        )
    if timeout.total is None:
        warnings.append(
            SettingWarning(
                f"{_where(service, 'timeout.total')} is null, so retries and backoff have no overall deadline.",
                hint="Set the longest time a caller should wait for this service, retries included.",
                code="W003",
            )
        )
    if retry.total > 0:
        unsafe = sorted(retry.allowed_methods - IDEMPOTENT_METHODS)
        if unsafe:
            warnings.append(
                SettingWarning(
                    f"{_where(service, 'retry.allowed_methods')} includes {', '.join(unsafe)}: a retry after a "
                    "read error or timeout may perform the action twice on the upstream.",
                    hint="Retry only idempotent methods, or make the upstream deduplicate (an idempotency key).",
                    code="W004",
                )
            )
        if retry.budget is None:
            warnings.append(
                SettingWarning(
                    f"{_where(service, 'retry.budget')} is null: when the upstream fails, every call is retried, "
                    f"multiplying its load up to {retry.total + 1}x just when it is struggling.",
                    hint="Remove the null to keep the default budget (retries add at most 20% of the traffic).",
                    code="W005",
                )
            )
    if service.verify is False and urlsplit(service.base_url).scheme == "https":
        warnings.append(
            SettingWarning(
                f"{_where(service, 'verify')} is false: TLS certificates are not checked, so anyone on the network "
                "path can impersonate the upstream.",
                hint="Remove it, or give the path of the CA bundle that signed the upstream's certificate.",
                code="W006",
            )
        )
    warnings.extend(_window(service))
    credentials = sorted(name for name in service.headers if _is_credential(name))
    if credentials and _cleartext(service.base_url):
        warnings.append(
            SettingWarning(
                f"{_where(service, 'headers')} sends {', '.join(credentials)} over plain http to a remote host.",
                hint="Use an https:// base_url for an upstream that needs credentials.",
                code="W009",
            )
        )
    return warnings


def _window(service: ServiceConfig) -> list[SettingWarning]:
    breaker = service.breaker
    if breaker.mode != "rate":
        return []
    warnings: list[SettingWarning] = []
    window = breaker.window
    attempt = longest_attempt(service)
    if window.type == "time" and attempt is not None and window.seconds < WINDOW_TIMEOUT_FACTOR * attempt:
        warnings.append(
            SettingWarning(
                f"{_where(service, 'breaker.window.seconds')} is {window.seconds:g}s, shorter than twice the longest "
                f"attempt ({attempt:g}s): slow failures end after the window has moved on, so it judges mostly the "
                "calls that end quickly.",
                hint=f"Use a window of at least {WINDOW_TIMEOUT_FACTOR * attempt:g}s, or shorter timeouts.",
                code="W010",
            )
        )
    if window.type == "count" and breaker.minimum_calls > window.size:
        warnings.append(
            SettingWarning(
                f"{_where(service, 'breaker.minimum_calls')} ({breaker.minimum_calls}) is more than the window holds "
                f"(window.size {window.size}): the rate is never judged and the breaker never opens.",
                hint="Make minimum_calls at most window.size.",
                code="W011",
            )
        )
    return warnings


def longest_attempt(service: ServiceConfig) -> float | None:
    """The longest one attempt can take: ``timeout.total``, or the sum of its phases (``None``: unbounded)."""
    timeout = service.timeout
    phases = (timeout.pool, timeout.connect, timeout.write, timeout.read)
    summed = None if None in phases else sum(phase or 0.0 for phase in phases)
    if timeout.total is None:
        return summed
    return timeout.total if summed is None else min(timeout.total, summed)


def longest_call(service: ServiceConfig) -> float | None:
    """The longest one call can take, retries and every wait included (``None``: unbounded).

    ``timeout.total`` bounds it when set; below that, each attempt may take ``longest_attempt`` and wait its full
    ``pause`` and ``rate_limit`` ``max_wait`` first, the call its ``bulkhead.max_wait`` once, and each retry the
    longer of its backoff (with all its jitter) and the ``Retry-After`` it may honour.
    """
    attempt = longest_attempt(service)
    total = service.timeout.total
    if attempt is None:
        return total
    retry = service.retry
    per_attempt = sum(stage.max_wait for stage in (service.pause, service.rate_limit) if stage is not None)
    waits = sum(
        max(backoff_delay(retry, number, lambda: 1.0), retry.retry_after_max if retry.respect_retry_after else 0.0)
        for number in range(1, retry.total + 1)
    )
    once = service.bulkhead.max_wait if service.bulkhead is not None else 0.0
    longest = (retry.total + 1) * (attempt + per_attempt) + waits + once
    return longest if total is None else min(total, longest)


def _worker_timeout(service: ServiceConfig, worker_timeout: float) -> list[SettingWarning]:
    longest = longest_call(service)
    # Unbounded calls have W002 already. A longest call equal to the timeout passes: 30 s each, by default.
    if longest is None or longest <= worker_timeout:
        return []
    return [
        SettingWarning(
            f"OUTBOUND[services.{service.name}]: one call can take up to {longest:g}s, retries and waits included, "
            f"longer than gunicorn's worker timeout ({worker_timeout:g}s): gunicorn kills a sync worker still busy "
            "in the call (WORKER TIMEOUT), and the request dies with it instead of getting outbound's error.",
            hint=f"Set timeout.total below {worker_timeout:g}s, leaving time for the rest of the request, or give "
            "gunicorn a longer --timeout (or a gthread or async worker class, whose timeout does not bound a request).",
            code="W012",
        )
    ]


def gunicorn_worker_timeout() -> float | None:
    """The worker timeout of the gunicorn loading this app, in seconds, when it bounds a request; else ``None``.

    gunicorn kills a worker that has not reported for ``timeout`` seconds; a sync worker cannot report while a
    request runs, so for it the timeout bounds each request. A threaded (``gthread``, or ``--threads`` > 1) or async
    worker keeps reporting, and a timeout of 0 disables the check: ``None`` for those, and outside gunicorn.

    The configuration is gunicorn's own, as it merged it from ``gunicorn.conf.py`` / ``-c``, ``GUNICORN_CMD_ARGS``
    and the command line: the application object loading this app holds it, in the frame of
    ``BaseApplication.wsgi()`` on the call stack while the app loads (in the master under ``--preload``, else in
    each worker). Called at any other time, this finds nothing and returns ``None``.
    """
    base = sys.modules.get("gunicorn.app.base")
    if base is None:  # gunicorn is not running this process (nor was it even imported)
        return None
    loading = base.BaseApplication.wsgi.__code__
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_code is not loading:
        frame = frame.f_back
    if frame is None:
        return None
    # Only this frame's locals are read: before Python 3.13 reading f_locals keeps a snapshot of them alive as long
    # as the frame runs, and the caller's frames may hold objects that must be freed (a test's app, say).
    cfg: Any = getattr(frame.f_locals.get("self"), "cfg", None)
    if cfg is None:
        return None
    worker = str(cfg.worker_class_str)
    sync = worker == "sync" or worker.endswith(("SyncWorker", "#sync"))
    return float(cfg.timeout) if sync and cfg.timeout > 0 else None


def _health(health: HealthConfig) -> list[SettingWarning]:
    warnings: list[SettingWarning] = []
    if health.show_details == "always":
        warnings.append(
            SettingWarning(
                'OUTBOUND[health.show_details] is "always": anyone who can reach /health/outbound sees the '
                "upstreams' addresses, breaker states and last errors.",
                hint='Use "when_authorized" (the default) with a health.token for your monitoring.',
                code="W007",
            )
        )
    if health.show_details == "when_authorized" and health.token and len(health.token) < MIN_TOKEN_LENGTH:
        warnings.append(
            SettingWarning(
                f"OUTBOUND[health.token] is shorter than {MIN_TOKEN_LENGTH} characters and easy to guess.",
                hint="Use a long random value, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'.",
                code="W008",
            )
        )
    return warnings


def _is_credential(header: str) -> bool:
    lowered = header.lower()
    return any(word in lowered for word in CREDENTIAL_HEADER_WORDS)


def _cleartext(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme != "http":
        return False
    host = parts.hostname or ""
    if host == "localhost":
        return False
    try:
        # Loopback traffic never leaves the machine.
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True
