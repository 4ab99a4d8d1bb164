"""Work an httpx client repeats on every request that a long-lived shared client can do once.

A managed client lives as long as the process and sends most of its requests to a handful of paths under one
``base_url``, so two of httpx's per-request costs are mostly repeats (measured with a transport that answers at once:
together ~40 % of a bare ``httpx.Client.get``'s own time):

- **Merging the URL with ``base_url``** parses the relative URL and then the merged one (``URL(url)`` and
  ``base_url.copy_with(...)``: two full parses). The merged ``httpx.URL`` depends only on the string and
  ``base_url``, and a URL is immutable, so it is kept per string until ``base_url`` changes.
- **Storing cookies** builds urllib's request and response wrappers and takes the jar's lock on every response, even
  one without ``Set-Cookie`` (most API answers). httpx2 skips that case in ``Cookies.extract_cookies`` itself; this
  does the same for httpx.

Nothing the caller sees changes: the same URL, the same cookies stored, and ``client.cookies`` still wraps the jar
the caller gave (httpx's own tests of both run against managed clients: ``tests/own_suite.py``).

Loaded once per httpx library, like ``httpx.py`` (``_library.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._library import HTTPX, library_of

LIBRARY = library_of(__name__)
if TYPE_CHECKING:  # type-checked against httpx: httpx2 has the same API
    import httpx
else:
    httpx = LIBRARY.httpx()

__all__ = ["SharedClientWork"]

# How many distinct relative URLs a client remembers. Paths that carry ids (``/users/123``) are each new; past this many
# the memory starts again, so such a client pays one dict insert per request and never grows.
MERGED_URLS_KEPT = 256


class _CookielessSkip(httpx.Cookies):
    """httpx's cookies, skipping the jar for a response that sets none (what httpx2's own ``Cookies`` does)."""

    def extract_cookies(self, response: httpx.Response) -> None:
        headers = response.headers
        if "set-cookie" in headers or "set-cookie2" in headers:
            super().extract_cookies(response)


def _sharing_jar(cookies: httpx.Cookies) -> httpx.Cookies:
    # The same jar, not a copy: a CookieJar the caller passed stays the one the client fills.
    if LIBRARY is not HTTPX:
        return cookies  # httpx2 skips cookieless responses itself
    skipping = _CookielessSkip()
    skipping.jar = cookies.jar
    return skipping


class SharedClientWork:
    """Mixed into the managed ``httpx.Client`` / ``AsyncClient`` ahead of httpx's class."""

    _cookies: httpx.Cookies
    _merged_urls: dict[str, tuple[httpx.URL, httpx.URL]]

    def _keep_shared_work(self) -> None:
        """Called at the end of ``__init__``, once httpx has set the client's cookies and ``base_url``."""
        self._cookies = _sharing_jar(self._cookies)
        self._merged_urls = {}

    @property
    def cookies(self) -> httpx.Cookies:
        return self._cookies

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        self._cookies = _sharing_jar(httpx.Cookies(cookies))

    def _merge_url(self, url: httpx.URL | str) -> httpx.URL:
        if not isinstance(url, str):
            return super()._merge_url(url)  # type: ignore[misc,no-any-return]
        base: httpx.URL = self.base_url  # type: ignore[attr-defined]
        merged = self._merged_urls
        kept = merged.get(url)
        # Each entry remembers the base it was merged with: ``client.base_url = ...`` makes a new URL object, and an
        # entry of the old one is then merged again. No lock: each dict read and write is atomic, and two threads
        # racing on one string at worst both merge it (an entry stored across a ``base_url`` change is never hit).
        if kept is not None and kept[0] is base:
            return kept[1]
        if len(merged) >= MERGED_URLS_KEPT:
            merged.clear()
        found: httpx.URL = super()._merge_url(url)  # type: ignore[misc]
        merged[url] = (base, found)
        return found
