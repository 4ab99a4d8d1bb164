"""Measurement 9's Django site in one module: its settings, URLs and views, and the two server entry points.

    DJANGO_SETTINGS_MODULE=benchmarks.brownout_apps.django_site \\
        gunicorn 'benchmarks.brownout_apps.django_site:wsgi_application()'
    DJANGO_SETTINGS_MODULE=benchmarks.brownout_apps.django_site \\
        uvicorn --factory benchmarks.brownout_apps.django_site:asgi_application

``/local`` and ``/upstream`` are sync views (gunicorn); ``/async/local`` and ``/async/upstream`` are their async
twins for the ASGI server, where a sync view would run in Django's single thread for sync code and queue behind
every other one. ``BROWNOUT_CLIENT`` chooses the sync client (see ``benchmarks/brownout_apps/__init__.py``); the
async view always uses ``outbound_django.async_client``.
"""

from __future__ import annotations

import os
from typing import Any

from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpRequest, HttpResponse
from django.urls import path

import outbound_django
from benchmarks import brownout_apps as common

CLIENT = common.client_kind()
UPSTREAM = common.upstream_url()

SECRET_KEY = "benchmark-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1"]
# Only the outbound variants load outbound_django, so the baselines are sites that never heard of it.
INSTALLED_APPS = ["outbound_django"] if CLIENT == "outbound" else []
MIDDLEWARE: list[str] = []
ROOT_URLCONF = __name__
DATABASES: dict[str, Any] = {}
USE_TZ = True
OUTBOUND = common.outbound_settings(UPSTREAM)

_call_upstream = common.upstream_caller(CLIENT, UPSTREAM, lambda: outbound_django.session(common.SERVICE))


def _json(body: bytes, status: int = common.OK) -> HttpResponse:
    return HttpResponse(body, status=status, content_type="application/json")


def local(request: HttpRequest) -> HttpResponse:
    return _json(common.local_body())


def upstream(request: HttpRequest) -> HttpResponse:
    status = _call_upstream()
    return _json(common.status_body(status), status)


async def local_async(request: HttpRequest) -> HttpResponse:
    return _json(common.local_body())


async def upstream_async(request: HttpRequest) -> HttpResponse:
    status = await common.call_async(lambda: outbound_django.async_client(common.ASYNC_SERVICE))
    return _json(common.status_body(status), status)


urlpatterns = [
    path("local", local),
    path("upstream", upstream),
    path("async/local", local_async),
    path("async/upstream", upstream_async),
]


def wsgi_application() -> WSGIHandler:
    """The WSGI app (a factory, so importing this module as the settings does not set Django up)."""
    from django.core.wsgi import get_wsgi_application

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", __name__)
    return get_wsgi_application()


def asgi_application() -> ASGIHandler:
    """The ASGI app, for ``uvicorn --factory``."""
    from django.core.asgi import get_asgi_application

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", __name__)
    return get_asgi_application()
