"""Settings of the end-to-end project; ``OUTBOUND_E2E_UPSTREAM`` is the test upstream's URL."""

from __future__ import annotations

import os

SECRET_KEY = "outbound-e2e-only-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1"]
INSTALLED_APPS = ["outbound_django"]
MIDDLEWARE: list[str] = []
DATABASES: dict[str, object] = {}
ROOT_URLCONF = "tests.django.e2e_project.urls"
USE_TZ = True

UPSTREAM = os.environ["OUTBOUND_E2E_UPSTREAM"]
# Fail fast and recover fast: no retries, a breaker that opens after two failures and tries again after a second.
FAST = {
    "base_url": UPSTREAM,
    "retry": {"total": 0},
    # Open long enough that the test sees six 503s in a row on a loaded machine before trials are due.
    "breaker": {"fail_max": 2, "reset_timeout": 3.0},
    "timeout": {"connect": 2.0, "read": 5.0, "total": 10.0},
}
OUTBOUND = {
    "services": {
        "orders": {**FAST, "critical": True},
        "catalog": {**FAST, "client": "httpx"},
    },
    "health": {"show_details": "always"},
}
if os.environ.get("OUTBOUND_E2E_REDIS"):  # fleet mode (tests/test_fleet_e2e.py)
    OUTBOUND["state"] = {
        "backend": "redis",
        "url": os.environ["OUTBOUND_E2E_REDIS"],
        "cluster": os.environ.get("OUTBOUND_E2E_REDIS_CLUSTER") == "1",
        "sync_interval": 0.2,
    }
    OUTBOUND["services"]["orders"]["breaker"] = {"fail_max": 5, "reset_timeout": 60.0}

# Errors and outbound's breaker messages go to stderr, which the tests show when they fail.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
