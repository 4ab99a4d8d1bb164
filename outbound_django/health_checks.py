"""``OutboundHealthCheck`` for django-health-check 4.x (an optional dependency).

List it in the view's checks, e.g. ``HealthCheckView.as_view(checks=[..., OutboundHealthCheck])``.
"""

from __future__ import annotations

import dataclasses

from health_check.base import HealthCheck
from health_check.exceptions import ServiceUnavailable

import outbound

from .conf import get_registry


@dataclasses.dataclass
class OutboundHealthCheck(HealthCheck):  # type: ignore[misc]  # django-health-check ships no type hints
    """Fails (``ServiceUnavailable``) only when the outbound report is ``down``: a critical service's breaker is open.

    A degraded report passes: django-health-check answers 500 for any raised exception, warnings included, and an
    unhealthy non-critical upstream must not take this instance out of its load balancer.
    """

    def run(self) -> None:
        """Raise ``ServiceUnavailable`` when a critical upstream is down or the settings are invalid."""
        try:
            report = get_registry().report()
        except outbound.ConfigError as error:
            # The message goes to a page that may be public: name the problem, not the settings' content.
            raise ServiceUnavailable("invalid OUTBOUND settings; run `manage.py check`") from error
        if report.status == "down":
            services = report.services.values()
            down = sorted(service.name for service in services if service.critical and service.status == "down")
            raise ServiceUnavailable(f"critical upstream down: {', '.join(down)}")
