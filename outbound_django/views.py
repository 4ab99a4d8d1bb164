"""``/health/outbound``: the registry's health report as JSON, for load balancers and monitoring."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

import outbound

from .conf import get_registry


@never_cache
@require_safe
def health(request: HttpRequest) -> HttpResponse:
    """The outbound health report: HTTP 200 unless a critical service is down, then 503.

    The level of detail follows ``OUTBOUND["health"]["show_details"]``: ``"never"`` and unauthorised requests get
    ``{"status": ...}`` only; ``"always"``, a staff user or ``Authorization: Bearer <health.token>`` get the full
    report. ``never_cache`` marks every answer ``no-store``; ``require_safe`` answers 405 to anything but GET and
    HEAD. A synchronous view, so it runs unchanged under WSGI and ASGI.
    """
    registry = get_registry()
    config = registry.health_config
    details = outbound.show_details(config, authorization=request.headers.get("Authorization"))
    if not details and config.show_details == "when_authorized":
        # Only now: request.user may cost a session and database lookup on every load-balancer probe.
        details = outbound.show_details(config, authorization=None, authorized=_is_staff(request))
    report = registry.health(details=details)
    return JsonResponse(report, status=outbound.http_status(report))


def _is_staff(request: HttpRequest) -> bool:
    # Without AuthenticationMiddleware there is no request.user: only the token can authorise.
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_active and user.is_staff)
