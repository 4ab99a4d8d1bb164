"""Views calling the upstream through the app's accessors; each answer names the worker process."""

from __future__ import annotations

import os

from django.http import HttpRequest, JsonResponse

import outbound
from outbound_django import async_client, session


def failure(error: outbound.OutboundError) -> JsonResponse:
    # The error's class is named after the client library's exception it also is: ask outbound's class instead.
    return JsonResponse(
        {"pid": os.getpid(), "circuit_open": isinstance(error, outbound.CircuitOpenError), "error": str(error)},
        status=502,
    )


def call(request: HttpRequest) -> JsonResponse:
    """One call to the critical ``orders`` service through its managed requests session."""
    try:
        response = session("orders").get("orders")
    except outbound.OutboundError as error:
        return failure(error)
    return JsonResponse({"pid": os.getpid(), "upstream": response.status_code}, status=200 if response.ok else 502)


async def call_async(request: HttpRequest) -> JsonResponse:
    """One call to the ``catalog`` service through the event loop's managed httpx.AsyncClient."""
    try:
        response = await async_client("catalog").get("catalog")
    except outbound.OutboundError as error:
        return failure(error)
    return JsonResponse(
        {"pid": os.getpid(), "upstream": response.status_code}, status=200 if response.is_success else 502
    )
