"""The ``/health/outbound`` blueprint: the registry's health report as JSON, for load balancers and people.

The status code follows the core's rule (503 only when a critical service is down). The detail level comes from
``OUTBOUND["health"]["show_details"]``: ``"never"`` and ``"always"`` apply to everyone; ``"when_authorized"`` shows
the full report only to a request carrying ``Authorization: Bearer <health.token>`` or one the app's ``authorize``
callable accepts, and ``{"status": ...}`` to everyone else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Blueprint, current_app, request
from flask.typing import ResponseReturnValue

import outbound

from ._state import registry_for

logger = logging.getLogger(__name__)

BLUEPRINT_NAME = "outbound"

Authorize = Callable[[], bool]
"""Called inside the health request's context; ``True`` lets the request see the detailed report."""


def create_blueprint(*, path: str, authorize: Authorize | None = None) -> Blueprint:
    """A blueprint named ``"outbound"`` serving the health report at ``path`` (endpoint ``outbound.health``).

    A new blueprint per app, because each app's extension may carry its own ``authorize`` callable.
    """
    blueprint = Blueprint(BLUEPRINT_NAME, __name__)

    def health() -> ResponseReturnValue:
        """The current app's outbound health report; GET and HEAD only, never cached."""
        registry = registry_for(current_app)
        config = registry.health_config
        details = outbound.show_details(
            config,
            authorization=request.headers.get("Authorization"),
            authorized=config.show_details == "when_authorized" and _authorized(authorize),
        )
        report = registry.health(details=details)
        # A cached "ok" would hide an outage from the next load-balancer check, and a cached detailed report
        # could be served to someone without the token.
        return report, outbound.http_status(report), {"Cache-Control": "no-store"}

    # Flask answers HEAD for GET routes by itself; automatic OPTIONS is turned off so only GET and HEAD are allowed.
    blueprint.add_url_rule(path, "health", health, methods=["GET"], provide_automatic_options=False)
    return blueprint


def _authorized(authorize: Authorize | None) -> bool:
    # Only asked under "when_authorized": the callable may be costly (Flask-Login loads the user).
    if authorize is None:
        return False
    try:
        return bool(authorize())
    except Exception:
        # A broken authorization callable must not turn the health endpoint into a 500 and pull this instance out
        # of its load balancer: log it and answer with the summary only.
        logger.exception("the outbound health 'authorize' callable raised; answering with the status only")
        return False
