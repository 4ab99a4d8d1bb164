"""URLs for the Django tests: the app's health URL, views calling an upstream, django-health-check's view."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from health_check.views import HealthCheckView

from outbound_django import async_client, session
from outbound_django.health_checks import OutboundHealthCheck


def sync_call(request: HttpRequest) -> JsonResponse:
    response = session("requests_service").get("ok")
    return JsonResponse({"status": response.status_code, "body": response.text})


async def async_call(request: HttpRequest) -> JsonResponse:
    response = await async_client("httpx_service").get("ok")
    return JsonResponse({"status": response.status_code, "body": response.text})


urlpatterns = [
    path("", include("outbound_django.urls")),
    path("call/sync", sync_call),
    path("call/async", async_call),
    path("ht/", HealthCheckView.as_view(checks=[OutboundHealthCheck])),
    path("ht-by-path/", HealthCheckView.as_view(checks=["outbound_django.health_checks.OutboundHealthCheck"])),
]
