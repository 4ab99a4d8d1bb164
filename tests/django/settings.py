"""Settings for the Django tests (pytest-django applies them to the whole session, core tests included).

OUTBOUND points at 127.0.0.1 and nothing here touches the network; tests that call an upstream configure the shared
test upstream through pytest-django's ``settings`` fixture.
"""

from __future__ import annotations

SECRET_KEY = "outbound-tests-only-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "outbound_django",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ROOT_URLCONF = "tests.django.urls"
USE_TZ = True

HEALTH_TOKEN = "test-health-token-0123456789abcdef"
OUTBOUND = {
    "services": {
        # Port 9 (discard) on loopback: nothing is ever sent there, the tests only need a valid configuration.
        "local": {"base_url": "http://127.0.0.1:9/api/", "critical": True},
    },
    "health": {"token": HEALTH_TOKEN},
}
