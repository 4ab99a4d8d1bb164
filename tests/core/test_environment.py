"""A managed requests session reads the environment once per origin, and what it reads is what requests would.

requests reads proxy variables, ``NO_PROXY``, ``~/.netrc`` and the CA bundle variables on every request; a managed
session keeps the answer per origin (``outbound/_backends/_environment.py``), as httpx reads proxies once per
client. The answers must be requests' own; only when they are read differs.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from outbound._backends import _environment
from tests.conftest import RegistryFactory
from tests.proxy import ForwardingProxy
from tests.upstream import Upstream


def _netrc(path: Path, host: str, login: str, password: str) -> Path:
    path.write_text(f"machine {host}\nlogin {login}\npassword {password}\n")
    path.chmod(0o600)
    return path


def _basic(login: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode()


@pytest.fixture
def netrc_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = _netrc(tmp_path / "netrc", "127.0.0.1", "alice", "s3cret")
    monkeypatch.setenv("NETRC", str(path))
    return path


def test_netrc_credentials_are_sent_as_requests_sends_them(
    upstream: Upstream, make_registry: RegistryFactory, netrc_file: Path
) -> None:
    session = make_registry(api={"base_url": upstream.url}).session("api")
    assert session.get("echo").json()["headers"]["authorization"] == _basic("alice", "s3cret")
    # The caller's own auth, and the session's, still win over the netrc file.
    assert session.get("echo", auth=("bob", "pw")).json()["headers"]["authorization"] == _basic("bob", "pw")
    session.auth = ("carol", "pw")
    assert session.get("echo").json()["headers"]["authorization"] == _basic("carol", "pw")


def test_the_netrc_file_is_read_once_per_origin(
    upstream: Upstream, make_registry: RegistryFactory, netrc_file: Path
) -> None:
    session = make_registry(api={"base_url": upstream.url}).session("api")
    assert session.get("echo").json()["headers"]["authorization"] == _basic("alice", "s3cret")
    _netrc(netrc_file, "127.0.0.1", "mallory", "changed")
    # requests would read the file again for every request; the session keeps the origin's answer.
    assert session.get("echo").json()["headers"]["authorization"] == _basic("alice", "s3cret")


def test_no_netrc_entry_sends_no_credentials(
    upstream: Upstream, make_registry: RegistryFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NETRC", str(_netrc(tmp_path / "netrc", "elsewhere.example", "alice", "pw")))
    session = make_registry(api={"base_url": upstream.url}).session("api")
    assert "authorization" not in session.get("echo").json()["headers"]


def test_trust_env_false_reads_no_netrc(upstream: Upstream, make_registry: RegistryFactory, netrc_file: Path) -> None:
    session = make_registry(api={"base_url": upstream.url, "trust_env": False}).session("api")
    assert "authorization" not in session.get("echo").json()["headers"]
    session.trust_env = True  # requests' attribute keeps its meaning on a managed session
    assert session.get("echo").json()["headers"]["authorization"] == _basic("alice", "s3cret")


def test_environment_proxies_are_read_once_per_origin(
    upstream: Upstream, proxy: ForwardingProxy, make_registry: RegistryFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    session = make_registry(api={"base_url": upstream.url}).session("api")
    assert session.get("ok").status_code == 200
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert session.get("ok").status_code == 200
    assert proxy.requests == 2  # still through the proxy: the origin's answer was kept


def test_a_calls_own_no_proxy_is_honoured_for_that_call(
    upstream: Upstream, proxy: ForwardingProxy, make_registry: RegistryFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    session = make_registry(api={"base_url": upstream.url}).session("api")
    assert session.get("ok", proxies={"no_proxy": "127.0.0.1"}).status_code == 200
    assert proxy.requests == 0
    assert session.get("ok").status_code == 200
    assert proxy.requests == 1


def test_the_ca_bundle_variables_are_read_as_requests_reads_them(
    make_registry: RegistryFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/env/bundle.pem")
    session = make_registry(api={"base_url": "https://api.example/"}).session("api")
    merged = session.merge_environment_settings("https://api.example/x", {}, None, None, None)
    assert merged["verify"] == "/env/bundle.pem"
    assert session.merge_environment_settings("https://api.example/x", {}, None, False, None)["verify"] is False
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/elsewhere.pem")  # read once, with the rest of the environment
    assert session.merge_environment_settings("https://api.example/x", {}, None, True, None)["verify"] == (
        "/env/bundle.pem"
    )


def test_the_origins_remembered_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_environment, "MAX_ORIGINS", 3)
    environment = _environment.Environment()
    for port in range(10):
        environment.proxies(f"http://h{port}.example:80/x")
        environment.netrc_auth(f"http://h{port}.example:80/x")
    assert len(environment._proxies) <= 3
    assert len(environment._auth) <= 3


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://a.example/x/y?q=1", "http://a.example"),
        ("https://u:p@a.example:8443?q", "https://u:p@a.example:8443"),
        ("http://a.example#frag", "http://a.example"),
        ("http://a.example", "http://a.example"),
    ],
)
def test_the_origin_is_what_the_environment_answer_depends_on(url: str, origin: str) -> None:
    assert _environment._origin(url) == origin
