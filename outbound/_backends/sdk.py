"""The httpx (and httpx2) clients of a service with an ``sdk`` section: refusals answered, retried statuses marked
final, SDK timeouts capped (``outbound/_sdk.py`` says why). Built only for such a service: every other one gets
``ServiceClient`` itself, and pays nothing.

Loaded once per library like ``httpx.py`` (``_library.py``): in ``outbound._backends.sdk2`` the names are httpx2's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import _expect, _sdk
from .._call import Call
from .._config import SdkConfig, ServiceConfig
from .._hedge import Hedge
from .._outcome import Outcome
from .._policy import Policy
from ._library import library_of

LIBRARY = library_of(__name__)
if TYPE_CHECKING:  # type-checked against httpx: httpx2 has the same API
    import httpx

    from .httpx import (
        RETRIES,
        AsyncOutboundTransport,
        InnerTransport,
        OutboundTransport,
        ServiceAsyncClient,
        ServiceClient,
    )
else:
    httpx = LIBRARY.httpx()
    _base = LIBRARY.backend("httpx")
    OutboundTransport = _base.OutboundTransport
    AsyncOutboundTransport = _base.AsyncOutboundTransport
    ServiceClient = _base.ServiceClient
    ServiceAsyncClient = _base.ServiceAsyncClient
    RETRIES = _base.RETRIES
    InnerTransport = Any


def _prepare(request: httpx.Request, config: SdkConfig, service: str) -> None:
    if config.timeout_max is not None:
        timeout = request.extensions.get("timeout")
        if timeout:
            request.extensions["timeout"] = {phase: _sdk.cap(value, config) for phase, value in timeout.items()}
    scope = _expect.current(service)
    if scope is not None and scope.retries is not None and RETRIES not in request.extensions:
        request.extensions[RETRIES] = scope.retries


def _judged(expected: _sdk.Expected, service: str, request: httpx.Request, outcome: Outcome) -> Outcome:
    scope = _expect.current(service)
    if not expected and scope is None:
        return outcome
    return _sdk.judged(expected, scope, request.url.path, outcome)


def _finish(
    policy: Policy, expected: _sdk.Expected, call: Call, request: httpx.Request, response: httpx.Response
) -> None:
    config = policy.config
    attempts = call.attempts
    if attempts > 1:
        sdk_retry = request.headers.get(_sdk.SDK_RETRY_HEADER)
        if sdk_retry is not None:
            _sdk.both_retried(config.name, request.method, sdk_retry, attempts)
    if config.sdk is None or not config.sdk.final_responses:
        return
    status = response.status_code
    retried = attempts > 1 and status in config.retry.status_forcelist
    if retried or _sdk.expects(expected, _expect.current(config.name), request.url.path, status):
        response.headers.update(_sdk.DO_NOT_RETRY)


class SdkOutboundTransport(OutboundTransport):
    """``OutboundTransport`` that caps an SDK's per-call timeouts and marks what outbound retried as final."""

    def __init__(self, policy: Policy, *, proxy: str | None = None, inner: InnerTransport | None = None) -> None:
        super().__init__(policy, proxy=proxy, inner=inner)
        sdk = policy.config.sdk
        assert sdk is not None  # built for `sdk` services only
        self._sdk = sdk
        self._expected = _sdk.expected_paths(policy.config)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        _prepare(request, self._sdk, self._policy.config.name)
        return super().handle_request(request)

    def attempt(self, call: Call, request: httpx.Request) -> tuple[httpx.Response | None, Outcome]:
        response, outcome = super().attempt(call, request)
        return response, _judged(self._expected, self._policy.config.name, request, outcome)

    def deliver(self, call: Call, request: httpx.Request, response: httpx.Response) -> httpx.Response:
        _finish(self._policy, self._expected, call, request, response)
        return super().deliver(call, request, response)


class SdkAsyncOutboundTransport(AsyncOutboundTransport):
    """``AsyncOutboundTransport`` doing what ``SdkOutboundTransport`` does."""

    def __init__(self, policy: Policy, *, proxy: str | None = None, inner: InnerTransport | None = None) -> None:
        super().__init__(policy, proxy=proxy, inner=inner)
        sdk = policy.config.sdk
        assert sdk is not None
        self._sdk = sdk
        self._expected = _sdk.expected_paths(policy.config)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        _prepare(request, self._sdk, self._policy.config.name)
        return await super().handle_async_request(request)

    async def attempt(
        self, call: Call, request: httpx.Request, hedge: Hedge | None = None
    ) -> tuple[httpx.Response | None, Outcome]:
        response, outcome = await super().attempt(call, request, hedge)
        return response, _judged(self._expected, self._policy.config.name, request, outcome)

    def deliver(self, call: Call, request: httpx.Request, response: httpx.Response) -> httpx.Response:
        _finish(self._policy, self._expected, call, request, response)
        return super().deliver(call, request, response)


def _answer(error: Exception, service: str, request: httpx.Request | None) -> httpx.Response:
    found = _sdk.answer(error, service)
    return httpx.Response(
        found.status,
        headers=found.headers,
        content=found.body,
        request=request,
        extensions={_sdk.EXTENSION: error},
    )


def _request_of(error: Exception) -> httpx.Request | None:
    try:
        return getattr(error, "request", None)
    except RuntimeError:  # httpx's: an error raised without a request
        return None


class _AnswersFor:
    """Which errors a client of a service with an ``sdk`` section answers instead of raising."""

    _policy_config: ServiceConfig
    _sdk_config: SdkConfig

    def _answer_for(self, policy: Policy) -> None:
        self._policy_config = policy.config
        sdk = policy.config.sdk
        assert sdk is not None
        self._sdk_config = sdk

    def _answers(self, error: Exception) -> bool:
        config = self._policy_config
        return _sdk.answers(error, self._sdk_config, _sdk.retries_of(config, _expect.current(config.name)))


class SdkServiceClient(_AnswersFor, ServiceClient):
    """``ServiceClient`` of a service with an ``sdk`` section (``answer_refusals``: refusals come back as responses
    the SDKs do not retry)."""

    transport_class = SdkOutboundTransport

    def __init__(self, policy: Policy, *, transport: InnerTransport | None = None) -> None:
        super().__init__(policy, transport=transport)
        self._answer_for(policy)

    def request(self, method: str, url: httpx.URL | str, **kwargs: Any) -> httpx.Response:
        try:
            return super().request(method, url, **kwargs)
        except _sdk.ANSWERABLE as error:
            if not self._answers(error):
                raise
            return _answer(error, self.service_name, _request_of(error))

    def send(self, request: httpx.Request, *, stream: bool = False, **kwargs: Any) -> httpx.Response:
        try:
            return super().send(request, stream=stream, **kwargs)
        except _sdk.ANSWERABLE as error:
            if not self._answers(error):
                raise
            return _answer(error, self.service_name, request)


class SdkServiceAsyncClient(_AnswersFor, ServiceAsyncClient):
    """``ServiceAsyncClient`` doing what ``SdkServiceClient`` does."""

    transport_class = SdkAsyncOutboundTransport

    def __init__(self, policy: Policy, *, loop: object, transport: InnerTransport | None = None) -> None:
        super().__init__(policy, loop=loop, transport=transport)
        self._answer_for(policy)

    async def request(self, method: str, url: httpx.URL | str, **kwargs: Any) -> httpx.Response:
        try:
            return await super().request(method, url, **kwargs)
        except _sdk.ANSWERABLE as error:
            if not self._answers(error):
                raise
            return _answer(error, self.service_name, _request_of(error))

    async def send(self, request: httpx.Request, *, stream: bool = False, **kwargs: Any) -> httpx.Response:
        try:
            return await super().send(request, stream=stream, **kwargs)
        except _sdk.ANSWERABLE as error:
            if not self._answers(error):
                raise
            return _answer(error, self.service_name, request)
