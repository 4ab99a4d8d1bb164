"""The test settings with two mistakes in OUTBOUND, for the tests that run `manage.py` commands on them."""

from __future__ import annotations

from tests.django.settings import *  # noqa: F403 (all of the test settings, then one override)

OUTBOUND = {
    "services": {
        "billing": {"base_url": "ftp://billing.internal/"},
        "search": {"base_url": "http://127.0.0.1:9/", "retry": {"total": -1}},
    },
}
