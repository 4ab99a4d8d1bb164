"""The ``Outbound`` extension: builds each app's registry, exposes it, and closes it at process exit.

Per-app state lives in ``app.extensions["outbound"]`` (the app's ``outbound.Registry``), never on the extension
object, so one ``Outbound()`` can serve several apps (the factory pattern, test suites) and each app gets its own
registry, clients and breakers.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING

from flask import Flask, current_app, has_app_context

from outbound import Registry, setting_warnings

from ._state import EXTENSION_KEY, registry_for
from .cli import outbound_cli
from .deadlines import install as install_deadlines
from .deadlines import install_criticality
from .errors import install as install_error_answers
from .views import Authorize, create_blueprint

if TYPE_CHECKING:
    from outbound import ServiceAsyncClient, ServiceClient, ServiceSession

logger = logging.getLogger(__name__)

CONFIG_KEY = "OUTBOUND"
DEFAULT_HEALTH_PATH = "/health/outbound"


class Outbound:
    """Managed outbound HTTP clients for a Flask app.

    Use ``Outbound(app)`` directly or ``outbound = Outbound()`` plus ``outbound.init_app(app)`` in an app factory.
    ``init_app`` builds an ``outbound.Registry`` from ``app.config["OUTBOUND"]``, serves the health endpoint and adds
    the ``flask outbound`` command group. The accessors (``session``, ``client``, ``async_client``, ``registry``)
    resolve the registry of ``current_app``.

    Args:
        app: initialise this app right away.
        authorize: a callable run inside the health request (it can read ``flask.request`` or Flask-Login's
            ``current_user``); when it returns ``True`` the caller sees the full report under the
            ``"when_authorized"`` detail level, as a request with the bearer token does.
        health_path: where to serve the health endpoint; ``None`` does not register it.
        deadlines: run each request inside ``outbound.deadline`` with the budget its caller sent (``grpc-timeout``,
            ``X-Request-Timeout``...), the view's ``@default_deadline`` or the settings' ``deadline.default``, so
            its outbound calls stop when the caller stops waiting (see ``outbound_flask.deadlines``).
        error_answers: answer a view's outbound refusal or upstream failure as a gateway would (503 with
            ``Retry-After``, 504, 502, a small JSON body; see ``outbound.error_answer``) instead of with a 500.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        authorize: Authorize | None = None,
        health_path: str | None = DEFAULT_HEALTH_PATH,
        deadlines: bool = False,
        error_answers: bool = False,
    ) -> None:
        self.authorize = authorize
        self.health_path = health_path
        self.deadlines = deadlines
        self.error_answers = error_answers
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Build ``app``'s registry from ``app.config["OUTBOUND"]`` and wire it into the app (no network I/O).

        Raises:
            outbound.ConfigError: the settings are invalid (the core's message names the service and the key).
            RuntimeError: outbound is already registered on this app.
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                f"outbound is already registered on app {app.name!r}: call init_app(app) once per app "
                "(Outbound(app) already calls it)"
            )
        mapping = app.config.get(CONFIG_KEY)
        if mapping is None:
            logger.warning(
                "app.config[%r] is not set on app %r: no outbound services are configured", CONFIG_KEY, app.name
            )
            mapping = {}
        registry = Registry.from_mapping(mapping)
        for warning in setting_warnings(registry.config, production=not app.debug):
            # Django reports these as system checks; Flask has none, so they are logged once, at startup.
            logger.warning("%s %s (outbound.%s)", warning.message, warning.hint, warning.code)
        try:
            if self.health_path is not None:
                app.register_blueprint(create_blueprint(path=self.health_path, authorize=self.authorize))
            app.cli.add_command(outbound_cli)
            install_criticality(app)
            if self.deadlines:
                install_deadlines(app)
            if self.error_answers:
                install_error_answers(app)
        except BaseException:
            registry.close()
            raise
        app.extensions[EXTENSION_KEY] = registry
        # Not teardown_appcontext: that runs after every request and would throw the connection pools away. A
        # finalizer closes the registry at interpreter exit (it runs from atexit) or as soon as the app itself is
        # garbage-collected, and holds the app only weakly, so apps built and dropped by a test suite neither
        # stay alive nor keep their sockets open until exit.
        weakref.finalize(app, registry.close)

    @property
    def registry(self) -> Registry:
        """The current app's ``outbound.Registry``.

        Raises:
            RuntimeError: outside an application context, or when ``init_app`` was not called for the app.
        """
        if not has_app_context():
            raise RuntimeError(
                "outbound was used outside of an application context: call it inside a request or a CLI command, "
                "or push an app context with `with app.app_context():` (and did you forget init_app(app)?)"
            )
        return registry_for(current_app)

    def session(self, name: str) -> ServiceSession:
        """The ``requests.Session`` of the current app's ``client: "requests"`` service ``name``."""
        return self.registry.session(name)

    def client(self, name: str) -> ServiceClient:
        """The ``httpx.Client`` of the current app's ``client: "httpx"`` service ``name``."""
        return self.registry.client(name)

    def async_client(self, name: str) -> ServiceAsyncClient:
        """The ``httpx.AsyncClient`` of service ``name`` for the running event loop; call it in an ``async`` view.

        Flask runs each async view on a new event loop; every loop gets its own client, closed with the loop.
        """
        return self.registry.async_client(name)
