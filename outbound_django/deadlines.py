"""``@default_deadline(seconds)``: a view's own budget, for ``DeadlineMiddleware`` (``outbound_django.middleware``).

A module of its own, without Django's request machinery, so that ``import outbound_django`` stays light.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from outbound._deadline import mark_view_default

__all__ = ["default_deadline"]

V = TypeVar("V")


def default_deadline(seconds: float) -> Callable[[V], V]:
    """Decorate a view (a function, or a class-based view's class) with the budget of requests that send none.

    A budget the request sends (within ``deadline.max``) still wins; the view's default wins over the settings'
    ``deadline.default``. The view is returned unchanged, with the default as an attribute, so the decorator may
    sit anywhere among ``functools.wraps``-style decorators. It takes effect through ``DeadlineMiddleware``.

        @default_deadline(2.5)
        def search(request): ...

    Raises:
        ValueError: ``seconds`` is not a finite number > 0.
    """
    return mark_view_default(seconds)
