"""Measurement 9's Flask app: ``gunicorn 'benchmarks.brownout_apps.flask_app:create_app()'``.

``/local`` needs no upstream; ``/upstream`` calls the test upstream through the client ``BROWNOUT_CLIENT`` names
(see ``benchmarks/brownout_apps/__init__.py``). With ``outbound`` the call goes through the extension's accessor.
"""

from __future__ import annotations

from flask import Flask, Response

from benchmarks import brownout_apps as common
from outbound_flask import Outbound

ext = Outbound()


def create_app() -> Flask:
    """The app factory; reads ``BROWNOUT_CLIENT`` and ``BROWNOUT_UPSTREAM``."""
    kind, base_url = common.client_kind(), common.upstream_url()
    app = Flask(__name__)
    if kind == "outbound":
        # Only this variant loads outbound, so the baselines are apps that never heard of it.
        app.config["OUTBOUND"] = common.outbound_settings(base_url)
        ext.init_app(app)
    call_upstream = common.upstream_caller(kind, base_url, lambda: ext.session(common.SERVICE))

    @app.get("/local")
    def local() -> Response:
        return Response(common.local_body(), mimetype="application/json")

    @app.get("/upstream")
    def upstream() -> Response:
        status = call_upstream()
        return Response(common.status_body(status), status=status, mimetype="application/json")

    return app
