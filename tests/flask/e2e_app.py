"""A real Flask app for the end-to-end tests: gunicorn serves it (test_e2e.py) and ``flask`` runs its CLI.

``create_app()`` reads the upstream's URL from ``OUTBOUND_E2E_UPSTREAM``. ``backend`` is critical with a breaker
that opens after two failures and tries again after a second, so a test sees it open and recover quickly.
"""

from __future__ import annotations

import os

from flask import Flask

import outbound
from outbound_flask import Outbound

UPSTREAM_ENV = "OUTBOUND_E2E_UPSTREAM"
REDIS_ENV = "OUTBOUND_E2E_REDIS"
HEALTH_TOKEN = "e2e-health-token"

ext = Outbound()


def create_app() -> Flask:
    """The app factory (``gunicorn 'tests.flask.e2e_app:create_app()'``)."""
    app = Flask(__name__)
    upstream = os.environ[UPSTREAM_ENV]
    app.config["OUTBOUND"] = {
        "services": {
            "backend": {
                "base_url": upstream,
                "critical": True,
                "retry": None,
                "timeout": {"connect": 2, "read": 5, "total": 10},
                "breaker": {"fail_max": 2, "reset_timeout": 1.0},
            },
            "search": {"base_url": upstream, "client": "httpx", "retry": None, "timeout": 5},
        },
        "health": {"token": HEALTH_TOKEN},
    }
    if os.environ.get(REDIS_ENV):  # fleet mode (tests/test_fleet_e2e.py)
        state = {"backend": "redis", "url": os.environ[REDIS_ENV], "sync_interval": 0.2}
        app.config["OUTBOUND"]["state"] = {**state, "cluster": os.environ.get(f"{REDIS_ENV}_CLUSTER") == "1"}
        app.config["OUTBOUND"]["services"]["backend"]["breaker"] = {"fail_max": 5, "reset_timeout": 60.0}
    ext.init_app(app)

    @app.get("/call")
    def call() -> tuple[dict[str, object], int]:
        try:
            response = ext.session("backend").get("data")
        except outbound.CircuitOpenError:
            return {"pid": os.getpid(), "error": "circuit open"}, 503
        return {"pid": os.getpid(), "upstream": response.status_code}, 200 if response.ok else 502

    @app.get("/async-call")
    async def async_call() -> tuple[dict[str, object], int]:
        response = await ext.async_client("search").get("data")
        return {"pid": os.getpid(), "upstream": response.status_code}, 200 if response.is_success else 502

    return app
