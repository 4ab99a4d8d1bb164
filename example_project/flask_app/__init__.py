"""The example Flask app, in the app-factory pattern: ``gunicorn 'example_project.flask_app:create_app()'``."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue

from example_project.services import LOGGING_FORMAT, call, call_async, outbound_settings
from outbound_flask import Outbound

outbound = Outbound()


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["OUTBOUND"] = outbound_settings()
    outbound.init_app(app)
    _show_breaker_transitions()

    @app.get("/")
    def index() -> ResponseReturnValue:
        return jsonify(endpoints=["/catalog", "/search", "/checkout", "/health/outbound"])

    @app.get("/catalog")
    def catalog() -> ResponseReturnValue:
        payload, status = call("catalog", lambda: outbound.session("catalog").get("items"))
        return jsonify(payload), status

    @app.get("/checkout")
    def checkout() -> ResponseReturnValue:
        payload, status = call("billing", lambda: outbound.session("billing").get("invoices/42"))
        return jsonify(payload), status

    @app.get("/search")
    async def search() -> ResponseReturnValue:
        # Flask runs each async view on a new event loop; async_client gives that loop's client.
        payload, status = await call_async(
            "search", lambda: outbound.async_client("search").get("q", params={"text": "shoes"})
        )
        return jsonify(payload), status

    return app


def _show_breaker_transitions() -> None:
    logger = logging.getLogger("outbound")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOGGING_FORMAT))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
