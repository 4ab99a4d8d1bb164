"""A Flask app exporting outbound's Prometheus metrics the multiprocess way, for test_prometheus_multiprocess.py.

It is also the gunicorn configuration (``-c python:tests.flask.prometheus_app``): gunicorn reads ``child_exit`` from
it, and ignores the other names. ``create_app()`` reads the upstream's URL from ``OUTBOUND_E2E_UPSTREAM``; with
``--preload`` the master makes one call through ``warmup`` before forking the workers, as an app that fetches
something at start-up does.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

from outbound_flask import Outbound

UPSTREAM_ENV = "OUTBOUND_E2E_UPSTREAM"

ext = Outbound()


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn's hook: a dead worker's live gauges (pools, breaker states) stop counting."""
    multiprocess.mark_process_dead(worker.pid)


def create_app() -> Flask:
    """The app factory (``gunicorn 'tests.flask.prometheus_app:create_app()'``)."""
    app = Flask(__name__)
    upstream = os.environ[UPSTREAM_ENV]
    app.config["OUTBOUND"] = {
        "services": {
            "backend": {"base_url": upstream, "retry": None, "timeout": 5},
            "warmup": {"base_url": upstream, "retry": None, "timeout": 5},
        },
        "metrics": {"prometheus": True},
    }
    ext.init_app(app)
    with app.app_context():
        ext.session("warmup").get("ok")

    @app.get("/call")
    def call() -> tuple[dict[str, object], int]:
        response = ext.session("backend").get("ok")
        return {"pid": os.getpid(), "upstream": response.status_code}, 200

    @app.get("/metrics")
    def metrics() -> Response:
        # The documented multiprocess exporter: a fresh registry each scrape, filled from every process's files.
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

    return app
