from __future__ import annotations

from django.urls import include, path

from . import views

urlpatterns = [
    path("", include("outbound_django.urls")),
    path("call", views.call),
    path("call-async", views.call_async),
]
