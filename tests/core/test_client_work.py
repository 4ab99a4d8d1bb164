"""The work a managed httpx client does once instead of per request (``outbound/_backends/_client_work.py``).

Each shortcut must be invisible: a changed ``base_url`` is followed, every distinct URL keeps its own path and query,
the memory stays bounded, and cookies a caller's jar accepts are still stored in that same jar. The count of jar
visits shows the shortcut itself (on httpx; httpx2 skips cookieless responses on its own).
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
from collections.abc import Callable
from typing import Any

import pytest

from outbound._backends._client_work import MERGED_URLS_KEPT
from tests.conftest import RegistryFactory
from tests.core.conftest import HTTPX_LIBRARIES
from tests.upstream import Upstream

# Each test drives one managed client, sync or async, through the same steps.
KINDS = [(library, mode) for library in HTTPX_LIBRARIES for mode in ("sync", "async")]


class CountingJar(http.cookiejar.CookieJar):
    """A caller's jar with the default policy (it stores what it is sent) that counts the responses it examined."""

    def __init__(self) -> None:
        super().__init__()
        self.examined = 0

    def extract_cookies(self, response: Any, request: Any) -> None:
        self.examined += 1
        super().extract_cookies(response, request)


def _drive(
    make_registry: RegistryFactory, upstream: Upstream, library: str, mode: str, steps: Callable[[Any, Any], Any]
) -> None:
    """Run ``steps(client, get)`` on the service's managed client, where ``get(url)`` returns the response."""
    registry = make_registry(api={"base_url": upstream.url + "v1/", "client": library})
    if mode == "sync":
        client = registry.client("api")
        steps(client, client.get)
        return

    async def run() -> None:
        client = registry.async_client("api")

        def get(url: str) -> Any:
            # The steps are written for a sync get: each request runs to completion on the client's own loop.
            return asyncio.run_coroutine_threadsafe(client.get(url), loop).result(timeout=10)

        loop = asyncio.get_running_loop()
        await asyncio.to_thread(steps, client, get)

    asyncio.run(run())


def _echoed_path(response: Any) -> str:
    assert response.status_code == 200
    path: str = json.loads(response.content)["path"]
    return path


@pytest.mark.parametrize(("library", "mode"), KINDS)
def test_a_changed_base_url_is_followed(
    make_registry: RegistryFactory, upstream: Upstream, library: str, mode: str
) -> None:
    def steps(client: Any, get: Callable[[str], Any]) -> None:
        assert _echoed_path(get("echo?n=1")) == "/v1/echo?n=1"
        assert _echoed_path(get("echo?n=1")) == "/v1/echo?n=1"  # the remembered merge
        assert _echoed_path(get("echo?n=2")) == "/v1/echo?n=2"  # another string, its own URL
        client.base_url = upstream.url + "v2/"
        assert _echoed_path(get("echo?n=1")) == "/v2/echo?n=1"
        assert _echoed_path(get(upstream.url + "v3/echo")) == "/v3/echo"  # absolute URLs pass through

    _drive(make_registry, upstream, library, mode, steps)


@pytest.mark.parametrize(("library", "mode"), KINDS)
def test_remembered_urls_stay_bounded(
    make_registry: RegistryFactory, upstream: Upstream, library: str, mode: str
) -> None:
    def steps(client: Any, get: Callable[[str], Any]) -> None:
        for n in range(MERGED_URLS_KEPT + 20):  # ids in paths: every URL is new
            assert get(f"ok?id={n}").status_code == 200
            assert len(client._merged_urls) <= MERGED_URLS_KEPT
        assert _echoed_path(get("echo?id=last")) == "/v1/echo?id=last"

    _drive(make_registry, upstream, library, mode, steps)


@pytest.mark.parametrize(("library", "mode"), KINDS)
def test_a_callers_jar_still_gets_its_cookies_and_only_cookie_answers_reach_it(
    make_registry: RegistryFactory, upstream: Upstream, library: str, mode: str
) -> None:
    jar = CountingJar()

    def steps(client: Any, get: Callable[[str], Any]) -> None:
        client.cookies = jar  # a caller's own jar, with a policy that stores cookies
        assert client.cookies.jar is jar  # the same jar, not a copy
        for _ in range(3):
            assert get("ok").status_code == 200
        assert jar.examined == 0  # no Set-Cookie: the jar is not visited
        assert get("set-cookie?session=alice").status_code == 200
        assert jar.examined == 1
        assert {cookie.name: cookie.value for cookie in jar} == {"session": "alice"}
        assert json.loads(get("cookies").content) == {"cookie": "session=alice"}

    _drive(make_registry, upstream, library, mode, steps)
