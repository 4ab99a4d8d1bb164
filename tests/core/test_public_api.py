"""The public API: each public module has one sorted, complete ``__all__``; typed package."""

from __future__ import annotations

import importlib.resources
import types
import typing

import pytest

import outbound
import outbound.cli
import outbound.health
import outbound.serving
import outbound.testing

PUBLIC_MODULES = [outbound, outbound.cli, outbound.health, outbound.serving, outbound.testing]


def _defined_public_names(module: types.ModuleType) -> set[str]:
    # What a reader would take for the module's API: its own classes and functions (for the package, those it
    # re-exports from its private modules) and its constants.
    names = set()
    for name, value in vars(module).items():
        if name.startswith(("_", "pytest_")) or isinstance(value, types.ModuleType):
            continue  # private, a module, or a pytest hook (outbound.testing is a plugin)
        home = getattr(value, "__module__", None) if isinstance(value, type | types.FunctionType) else None
        own = home == module.__name__ or (module is outbound and bool(home) and home.startswith("outbound."))
        if own or (name.isupper() and not isinstance(value, type)):
            names.add(name)
    return names


@pytest.mark.parametrize("module", PUBLIC_MODULES, ids=lambda module: module.__name__)
def test_all_is_sorted_and_complete(module: types.ModuleType) -> None:
    assert module.__all__ == sorted(module.__all__, key=lambda name: (not name.isupper(), name))
    assert all(hasattr(module, name) for name in module.__all__)
    assert _defined_public_names(module) <= set(module.__all__)
    if module is outbound:
        # Nothing else is exported, but for type aliases (which carry no __module__ to check).
        extra = set(module.__all__) - _defined_public_names(module)
        assert all(typing.get_origin(getattr(module, name)) is typing.Literal for name in extra), extra


def test_package_is_typed() -> None:
    assert importlib.resources.files("outbound").joinpath("py.typed").is_file()


def test_names_that_moved_out_of_health_are_still_importable_from_it() -> None:
    # The CLI's tables and exit codes moved to outbound.cli, serving /health/outbound to outbound.serving; code that
    # imported them from outbound.health keeps working, with the very same objects.
    for name in outbound.health._MOVED:
        home = outbound.serving if name in outbound.serving.__all__ else outbound.cli
        assert getattr(outbound.health, name) is getattr(home, name)
    with pytest.raises(AttributeError):
        outbound.health.no_such_name  # noqa: B018 (the attribute read is the point)
