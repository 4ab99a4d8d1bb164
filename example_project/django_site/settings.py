"""Settings of the example Django site. No database: the demo only calls upstreams."""

from __future__ import annotations

from example_project.services import LOGGING_FORMAT, outbound_settings

SECRET_KEY = "example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "outbound_django"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "example_project.django_site.urls"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

OUTBOUND = outbound_settings()

# Show outbound's breaker transitions (WARNING on open, INFO on close) on the server's stderr.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": LOGGING_FORMAT}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {"outbound": {"handlers": ["stderr"], "level": "INFO", "propagate": False}},
}
