"""The call log: one ``outbound.call`` record per logical call, with its facts in the record for JSON formatters.

Real calls against the shared upstream, through the requests session, the httpx client and the async client on
both transports: a success at DEBUG, a failure at INFO after its retries (still one record), a refusal by an open
breaker at DEBUG, and never the query string or the URL's password.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import pytest

import outbound
from outbound import Registry
from tests.conftest import RegistryFactory
from tests.core.conftest import ASYNC_KINDS, HTTPX_LIBRARIES, SYNC_KINDS, client_of, with_async_transports
from tests.upstream import Upstream


def _call(registry: Registry, kind: str, path: str) -> None:
    """One GET of ``path`` through ``kind``'s client; an error the call raises is part of the scenario."""
    with contextlib.suppress(outbound.CallError):
        if kind == "requests":
            registry.session("api").get(path)
        elif kind in HTTPX_LIBRARIES:
            registry.client("api").get(path)
        else:

            async def once() -> None:
                await registry.async_client("api").get(path)

            asyncio.run(once())


def _call_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "outbound.call"]


def _facts(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in record.__dict__.items() if key.startswith("outbound_")}


@pytest.fixture
def api(make_registry: RegistryFactory, upstream: Upstream, kind: str, transport: str) -> Registry:
    return make_registry(
        api={
            "base_url": upstream.url.replace("http://", "http://svc:PASSWORD@"),
            "client": client_of(kind),
            "transport": transport,
            "retry": {"total": 2, "backoff_factor": 0},
            "breaker": {"fail_max": 3, "reset_timeout": 60},
        }
    )


@pytest.mark.parametrize(("kind", "transport"), with_async_transports([*SYNC_KINDS, *ASYNC_KINDS]))
def test_a_success_is_one_debug_record_with_its_facts(
    api: Registry, upstream: Upstream, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="outbound.call"):
        _call(api, kind, "ok?token=SECRET&page=2")

    (record,) = _call_records(caplog)
    assert record.levelno == logging.DEBUG
    facts = _facts(record)
    assert facts.pop("outbound_duration_ms") >= 0.0
    assert facts == {
        "outbound_service": "api",
        "outbound_method": "GET",
        "outbound_url": upstream.url + "ok",
        "outbound_status": 200,
        "outbound_error": None,
        "outbound_attempts": 1,
    }
    message = record.getMessage()
    assert message.startswith(f"api: GET {upstream.url}ok -> 200 in ")
    assert message.endswith(" ms (1 attempt)")


@pytest.mark.parametrize(("kind", "transport"), with_async_transports([*SYNC_KINDS, *ASYNC_KINDS]))
def test_a_failure_after_retries_is_one_info_record(
    api: Registry, upstream: Upstream, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="outbound.call"):
        _call(api, kind, "status/503?token=SECRET")

    assert upstream.hits == 3, "the call was retried twice"
    (record,) = _call_records(caplog)
    assert record.levelno == logging.INFO
    facts = _facts(record)
    assert facts["outbound_status"] == 503
    assert facts["outbound_error"] == "HTTPStatus"
    assert facts["outbound_attempts"] == 3
    assert facts["outbound_url"] == upstream.url + "status/503"
    assert "api: GET failed: HTTPStatus: " in record.getMessage()
    assert "(3 attempts, " in record.getMessage()


@pytest.mark.parametrize(("kind", "transport"), with_async_transports([*SYNC_KINDS, *ASYNC_KINDS]))
def test_an_error_without_a_response_names_its_class(
    api: Registry, upstream: Upstream, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="outbound.call"):
        _call(api, kind, "garbage")

    (record,) = _call_records(caplog)
    assert record.levelno == logging.INFO
    facts = _facts(record)
    assert facts["outbound_status"] is None
    assert facts["outbound_error"] is not None
    assert facts["outbound_error"] != "HTTPStatus"
    assert facts["outbound_attempts"] == 3


@pytest.mark.parametrize(("kind", "transport"), with_async_transports([*SYNC_KINDS, *ASYNC_KINDS]))
def test_a_call_refused_by_the_open_breaker_is_a_debug_record(
    api: Registry, upstream: Upstream, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    _call(api, kind, "status/503")  # three failed attempts: fail_max 3 opens the breaker
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="outbound.call"):
        _call(api, kind, "ok")

    (record,) = _call_records(caplog)
    assert record.levelno == logging.DEBUG
    assert record.getMessage() == "api: GET refused before sending: circuit_open"
    assert _facts(record) == {
        "outbound_service": "api",
        "outbound_method": "GET",
        "outbound_error": "circuit_open",
        "outbound_attempts": 0,
    }


@pytest.mark.parametrize(("kind", "transport"), with_async_transports(["requests"]))
def test_at_info_only_failures_are_written(
    api: Registry, upstream: Upstream, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="outbound.call"):
        _call(api, kind, "ok")
        _call(api, kind, "status/503")
        _call(api, kind, "ok")  # refused: the breaker is open

    assert [record.levelno for record in _call_records(caplog)] == [logging.INFO]
    assert all("PASSWORD" not in record.getMessage() for record in caplog.records)
