"""A Django request's outbound calls are critical by default (``outbound.criticality``): under the WSGI handler through
the app's ``request_started`` receiver, under the ASGI handler with ``CriticalityMiddleware`` (Django runs that
signal's receivers in tasks of their own there); code outside a request is sheddable. This module is the tests'
URLconf."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from django.http import HttpRequest, JsonResponse
from django.test import AsyncClient, Client
from django.urls import path

from outbound._criticality import current

if TYPE_CHECKING:
    from pytest_django import Settings


def sync_view(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"level": current()})


async def async_view(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"level": current()})


urlpatterns = [path("sync", sync_view), path("async", async_view)]


def test_a_wsgi_request_is_critical_and_code_outside_it_sheddable(settings: Settings) -> None:
    settings.ROOT_URLCONF = __name__
    for url in ("/sync", "/async"):
        assert Client().get(url).json() == {"level": "critical"}
        assert current() == "sheddable"


def test_an_asgi_request_is_critical_with_the_middleware(settings: Settings) -> None:
    settings.ROOT_URLCONF = __name__
    assert asyncio.run(AsyncClient().get("/async")).json() == {"level": "sheddable"}  # the gap the middleware fills
    settings.MIDDLEWARE = ["outbound_django.middleware.CriticalityMiddleware", *settings.MIDDLEWARE]
    for url in ("/sync", "/async"):
        assert asyncio.run(AsyncClient().get(url)).json() == {"level": "critical"}
        assert Client().get(url).json() == {"level": "critical"}
        assert current() == "sheddable"
