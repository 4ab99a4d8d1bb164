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

The client libraries log too, with secrets in plain sight: httpx logs every request's full URL at INFO, httpcore
the response headers (``Set-Cookie`` values) at DEBUG, urllib3 paths with their query strings. ``SecretsFilter`` is
attached to those libraries' loggers when a registry is built, and rewrites each of their records with the
password of any URL, the value of any query parameter whose name looks secret, and the value of any credential
header masked.
"""

from __future__ import annotations

import logging
import re
import threading

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

    @staticmethod
    def call_level(kind: Kind, error_type: str | None) -> int | None:
        """The level of the record a call that ended so gets, or ``None`` when that level is off (the policy asks
        before it builds the event; a success's record is DEBUG, usually off)."""
        level = logging.INFO if error_type is not None and kind not in _QUIET_KINDS else logging.DEBUG
        return level if call_logger.isEnabledFor(level) else None

    @staticmethod
    def log_call(event: CallFinished, level: int) -> None:
        """The call's record, at the ``level`` that ``call_level`` gave (the policy calls it, not the hooks)."""
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
                "%s: %s %s -> %s in %.1f ms (%s)",
                event.service,
                event.method,
                url,
                event.status,
                duration_ms,
                _attempts(event.attempts),
                extra=extra,
            )
        else:
            call_logger.log(
                level,
                "%s: %s failed: %s: %s (%s, %.1f ms)",
                event.service,
                event.method,
                event.error_type,
                event.error_message,
                _attempts(event.attempts),
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


# Query parameter names that carry secrets: api_key, access_token, client_secret, password, signature, X-Amz-...
_SECRET_NAME = r"[\w.\-\[\]]*?(?:token|key|secret|passw|pwd|auth|sig|session|credential|cookie|code)[\w.\-\[\]]*"
# Separators plain or percent-encoded: a URL nested in a parameter (an OAuth redirect_uri) hides its own query.
_SECRET_QUERY = re.compile(
    r"([?&;]|%3F|%26|%3B)(" + _SECRET_NAME + r")(=|%3D)((?:(?!%26|%3B|%23)[^&;#\s'\"<>])*)", re.IGNORECASE
)
_USERINFO = re.compile(r"([a-zA-Z][a-zA-Z0-9+.\-]*://)([^/@\s'\"<>]+)@")
# httpcore's traces print header lists as (b'Name', b'value') tuples.
_HEADER_TUPLE = re.compile(r"\(b(['\"])([^'\"]+)\1, b(['\"])((?:[^'\"\\]|\\.)*)\3\)")
_CREDENTIAL_HEADERS = {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key"}
# The libraries whose records the filter rewrites: every logger under these names, now and as they are created.
LIBRARY_LOGGERS = ("httpx", "httpcore", "httpx2", "httpcore2", "urllib3", "requests")


def redact_text(text: str, sensitive_headers: frozenset[str] | set[str] = frozenset()) -> str:
    """``text`` with URL passwords, secret-looking query values and credential header values masked."""
    text = _USERINFO.sub(lambda match: f"{match.group(1)}***@", text)
    text = _SECRET_QUERY.sub(lambda match: f"{match.group(1)}{match.group(2)}{match.group(3)}***", text)
    names = _CREDENTIAL_HEADERS | set(sensitive_headers)

    def header(match: re.Match[str]) -> str:
        if match.group(2).lower() not in names:
            return match.group(0)
        quote_name, quote_value = match.group(1), match.group(3)
        return f"(b{quote_name}{match.group(2)}{quote_name}, b{quote_value}***{quote_value})"

    return _HEADER_TUPLE.sub(header, text)


class SecretsFilter(logging.Filter):
    """Rewrites a client library's log record with its secrets masked (see ``redact_text``)."""

    def __init__(self) -> None:
        super().__init__()
        self.sensitive_headers: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 (a broken record is the logging module's to report, unchanged)
            return True
        redacted = redact_text(message, self.sensitive_headers)
        if redacted != message or record.args:
            record.msg, record.args = redacted, None
        return True


SECRETS_FILTER = SecretsFilter()
_install_lock = threading.Lock()


# httpcore's loggers (httpcore2's are named alike).
_HTTPCORE_LOGGERS = ("connection", "http11", "http2", "proxy", "socks")


def install_secrets_filter(sensitive_headers: frozenset[str] = frozenset()) -> None:
    """Attach ``SECRETS_FILTER`` to every logger of the client libraries (idempotent; called per registry).

    A logger's filters see only the records logged to that logger itself, so the filter goes on each one: those
    that exist now, and the names the libraries are known to use (created here if they are not yet).
    """
    with _install_lock:
        SECRETS_FILTER.sensitive_headers.update(name.lower() for name in sensitive_headers)
        names = {name for name in list(logging.root.manager.loggerDict) if name.split(".", 1)[0] in LIBRARY_LOGGERS}
        names.update(
            (
                "httpx",
                "httpx2",
                *(f"{core}.{part}" for core in ("httpcore", "httpcore2") for part in _HTTPCORE_LOGGERS),
                "urllib3.connectionpool",
                "urllib3.connection",
                "urllib3.poolmanager",
                "urllib3.response",
                "urllib3.util.retry",
            )
        )
        for name in names:
            logger = logging.getLogger(name)
            if SECRETS_FILTER not in logger.filters:
                logger.addFilter(SECRETS_FILTER)


def _attempts(count: int) -> str:
    return "1 attempt" if count == 1 else f"{count} attempts"
