"""Where an app keeps its registry: ``app.extensions["outbound"]``. Shared by the extension, the view and the CLI."""

from __future__ import annotations

from flask import Flask

from outbound import Registry

EXTENSION_KEY = "outbound"


def registry_for(app: Flask) -> Registry:
    """``app``'s registry.

    Raises:
        RuntimeError: ``init_app`` was not called for ``app``.
    """
    registry = app.extensions.get(EXTENSION_KEY)
    if not isinstance(registry, Registry):
        raise RuntimeError(
            f"outbound is not set up on app {app.name!r}: did you forget init_app(app)? "
            "(outbound_flask.Outbound().init_app(app) builds the app's registry from app.config['OUTBOUND'])"
        )
    return registry
