"""The ``/health/outbound`` blueprint: the registry's health report as JSON for load balancers, and as the status
page for a browser (``Accept: text/html``; ``?format=json`` or ``?format=html`` decides instead).

The status code follows the core's rule (503 only when a critical service is down). The detail level comes from
``OUTBOUND["health"]["show_details"]``: ``"never"`` and ``"always"`` apply to everyone; ``"when_authorized"`` shows
the full report only to a request carrying ``Authorization: Bearer <health.token>`` or one the app's ``authorize``
callable accepts, and ``{"status": ...}`` to everyone else.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Blueprint, Response, current_app, request
from flask.typing import ResponseReturnValue

from outbound import serving

from ._state import registry_for

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
        answer = serving.respond(
            registry_for(current_app),
            authorization=request.headers.get("Authorization"),
            authorized=authorize,
            sign_in="sign in as this app requires (its authorize check decides)",
            accept=request.headers.get("Accept"),
            format=request.args.get("format"),
            history=request.args.get("history"),
        )
        # The core's bytes as they are: Flask's JSON provider would sort the keys, and Django's view would not.
        return Response(answer.body, status=answer.status, headers=dict(answer.headers))

    # Flask answers HEAD for GET routes by itself; automatic OPTIONS is turned off so only GET and HEAD are allowed.
    blueprint.add_url_rule(path, "health", health, methods=["GET"], provide_automatic_options=False)
    return blueprint
