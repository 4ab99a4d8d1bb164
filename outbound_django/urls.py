"""URLs of ``outbound_django``: ``path("", include("outbound_django.urls"))`` serves ``/health/outbound``."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("health/outbound", views.health, name="outbound-health"),
]
