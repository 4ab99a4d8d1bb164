"""The logging observer: outbound's own log lines, all produced from the policy's events.

Loggers (public names, so users can configure them; the docs' Logging page lists them):

- ``outbound.breaker``: WARNING when a breaker opens or is isolated, INFO when it turns half-open or closes;
- ``outbound.retry``: DEBUG for every retry (what failed, and the wait);
- ``outbound.call``: one record per logical call — DEBUG for a success or a call refused before sending, INFO for
  a call that ended in an error or a failure status — with the facts also in the record's attributes
  (``outbound_service``, ``outbound_method``, ``outbound_url``, ``outbound_status``, ``outbound_error``,
  ``outbound_attempts``, ``outbound_duration_ms``) for JSON formatters.

Failures are INFO, not WARNING: during an outage every call fails, and the breaker's one WARNING is the signal
worth paging on; a production config at INFO still records each failed call. No message holds credentials or a
query string (URLs are redacted).
"""

from __future__ import annotations

import logging

from ._events import BreakerTransition, CallFinished, CallRejected, Observer, RetryScheduled
from ._outcome import Kind

breaker_logger = logging.getLogger("outbound.breaker")
retry_logger = logging.getLogger("outbound.retry")
call_logger = logging.getLogger("outbound.call")

_QUIET_KINDS = frozenset({Kind.CANCELLED, Kind.CLOSED})


class LogObserver(Observer):
    """Writes outbound's log lines. One shared instance serves every policy."""

    def breaker_transition(self, event: BreakerTransition) -> None:
        service = event.service
        if event.new == "open":
            breaker_logger.warning(
                "circuit breaker for %r opened after %s; calls fail fast for %.1fs",
                service,
                event.reason,
                event.open_seconds,
            )
        elif event.new == "isolated":
            if event.open_seconds == float("inf"):
                breaker_logger.warning(
                    "circuit breaker for %r isolated (%s): calls fail fast until reset", service, event.reason
                )
            else:
                breaker_logger.warning(
                    "circuit breaker for %r isolated (%s): calls fail fast for %.1fs",
                    service,
                    event.reason,
                    event.open_seconds,
                )
        elif event.new == "half-open":
            breaker_logger.info("circuit breaker for %r half-open: admitting trial calls", service)
        elif event.old != "closed":
            breaker_logger.info("circuit breaker for %r closed: %s", service, event.reason)

    def retry_scheduled(self, event: RetryScheduled) -> None:
        if retry_logger.isEnabledFor(logging.DEBUG):
            retry_logger.debug(
                "%s: retrying %s %s after %s (retry %d, in %.3fs)",
                event.service,
                event.method,
                event.url,
                event.description,
                event.attempt,
                event.delay,
            )

    def call_finished(self, event: CallFinished) -> None:
        failed = event.error_type is not None and event.kind not in _QUIET_KINDS
        level = logging.INFO if failed else logging.DEBUG
        if not call_logger.isEnabledFor(level):
            return
        url = event.url
        duration_ms = round(event.seconds * 1000.0, 1)
        extra = {
            "outbound_service": event.service,
            "outbound_method": event.method,
            "outbound_url": url,
            "outbound_status": event.status,
            "outbound_error": event.error_type,
            "outbound_attempts": event.attempts,
            "outbound_duration_ms": duration_ms,
        }
        if event.error_type is None:
            call_logger.debug(
                "%s: %s %s -> %s in %.1f ms (%d attempts)",
                event.service,
                event.method,
                url,
                event.status,
                duration_ms,
                event.attempts,
                extra=extra,
            )
        else:
            call_logger.log(
                level,
                "%s: %s failed: %s: %s (%d attempts, %.1f ms)",
                event.service,
                event.method,
                event.error_type,
                event.error_message,
                event.attempts,
                duration_ms,
                extra=extra,
            )

    def call_rejected(self, event: CallRejected) -> None:
        if call_logger.isEnabledFor(logging.DEBUG):
            call_logger.debug(
                "%s: %s refused before sending: %s",
                event.service,
                event.method,
                event.reason,
                extra={
                    "outbound_service": event.service,
                    "outbound_method": event.method,
                    "outbound_error": event.reason,
                    "outbound_attempts": 0,
                },
            )


LOG_OBSERVER = LogObserver()
