"""A scope that sets a context variable while it is entered (``with`` or ``async with``): the base of
``outbound.deadline`` and ``outbound.criticality``.

Entering sets the variable to what the subclass computes (``_entered``), leaving puts back what it was. Each entry
keeps its own token, so scopes nest, and one object may be entered again after it is left (or nested in itself).
The variable follows the work as context variables do: into asyncio tasks created inside and threads run with
``contextvars.copy_context().run``, not into threads started plainly.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any, ClassVar, TypeVar

S = TypeVar("S", bound="Scope")


class Scope:
    __slots__ = ("_tokens",)

    _var: ClassVar[ContextVar[Any]]  # each subclass's variable

    def __init__(self) -> None:
        self._tokens: list[Token[Any]] = []

    def _entered(self) -> Any:
        """The variable's value inside the scope, computed as it is entered."""
        raise NotImplementedError

    def __enter__(self: S) -> S:
        self._tokens.append(self._var.set(self._entered()))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._var.reset(self._tokens.pop())

    async def __aenter__(self: S) -> S:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, traceback)
