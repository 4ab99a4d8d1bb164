"""What a managed ``requests`` session takes from the environment, read once per origin instead of per request.

With ``trust_env`` on (its default), requests reads the environment on every request: it scans ``os.environ`` twice
for proxy variables (``getproxies`` and again for ``no_proxy``), looks for ``~/.netrc`` and ``~/_netrc`` on disk,
and reads ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``. On a loopback GET that is about a third of requests' own work
(~200 us of ~600 us with 35 environment variables, measured for issue 23). httpx reads proxies once, when a client
is built. A managed session reads what requests would for an origin the first time it calls that origin and keeps
the answer: the same proxies, the same netrc credentials, the same CA bundle, without the scans. What changes in the
environment or the netrc file while the process runs is seen by the next registry (a restart), as with httpx.
"""

from __future__ import annotations

import os
from typing import Any

from requests.utils import get_environ_proxies, get_netrc_auth

# Origins remembered per session: a service calls one, an SDK's session a few; a session handed URLs from users
# (webhooks, feeds) forgets them all when this many accumulate, so memory stays bounded.
MAX_ORIGINS = 256


class Environment:
    """requests' per-request reading of the environment, kept per origin (``scheme://host:port``)."""

    __slots__ = ("_auth", "_proxies", "ca_bundle")

    def __init__(self) -> None:
        # What requests puts in `verify` when a call leaves it at True (psf/requests#3829).
        self.ca_bundle: str | None = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        self._proxies: dict[str, dict[str, str]] = {}
        self._auth: dict[str, tuple[str, str] | None] = {}

    def proxies(self, url: str) -> dict[str, str]:
        """The environment's proxies for ``url`` (``{}`` when ``NO_PROXY`` covers its host): the caller copies."""
        origin = _origin(url)
        found = self._proxies.get(origin)
        if found is None:
            if len(self._proxies) >= MAX_ORIGINS:
                self._proxies.clear()
            found = self._proxies[origin] = get_environ_proxies(url)
        return found

    def netrc_auth(self, url: str) -> tuple[str, str] | None:
        """The netrc file's credentials for ``url``'s host, or ``None``."""
        origin = _origin(url)
        try:
            return self._auth[origin]
        except KeyError:
            if len(self._auth) >= MAX_ORIGINS:
                self._auth.clear()
            found: Any = get_netrc_auth(url)
            self._auth[origin] = found
            return found  # type: ignore[no-any-return]


def _origin(url: str) -> str:
    """``scheme://authority`` of an absolute URL, without parsing it (what the environment's answer depends on)."""
    scheme, _, rest = url.partition("://")
    return scheme + "://" + rest.partition("/")[0].partition("?")[0].partition("#")[0]
