"""The public API: one sorted, complete ``__all__``; typed package."""

from __future__ import annotations

import importlib.resources
import types

import outbound


def test_all_is_sorted_and_complete() -> None:
    assert outbound.__all__ == sorted(outbound.__all__, key=lambda name: (not name.isupper(), name))
    public = {
        name
        for name, value in vars(outbound).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType) and name != "annotations"
    }
    assert public == set(outbound.__all__)


def test_package_is_typed() -> None:
    assert importlib.resources.files("outbound").joinpath("py.typed").is_file()
