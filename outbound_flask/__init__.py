"""outbound_flask: the Flask extension for outbound.

    from outbound_flask import Outbound

    outbound = Outbound()

    def create_app():
        app = Flask(__name__)
        app.config["OUTBOUND"] = {"services": {"search": {"base_url": "http://search.internal/", "client": "httpx"}}}
        outbound.init_app(app)
        return app

    # in a view
    outbound.client("search").get("q", params={"text": "..."})

``init_app`` builds the app's ``outbound.Registry``, serves ``/health/outbound`` and adds the ``flask outbound``
command group. The registry is closed at process exit. ``Outbound(app, deadlines=True)`` runs each request inside
``outbound.deadline`` with the budget its caller sent, or its view's ``@default_deadline(seconds)``.
"""

from __future__ import annotations

from .deadlines import default_deadline
from .extension import Outbound

__all__ = ["Outbound", "default_deadline"]
