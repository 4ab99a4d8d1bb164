"""Views that call the three upstreams: two sync (requests), one async (httpx)."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse

from example_project.services import call, call_async
from outbound_django import async_client, session


def index(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"endpoints": ["/catalog", "/search", "/checkout", "/health/outbound"]})


def catalog(request: HttpRequest) -> JsonResponse:
    payload, status = call("catalog", lambda: session("catalog").get("items"))
    return JsonResponse(payload, status=status)


def checkout(request: HttpRequest) -> JsonResponse:
    payload, status = call("billing", lambda: session("billing").get("invoices/42"))
    return JsonResponse(payload, status=status)


async def search(request: HttpRequest) -> JsonResponse:
    # The AsyncClient of this event loop: uvicorn runs one loop; async_to_sync bridges run one per call.
    payload, status = await call_async("search", lambda: async_client("search").get("q", params={"text": "shoes"}))
    return JsonResponse(payload, status=status)
