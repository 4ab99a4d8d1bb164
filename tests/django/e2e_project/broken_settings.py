"""The end-to-end project with two mistakes in OUTBOUND (and a credential that must not reach any answer)."""

from __future__ import annotations

from tests.django.e2e_project.settings import *  # noqa: F403 (all of the project's settings, then one override)

SECRET_IN_SETTINGS = "e2e-secret-api-key"
OUTBOUND = {
    "services": {
        "billing": {"base_url": "ftp://billing.internal/", "headers": {"X-Api-Key": SECRET_IN_SETTINGS}},
        "search": {"base_url": "http://127.0.0.1:9/", "retry": {"total": -1}},
    },
}
