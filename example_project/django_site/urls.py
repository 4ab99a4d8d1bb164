from __future__ import annotations

from django.urls import include, path

from . import views

urlpatterns = [
    path("", views.index),
    path("catalog", views.catalog),
    path("checkout", views.checkout),
    path("search", views.search),
    path("", include("outbound_django.urls")),
]
