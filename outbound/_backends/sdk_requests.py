"""The requests session of a service with an ``sdk`` section (stripe's ``RequestsClient(session=...)``, hvac,
python-gitlab): refusals answered, retried statuses marked final, SDK timeouts capped (``outbound/_sdk.py``).
Built only for such a service: every other one gets ``ServiceSession`` itself.
"""

from __future__ import annotations

import io
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.structures import CaseInsensitiveDict

from .. import _expect, _sdk
from .._call import Call
from .._config import SdkConfig
from .._outcome import Outcome
from .._policy import Policy
from .requests import OutboundAdapter, SendArgs, ServiceSession, _retries, _retries_for


def _capped(timeout: Any, config: SdkConfig) -> Any:
    # None is the service's own settings (nothing asked); a urllib3 Timeout is left as the caller built it.
    if isinstance(timeout, int | float) and not isinstance(timeout, bool):
        return _sdk.cap(float(timeout), config)
    if isinstance(timeout, tuple) and len(timeout) == 2:
        return (_sdk.cap(timeout[0], config), _sdk.cap(timeout[1], config))
    return timeout


class SdkAdapter(OutboundAdapter):
    """``OutboundAdapter`` that caps an SDK's per-call timeouts and marks what outbound retried as final."""

    def __init__(self, policy: Policy) -> None:
        super().__init__(policy)
        sdk = policy.config.sdk
        assert sdk is not None  # built for `sdk` services only
        self._sdk = sdk
        self._expected = _sdk.expected_paths(policy.config)

    def managed_send(self, request: requests.PreparedRequest, args: SendArgs) -> requests.Response:
        if self._sdk.timeout_max is not None:
            args = args._replace(timeout=_capped(args.timeout, self._sdk))
        scope = _expect.current(self._config.name)
        token = None
        if scope is not None and scope.retries is not None and _retries_for(self) is None:
            token = _retries.set((self, scope.retries))  # as a caller's retries= (the adapter reads it)
        try:
            return super().managed_send(request, args)
        finally:
            if token is not None:
                _retries.reset(token)

    def attempt(self, call: Call, send: Any) -> tuple[requests.Response | None, Outcome]:
        response, outcome = super().attempt(call, send)
        scope = _expect.current(self._config.name)
        if self._expected or scope is not None:
            outcome = _sdk.judged(self._expected, scope, urlsplit(send.request.url or "").path, outcome)
        return response, outcome

    def deliver(self, call: Call, send: Any, response: requests.Response) -> requests.Response:
        attempts = call.attempts
        request: requests.PreparedRequest = send.request
        if attempts > 1:
            _sdk.both_retried(self._config.name, call.method, request.headers.get(_sdk.SDK_RETRY_HEADER), attempts)
        if self._sdk.final_responses:
            status = response.status_code
            retried = attempts > 1 and status in self._config.retry.status_forcelist
            scope = _expect.current(self._config.name)
            if retried or _sdk.expects(self._expected, scope, urlsplit(request.url or "").path, status):
                response.headers.update(_sdk.DO_NOT_RETRY)
        return super().deliver(call, send, response)


class SdkServiceSession(ServiceSession):
    """``ServiceSession`` of a service with an ``sdk`` section (``answer_refusals``: refusals come back as responses
    the SDKs do not retry; the error is the response's ``outbound_error``)."""

    adapter_class = SdkAdapter

    def __init__(self, policy: Policy) -> None:
        super().__init__(policy)
        sdk = policy.config.sdk
        assert sdk is not None
        self._sdk_config = sdk

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        try:
            return super().request(method, url, *args, **kwargs)
        except _sdk.ANSWERABLE as error:
            config = self.adapter._config
            if not _sdk.answers(error, self._sdk_config, _sdk.retries_of(config, _expect.current(config.name))):
                raise
            return _answer(error, self.service_name, getattr(error, "request", None), self.join(url))


def _answer(error: Exception, service: str, request: requests.PreparedRequest | None, url: str) -> requests.Response:
    found = _sdk.answer(error, service)
    response = requests.Response()
    response.status_code = found.status
    response.reason = "Outbound Refusal"
    response.headers = CaseInsensitiveDict(found.headers)
    response._content = found.body
    response.raw = io.BytesIO(found.body)  # a streaming caller (stripe's) reads raw
    response.encoding = "utf-8"
    response.url = url
    response.request = request  # type: ignore[assignment]  # None when refused before requests prepared it
    response.outbound_error = error  # type: ignore[attr-defined]
    return response
