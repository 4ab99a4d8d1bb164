"""outbound_django: the ``outbound`` registry wired into Django.

Add ``"outbound_django"`` to ``INSTALLED_APPS``, describe the upstreams in ``settings.OUTBOUND`` and use them::

    from outbound_django import session

    session("billing").get("invoices/42")

The app holds no resilience logic: timeouts, pools, retries and the breaker are the core's. It builds the registry
at startup, closes it at exit, serves ``/health/outbound`` (``outbound_django.urls``), adds system checks and the
``manage.py outbound`` command. ``outbound_django.middleware.DeadlineMiddleware`` runs each request inside
``outbound.deadline`` with the budget its caller sent, or its view's ``@default_deadline(seconds)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .deadlines import default_deadline

if TYPE_CHECKING:
    import outbound

    from .conf import get_registry

__all__ = ["async_client", "client", "default_deadline", "get_registry", "session"]


def session(name: str) -> outbound.ServiceSession:
    """The managed ``requests.Session`` of the ``client: "requests"`` service ``name``.

    Raises:
        outbound.ConfigError: ``settings.OUTBOUND`` is invalid.
        outbound.ServiceLookupError: no such service, or it uses httpx.
    """
    from .conf import get_registry

    return get_registry().session(name)


def client(name: str) -> outbound.ServiceClient:
    """The managed ``httpx.Client`` of the ``client: "httpx"`` service ``name``.

    Raises:
        outbound.ConfigError: ``settings.OUTBOUND`` is invalid.
        outbound.ServiceLookupError: no such service, or it uses requests.
    """
    from .conf import get_registry

    return get_registry().client(name)


def async_client(name: str) -> outbound.ServiceAsyncClient:
    """The managed ``httpx.AsyncClient`` of the ``client: "httpx"`` service ``name`` for the running event loop.

    Call it inside the coroutine that uses it (an async view): each event loop gets its own client, so it works
    under ASGI servers and inside ``async_to_sync`` bridges, which run a new loop per call.

    Raises:
        outbound.ConfigError: ``settings.OUTBOUND`` is invalid.
        outbound.ServiceLookupError: no such service, or it uses requests.
        RuntimeError: no event loop is running.
    """
    from .conf import get_registry

    return get_registry().async_client(name)


def __getattr__(name: str) -> Any:
    # get_registry lives with the settings it reads (django.conf): imported when first named, not with the package.
    if name == "get_registry":
        from .conf import get_registry

        return get_registry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
