"""The httpx (and httpx2) clients of a service with an ``sdk`` section: refusals answered, retried statuses marked
final, SDK timeouts capped (``outbound/_sdk.py`` says why). Built only for such a service: every other one gets
``ServiceClient`` itself, and pays nothing.

Loaded once per library like ``httpx.py`` (``_library.py``): in ``outbound._backends.sdk2`` the names are httpx2's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import _sdk
from .._call import Call
from .._config import SdkConfig
from .._hedge import Hedge
from .._outcome import Outcome
from .._policy import Policy
from ._library import library_of

LIBRARY = library_of(__name__)
if TYPE_CHECKING:  # type-checked against httpx: httpx2 has the same API
    import httpx

    from .httpx import (
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
    InnerTransport = Any


def _cap_timeouts(request: httpx.Request, config: SdkConfig) -> None:
    timeout = request.extensions.get("timeout")
    if timeout:
        request.extensions["timeout"] = {phase: _sdk.cap(value, config) for phase, value in timeout.items()}


def _finish(policy: Policy, call: Call, request: httpx.Request, response: httpx.Response) -> None:
    config = policy.config
    attempts = call.attempts
    if attempts > 1:
        sdk_retry = request.headers.get(_sdk.SDK_RETRY_HEADER)
        if sdk_retry is not None:
            _sdk.both_retried(config.name, request.method, sdk_retry, attempts)
        final = config.sdk is not None and config.sdk.final_responses
        if final and response.status_code in config.retry.status_forcelist:
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
        if self._sdk.timeout_max is not None:
            _cap_timeouts(request, self._sdk)
        return super().handle_request(request)

    def attempt(self, call: Call, request: httpx.Request) -> tuple[httpx.Response | None, Outcome]:
        response, outcome = super().attempt(call, request)
        if self._expected:
            outcome = _sdk.judged(self._expected, request.url.path, outcome)
        return response, outcome

    def deliver(self, call: Call, request: httpx.Request, response: httpx.Response) -> httpx.Response:
        _finish(self._policy, call, request, response)
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
        if self._sdk.timeout_max is not None:
            _cap_timeouts(request, self._sdk)
        return await super().handle_async_request(request)

    async def attempt(
        self, call: Call, request: httpx.Request, hedge: Hedge | None = None
    ) -> tuple[httpx.Response | None, Outcome]:
        response, outcome = await super().attempt(call, request, hedge)
        if self._expected:
            outcome = _sdk.judged(self._expected, request.url.path, outcome)
        return response, outcome

    def deliver(self, call: Call, request: httpx.Request, response: httpx.Response) -> httpx.Response:
        _finish(self._policy, call, request, response)
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


class SdkServiceClient(ServiceClient):
    """``ServiceClient`` of a service with an ``sdk`` section (``answer_refusals``: refusals come back as responses
    the SDKs do not retry)."""

    transport_class = SdkOutboundTransport

    def __init__(self, policy: Policy, *, transport: InnerTransport | None = None) -> None:
        super().__init__(policy, transport=transport)
        sdk = policy.config.sdk
        assert sdk is not None
        self._sdk_config = sdk

    def request(self, method: str, url: httpx.URL | str, **kwargs: Any) -> httpx.Response:
        try:
            return super().request(method, url, **kwargs)
        except _sdk.ANSWERABLE as error:
            if not _sdk.answers(error, self._sdk_config):
                raise
            return _answer(error, self.service_name, _request_of(error))

    def send(self, request: httpx.Request, *, stream: bool = False, **kwargs: Any) -> httpx.Response:
        try:
            return super().send(request, stream=stream, **kwargs)
        except _sdk.ANSWERABLE as error:
            if not _sdk.answers(error, self._sdk_config):
                raise
            return _answer(error, self.service_name, request)


class SdkServiceAsyncClient(ServiceAsyncClient):
    """``ServiceAsyncClient`` doing what ``SdkServiceClient`` does."""

    transport_class = SdkAsyncOutboundTransport

    def __init__(self, policy: Policy, *, loop: object, transport: InnerTransport | None = None) -> None:
        super().__init__(policy, loop=loop, transport=transport)
        sdk = policy.config.sdk
        assert sdk is not None
        self._sdk_config = sdk

    async def request(self, method: str, url: httpx.URL | str, **kwargs: Any) -> httpx.Response:
        try:
            return await super().request(method, url, **kwargs)
        except _sdk.ANSWERABLE as error:
            if not _sdk.answers(error, self._sdk_config):
                raise
            return _answer(error, self.service_name, _request_of(error))

    async def send(self, request: httpx.Request, *, stream: bool = False, **kwargs: Any) -> httpx.Response:
        try:
            return await super().send(request, stream=stream, **kwargs)
        except _sdk.ANSWERABLE as error:
            if not _sdk.answers(error, self._sdk_config):
                raise
            return _answer(error, self.service_name, request)
