"""The requests session of a service with an ``sdk`` section (stripe's ``RequestsClient(session=...)``, hvac,
python-gitlab): refusals answered, retried statuses marked final, SDK timeouts capped (``outbound/_sdk.py``).
Built only for such a service: every other one gets ``ServiceSession`` itself.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.structures import CaseInsensitiveDict

from .. import _sdk
from .._call import Call
from .._config import SdkConfig
from .._outcome import Outcome
from .._policy import Policy
from .requests import OutboundAdapter, ServiceSession


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

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: bool | str = True,
        cert: Any = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        if self._sdk.timeout_max is not None:
            timeout = _capped(timeout, self._sdk)
        return super().send(request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies)

    def attempt(self, call: Call, send: Any) -> tuple[requests.Response | None, Outcome]:
        response, outcome = super().attempt(call, send)
        if self._expected:
            outcome = _sdk.judged(self._expected, urlsplit(send.request.url or "").path, outcome)
        return response, outcome

    def deliver(self, call: Call, send: Any, response: requests.Response) -> requests.Response:
        attempts = call.attempts
        if attempts > 1:
            request: requests.PreparedRequest = send.request
            _sdk.both_retried(self._config.name, call.method, request.headers.get(_sdk.SDK_RETRY_HEADER), attempts)
            if self._sdk.final_responses and response.status_code in self._config.retry.status_forcelist:
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
            if not _sdk.answers(error, self._sdk_config):
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
