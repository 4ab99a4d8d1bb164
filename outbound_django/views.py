"""``/health/outbound``: the registry's health report, for load balancers and monitoring."""

from __future__ import annotations

import json

from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

import outbound
from outbound import serving

from .conf import get_registry

# The answer while settings.OUTBOUND is invalid: nothing of the settings (which may hold credentials) or of the
# error's message, only that this instance cannot make its outbound calls.
INVALID_SETTINGS = {"status": "down", "error": "invalid_settings"}


@never_cache
@require_safe
def health(request: HttpRequest) -> HttpResponse:
    """The outbound health report: HTTP 200 unless a critical service is down, then 503; JSON, or the status page
    for a browser (``Accept: text/html``; ``?format=json`` or ``?format=html`` decides instead).

    The level of detail follows ``OUTBOUND["health"]["show_details"]``: ``"never"`` and unauthorised requests get
    ``{"status": ...}`` only; ``"always"``, a staff user or ``Authorization: Bearer <health.token>`` get the full
    report. ``never_cache`` marks every answer ``no-store``; ``require_safe`` answers 405 to anything but GET and
    HEAD. A synchronous view, so it runs unchanged under WSGI and ASGI.

    While ``settings.OUTBOUND`` is invalid (a server refuses to boot with it, but a test or a shell may get here)
    the answer is 503 with the JSON ``{"status": "down", "error": "invalid_settings"}``, never Django's 500 page.
    """
    try:
        registry = get_registry()
    except outbound.ConfigError:
        response = HttpResponse(json.dumps(INVALID_SETTINGS), status=503, content_type="application/json")
        return _answered(response)
    answer = serving.respond(
        registry,
        authorization=request.headers.get("Authorization"),
        # Asked only when the token did not decide: request.user may cost a session and database lookup.
        authorized=lambda: _is_staff(request),
        # Offered where it can work: without AuthenticationMiddleware there is no login to offer.
        sign_in="sign in to this site as a staff user" if hasattr(request, "user") else None,
        accept=request.headers.get("Accept"),
        format=request.GET.get("format"),
        history=request.GET.get("history"),
    )
    return _answered(HttpResponse(answer.body, status=answer.status, headers=answer.headers))


def _answered(response: HttpResponse) -> HttpResponse:
    if response.status_code >= 500:
        # A health check's 503 is an answer, not a server error: Django would log every one at ERROR through
        # django.request ("Service Unavailable: /health/outbound") and page someone each time a balancer polls.
        response._has_been_logged = True  # type: ignore[attr-defined]  # django.utils.log.log_response reads it
    return response


def _is_staff(request: HttpRequest) -> bool:
    # Without AuthenticationMiddleware there is no request.user: only the token can authorise.
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_active and user.is_staff)
