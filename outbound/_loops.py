"""Which event loop runs the calling code: an ``AsyncClient`` belongs to one (``Service.async_client``)."""

from __future__ import annotations

import sys


def current_loop() -> object | None:
    """The running asyncio loop, or the running trio run's token, or ``None`` outside both."""
    asyncio = sys.modules.get("asyncio")  # not imported: no asyncio loop can be running (and none is imported here)
    if asyncio is not None:
        try:
            loop: object = asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            return loop
    try:
        import sniffio
    except ImportError:  # not a dependency of ours; trio requires it, so without it no trio run can be going
        return None
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:  # no async library runs in this thread
        return None
    if library != "trio":
        return None
    import trio

    return trio.lowlevel.current_trio_token()
