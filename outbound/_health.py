"""Health reports and their presentation, shared by the Django and Flask adapters.

``build_report`` applies the status rules; ``http_health`` chooses the detail level for an HTTP request;
``render_status`` / ``render_probe`` print the tables both CLIs show, and ``*_exit_code`` give their exit codes.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._config import HealthConfig

STATUS_EXIT_CODES = {"ok": 0, "degraded": 0, "down": 1}
CONFIG_ERROR_EXIT_CODE = 2


def overall_status(services: Mapping[str, Mapping[str, Any]]) -> str:
    """``down`` only when a critical service is down (an open breaker elsewhere must not pull this instance out of
    its load balancer); ``degraded`` when any service is not ok; else ``ok``."""
    if any(s["status"] == "down" and s["critical"] for s in services.values()):
        return "down"
    if any(s["status"] != "ok" for s in services.values()):
        return "degraded"
    return "ok"


def build_report(services: Mapping[str, Mapping[str, Any]], *, details: bool) -> dict[str, Any]:
    status = overall_status(services)
    return {"status": status, "services": dict(services)} if details else {"status": status}


def bearer_token_matches(authorization: str | None, token: str | None) -> bool:
    """Whether an ``Authorization: Bearer <token>`` header carries ``token`` (compared in constant time)."""
    if not token or not authorization:
        return False
    scheme, _, presented = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(presented.strip().encode(), token.encode())


def show_details(config: HealthConfig, *, authorization: str | None, authorized: bool = False) -> bool:
    """Whether an HTTP health request gets the full report.

    Args:
        config: the ``health`` settings.
        authorization: the request's ``Authorization`` header, if any.
        authorized: the framework's own verdict (a Django staff user, a Flask app's callable).
    """
    if config.show_details == "always":
        return True
    if config.show_details == "never":
        return False
    return authorized or bearer_token_matches(authorization, config.token)


def http_status(report: Mapping[str, Any]) -> int:
    """503 only when the report is ``down``; a degraded dependency keeps this instance in rotation."""
    return 503 if report["status"] == "down" else 200


def status_exit_code(report: Mapping[str, Any]) -> int:
    return STATUS_EXIT_CODES[report["status"]]


def render_status(report: Mapping[str, Any]) -> str:
    """A plain-text table of a detailed report, as ``outbound status`` prints it."""
    rows = [("SERVICE", "CLIENT", "STATUS", "BREAKER", "POOL", "REQUESTS", "ERRORS", "LAST ERROR")]
    for name, service in sorted(report.get("services", {}).items()):
        pool, stats, last = service["pool"], service["stats"], service["last_error"]
        breaker = service["breaker"]["state"]
        if service["breaker"]["retry_in"] is not None:
            breaker += f" ({service['breaker']['retry_in']:.0f}s)"
        rows.append(
            (
                name + (" *" if service["critical"] else ""),
                service["client"],
                service["status"],
                breaker,
                f"{pool['in_use']}/{pool['max_connections']}",
                str(stats["requests"]),
                str(stats["errors"]),
                f"{last['type']}: {last['message']}" if last else "-",
            )
        )
    lines = _table(rows)
    lines.append(f"overall: {report['status']}   (* critical)")
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One service's probe: ``ok`` is ``None`` when it has no ``probe`` path."""

    service: str
    critical: bool
    url: str | None
    ok: bool | None
    status: int | None = None
    latency_ms: float | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "critical": self.critical,
            "url": self.url,
            "ok": self.ok,
            "status": self.status,
            "latency_ms": self.latency_ms,
            "error": self.error,
        }


def render_probe(results: Iterable[ProbeResult]) -> str:
    rows = [("SERVICE", "RESULT", "STATUS", "LATENCY", "URL / ERROR")]
    for result in results:
        verdict = "skipped" if result.ok is None else "ok" if result.ok else "FAILED"
        latency = f"{result.latency_ms:.1f} ms" if result.latency_ms is not None else "-"
        detail = result.error or result.url or "no 'probe' path configured"
        rows.append(
            (
                result.service + (" *" if result.critical else ""),
                verdict,
                str(result.status or "-"),
                latency,
                detail,
            )
        )
    return "\n".join(_table(rows))


def probe_exit_code(results: Iterable[ProbeResult]) -> int:
    """1 when a critical service's probe failed, else 0."""
    return 1 if any(r.critical and r.ok is False for r in results) else 0


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
