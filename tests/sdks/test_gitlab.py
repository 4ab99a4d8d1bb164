"""python-gitlab (8.x) given a managed session (``gitlab.Gitlab(url, session=registry.session("gitlab"))``), against a
local stub of GitLab's API: the basics, and a refusal raised at once while ``retry_transient_errors`` stays off."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import outbound
from tests.conftest import RegistryFactory
from tests.sdks.conftest import FAST_RETRY, service
from tests.sdks.stub import Stub, serve

gitlab = pytest.importorskip("gitlab")

PROJECT = {"id": 1, "name": "outbound", "path_with_namespace": "me/outbound"}


@pytest.fixture
def stub() -> Iterator[Stub]:
    with serve({("GET", "/api/v4/projects/1"): PROJECT}) as running:
        yield running


def _gitlab(registry: outbound.Registry, stub: Stub, **kwargs: Any) -> Any:
    return gitlab.Gitlab(stub.url, private_token="t", session=registry.session("gitlab"), **kwargs)


def _refused(registry: outbound.Registry) -> int:
    snapshot = registry["gitlab"].policy.stats.snapshot()
    return snapshot.short_circuited + sum(snapshot.rejected.values())


def test_a_project_goes_through_the_managed_session(make_registry: RegistryFactory, stub: Stub) -> None:
    registry = make_registry(gitlab=service(stub.url, "requests", sdk=None))
    assert _gitlab(registry, stub).projects.get(1).name == "outbound"
    assert stub.count("/api/v4/projects/1") == 1


def test_a_refusal_is_raised_at_once(make_registry: RegistryFactory, stub: Stub) -> None:
    registry = make_registry(gitlab=service(stub.url, "requests", sdk=None))
    registry.isolate("gitlab")
    with pytest.raises(outbound.CircuitOpenError):
        _gitlab(registry, stub).projects.get(1)
    assert _refused(registry) == 1


def test_with_retry_transient_errors_it_retries_refusals(make_registry: RegistryFactory, stub: Stub) -> None:
    """Why the docs say to leave it off: every refusal is retried (10 times by default, about 100 s)."""
    registry = make_registry(gitlab=service(stub.url, "requests", sdk=None))
    registry.isolate("gitlab")
    with pytest.raises(outbound.CircuitOpenError):
        _gitlab(registry, stub).http_get("/projects/1", retry_transient_errors=True, max_retries=2)
    assert _refused(registry) == 3


def test_outbound_retries_a_failing_upstream_once_per_call(make_registry: RegistryFactory, stub: Stub) -> None:
    registry = make_registry(gitlab=service(stub.url, "requests", sdk=None))
    stub.fail_with = 503
    with pytest.raises(gitlab.exceptions.GitlabGetError):
        _gitlab(registry, stub).projects.get(1)
    assert stub.count("/api/v4/projects/1") == FAST_RETRY["total"] + 1


@pytest.mark.parametrize(
    ("obey_rate_limit", "hits"), [(True, 2 * (FAST_RETRY["total"] + 1)), (False, FAST_RETRY["total"] + 1)]
)
def test_a_429_outbound_gave_up_on_is_retried_by_python_gitlab_unless_told(
    make_registry: RegistryFactory, stub: Stub, obey_rate_limit: bool, hits: int
) -> None:
    """python-gitlab retries 429s (``obey_rate_limit``, on by default, up to ``max_retries=10``) whatever the
    response's headers say: outbound's retried 429 is re-sent. The docs' advice, ``obey_rate_limit=False``, keeps
    one layer."""
    registry = make_registry(gitlab=service(stub.url, "requests", sdk=None))
    stub.fail_with = 429
    with pytest.raises(gitlab.exceptions.GitlabHttpError):
        _gitlab(registry, stub).http_get("/projects/1", obey_rate_limit=obey_rate_limit, max_retries=1)
    assert stub.count("/api/v4/projects/1") == hits


def test_the_sdk_section_cannot_stop_retry_transient_errors(make_registry: RegistryFactory, stub: Stub) -> None:
    """python-gitlab reads no header before retrying: an answered refusal (a 503 saying not to retry) is retried
    as any 503 (the limit docs/sdks.md states)."""
    registry = make_registry(gitlab=service(stub.url, "requests"))
    registry.isolate("gitlab")
    with pytest.raises(gitlab.exceptions.GitlabHttpError):
        _gitlab(registry, stub).http_get("/projects/1", retry_transient_errors=True, max_retries=2)
    assert _refused(registry) == 3


def test_obey_rate_limit_false_on_a_manager_call(make_registry: RegistryFactory, stub: Stub) -> None:
    registry = make_registry(gitlab=service(stub.url, "requests", sdk=None))
    stub.fail_with = 429
    with pytest.raises(gitlab.exceptions.GitlabGetError):
        _gitlab(registry, stub).projects.get(1, obey_rate_limit=False)
    assert stub.count("/api/v4/projects/1") == FAST_RETRY["total"] + 1
