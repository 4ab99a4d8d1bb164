"""Origins, and the one rule for when a redirect may carry the credentials meant for the origin it leaves."""

from __future__ import annotations

from urllib.parse import urlsplit

Origin = tuple[str, str, int | None]
"""``(scheme, host, port)``, lower case, with the scheme's default port filled in."""

DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(scheme: str, host: str, port: int | None) -> Origin:
    scheme = scheme.lower()
    return scheme, host.lower(), port or DEFAULT_PORTS.get(scheme)


def url_origin(url: str | None) -> Origin:
    """The origin of a URL string (an unparseable port counts as none)."""
    parts = urlsplit(url or "")
    try:
        port = parts.port
    except ValueError:
        port = None
    return origin(parts.scheme, parts.hostname or "", port)


def credentials_follow(old: Origin, new: Origin) -> bool:
    """Whether a redirect from ``old`` to ``new`` may carry the credentials meant for ``old``: the same origin, or the
    same host upgraded from http on port 80 to https on port 443 — the one change of origin requests and httpx both
    allow (``Session.should_strip_auth``, httpx's ``_is_https_redirect``): the upgrade protects them better."""
    if old == new:
        return True
    return old[1] == new[1] and old[0] == "http" and old[2] == 80 and new[0] == "https" and new[2] == 443
