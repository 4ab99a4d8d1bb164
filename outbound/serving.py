"""Serving ``/health/outbound``: who sees the details, the JSON or the page, and the HTTP status.

``respond`` answers an HTTP health request for either framework (the Django and Flask views only translate it),
with the report's JSON or, for a browser, the status page (``_page``). The access rule is ``show_details`` (the
settings, a bearer token, the framework's own verdict); a report is 503 only when it is ``down``.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from . import _page
from ._config import HealthConfig
from .health import HealthReport

__all__ = ["HealthResponse", "Reporting", "bearer_token_matches", "http_status", "respond", "show_details"]

logger = logging.getLogger("outbound.health")


class Reporting(Protocol):
    """What ``respond`` needs of a registry."""

    @property
    def health_config(self) -> HealthConfig: ...

    def report(self, *, service: str | None = None, history: bool = False) -> HealthReport: ...


@dataclass(frozen=True, slots=True)
class HealthResponse:
    """An HTTP answer to a health request, for a framework to send as is."""

    status: int
    headers: Mapping[str, str]
    body: bytes


def bearer_token_matches(authorization: str | None, token: str | None) -> bool:
    """Whether an ``Authorization: Bearer <token>`` header carries ``token`` (compared in constant time)."""
    if not token or not authorization:
        return False
    scheme, _, presented = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(presented.strip().encode(), token.encode())


def show_details(config: HealthConfig, *, authorization: str | None, authorized: bool = False) -> bool:
    """Whether an HTTP health request gets the full report.

    Args:
        config: the ``health`` settings.
        authorization: the request's ``Authorization`` header, if any.
        authorized: the framework's own verdict (a Django staff user, a Flask app's callable).
    """
    if config.show_details == "always":
        return True
    if config.show_details == "never":
        return False
    return authorized or bearer_token_matches(authorization, config.token)


def http_status(report: HealthReport | Mapping[str, Any]) -> int:
    """503 only when the report is ``down``; a degraded dependency keeps this instance in rotation."""
    status = report.status if isinstance(report, HealthReport) else report["status"]
    return 503 if status == "down" else 200


def respond(
    registry: Reporting,
    *,
    authorization: str | None,
    authorized: Callable[[], bool] | None = None,
    sign_in: str | None = None,
    accept: str | None = None,
    format: str | None = None,
    history: str | None = None,
) -> HealthResponse:
    """Answer an HTTP request for ``/health/outbound``: the JSON report, or the status page for a browser; HTTP 503
    only when the report is ``down``.

    The level of detail follows ``health.show_details``; under ``"when_authorized"`` a request with the bearer
    token, or one that ``authorized()`` accepts, gets the full report. ``authorized`` is only called when the token
    did not already decide (it may cost a session lookup), and an exception from it is logged and counts as no.
    Every answer is ``Cache-Control: no-store``: a cached ``ok`` would hide an outage, and a cached detailed report
    could reach someone without the token.

    Args:
        registry: the registry to report on.
        authorization: the request's ``Authorization`` header, if any.
        authorized: the framework's own permission check (a Django staff user, a Flask app's callable).
        sign_in: what ``authorized`` accepts, in words for a person ("sign in as a staff user"): the page shown
            without details tells it, and the bearer token header when ``health.token`` is set (never the token).
        accept: the request's ``Accept`` header. The page (HTML, with the same details and status code) only when
            it prefers ``text/html`` to ``application/json``, as a browser's does; without it, with ``*/*`` and
            everything else the JSON, byte for byte what it was before the page existed. Both say ``Vary: Accept``.
        format: the ``format`` query parameter: ``"json"`` or ``"html"`` overrides ``accept``.
        history: the ``history`` query parameter: ``"1"`` (or ``"true"``) adds each service's recent history to the
            JSON, when ``health.history`` keeps one; off by default, so that probes stay small. The page always
            shows the history it has (as sparklines).
    """
    config = registry.health_config
    details = show_details(config, authorization=authorization)
    if not details and config.show_details == "when_authorized" and authorized is not None:
        details = _ask(authorized)
    html = _page.wants_html(accept, format=format)
    asked = (history or "").strip().lower() in ("1", "true", "yes")
    # Asked of the registry only when it can be there: a Reporting written before histories takes no such argument.
    wanted = details and config.history is not None and (html or asked)
    report = registry.report(history=True) if wanted else registry.report()
    if html:
        data = report.as_dict(details=details)
        # The ways to the details that can work here: none under "never" (nor under "always", where none is needed).
        asks = config.show_details == "when_authorized"
        page = _page.render_page(
            data,
            sign_in=sign_in if asks and authorized is not None else None,
            token=asks and config.token is not None,
        )
        return HealthResponse(http_status(report), _page.page_headers(), page.encode())
    # The same text as json.dumps(report.as_dict(...)); with histories, built from their cached text (row 20b).
    body = report.as_json(details=details).encode()
    headers = {"Content-Type": "application/json", "Cache-Control": "no-store", "Vary": "Accept"}
    return HealthResponse(http_status(report), headers, body)


def _ask(authorized: Callable[[], bool]) -> bool:
    try:
        return bool(authorized())
    except Exception:
        # A broken permission check must not turn the health endpoint into a 500 and pull this instance out of its
        # load balancer: log it and answer with the status only.
        logger.exception("the outbound health 'authorize' callable raised; answering with the status only")
        return False
