"""Settings of the Django project the status page tests serve (the end-to-end project's URLs and views).

``OUTBOUND_E2E_UPSTREAM`` is the test upstream's URL. ``orders`` is critical and its breaker, once open, stays open
for the whole test, so the page's countdown has minutes to run; only ``OUTBOUND_HEALTH_TOKEN`` sees the details.
"""

from __future__ import annotations

import os

SECRET_KEY = "outbound-browser-tests-only-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1"]
INSTALLED_APPS = ["outbound_django"]
MIDDLEWARE: list[str] = []
DATABASES: dict[str, object] = {}
ROOT_URLCONF = "tests.django.e2e_project.urls"  # /call uses "orders", /call-async "catalog"
USE_TZ = True

UPSTREAM = os.environ["OUTBOUND_E2E_UPSTREAM"]
FAST = {"base_url": UPSTREAM, "retry": {"total": 0}, "timeout": {"connect": 2.0, "read": 5.0, "total": 10.0}}
OUTBOUND = {
    "services": {
        "orders": {**FAST, "critical": True, "breaker": {"fail_max": 2, "reset_timeout": 300.0}},
        "catalog": {**FAST, "client": "httpx"},
        "inventory": FAST,
    },
    "health": {"token": os.environ["OUTBOUND_HEALTH_TOKEN"]},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
