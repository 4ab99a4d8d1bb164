"""Which httpx a backend module runs against: httpx (with httpcore), or httpx2 (with httpcore2), its maintained fork.

httpx2 has httpx's API under other names (``httpx2.Client``, ``httpcore2.NetworkStream``...), so outbound has one
implementation for both, written against httpx: the modules ``httpx.py`` (the clients and transports),
``_httpcore.py`` (the deadline's network streams) and ``aiohttp.py`` (the aiohttp transport). Each class there must
still be the library's own — an ``httpx2.Client`` subclass, an ``httpx2.SyncByteStream`` the client accepts, an
``httpcore2.ReadTimeout`` that httpx2 maps — so, for httpx2, the same source is loaded a second time as a module of
its own (``outbound._backends.httpx2``, ``_httpcore2``, ``aiohttp2``) in which the names ``httpx`` and
``httpcore`` are httpx2 and httpcore2. Nothing is copied, each library gets its own classes, and httpx2 is imported
only when a service of it makes its first client.

A module of the implementation starts with::

    LIBRARY = library_of(__name__)
    if TYPE_CHECKING:  # type-checked against httpx: httpx2 has the same API
        import httpx
    else:
        httpx = LIBRARY.httpx()

and reaches its sibling modules through ``LIBRARY.backend("...")``, so that httpx2's ``httpx.py`` uses httpx2's
``_httpcore.py``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["HTTPX", "HTTPX2", "LIBRARIES", "Library", "backend", "library_of"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Library:
    """One httpx: its modules' import names, and what outbound's modules for it are called."""

    name: str
    """The ``client`` setting that picks it, and its import name: ``"httpx"`` or ``"httpx2"``."""
    core: str
    """Its httpcore: ``"httpcore"`` or ``"httpcore2"``."""
    aiohttp: str
    """The module of httpx-aiohttp's transport for it."""
    suffix: str
    """What its backend modules' names end with, after the implementation's: ``"httpx"`` + ``"2"``."""
    install: str
    """What to install to have it."""

    def httpx(self) -> ModuleType:
        return importlib.import_module(self.name)

    def httpcore(self) -> ModuleType:
        return importlib.import_module(self.core)

    def aiohttp_transport(self) -> Any:
        """httpx-aiohttp's ``AiohttpTransport`` for this library."""
        return importlib.import_module(self.aiohttp).AiohttpTransport

    def backend(self, module: str) -> ModuleType:
        """Outbound's module ``module`` (``"httpx"``, ``"_httpcore"``, ``"aiohttp"``) for this library."""
        return backend(self, module)


HTTPX = Library(name="httpx", core="httpcore", aiohttp="httpx_aiohttp", suffix="", install="outbound-http")
HTTPX2 = Library(
    name="httpx2", core="httpcore2", aiohttp="httpx_aiohttp.httpx2", suffix="2", install="outbound-http[httpx2]"
)
LIBRARIES = {library.name: library for library in (HTTPX, HTTPX2)}

_PACKAGE = __name__.rpartition(".")[0]
# The module names loaded for a library other than httpx, and that library.
_LOADED: dict[str, Library] = {}
# Loading httpx2's httpx.py loads its _httpcore.py from inside: the same thread takes the lock again.
_loading = threading.RLock()


def library_of(module: str) -> Library:
    """The library the backend module named ``module`` (its ``__name__``) runs against."""
    return _LOADED.get(module, HTTPX)


def backend(library: Library, module: str) -> ModuleType:
    """Outbound's backend module ``module`` for ``library``: the module itself for httpx; for httpx2 the same source
    loaded (once) as ``<module>2``, whose names ``httpx`` and ``httpcore`` are httpx2's."""
    name = f"{_PACKAGE}.{module}{library.suffix}"
    loaded = sys.modules.get(name)
    if loaded is not None:
        return loaded
    if library is HTTPX:
        return importlib.import_module(name)
    with _loading:
        loaded = sys.modules.get(name)
        if loaded is not None:
            return loaded
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{module}.py"))
        assert spec is not None
        assert spec.loader is not None
        loaded = importlib.util.module_from_spec(spec)
        _LOADED[name] = library
        sys.modules[name] = loaded  # as an import does: a module importing it back while it loads finds it
        try:
            spec.loader.exec_module(loaded)
        except BaseException:
            del sys.modules[name]
            del _LOADED[name]
            raise
    return loaded
