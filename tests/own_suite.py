"""Run httpx's own client tests against managed clients: ``python3 tests/own_suite.py SOURCE [--library httpx2]``.

SOURCE is the ``tests`` folder of httpx's source distribution (``pip download --no-binary :all: --no-deps
httpx==0.28.1``, unpacked); its tests also need ``chardet`` (``pip install --target DIR chardet`` and
``PYTHONPATH=DIR``). For ``--library httpx2`` the tests are rewritten to httpx2's names (``httpx`` ->
``httpx2``, ``httpcore`` -> ``httpcore2``), as httpx2 is httpx's fork with the same API. The suite runs twice in a
copy of its own (nothing is written here): once as it is (the baseline: a test that fails on the plain library is
left out) and once with the library's ``Client`` and ``AsyncClient`` replaced by clients of a registry, each built
from the test's arguments (``Registry(transports=...)`` for a ``transport=``, ``base_url``, ``verify``,
``proxy``...) with the policy's own features off (no retries, no breaker, no deadline), and each registry closed
at the end of its test, so what is left is what a managed client does differently. Prints the tests that pass on
the plain client and fail on the managed one.

Not part of the test suite (it needs the library's sources, and takes a minute): the results, and the difference
each failing test meets, are in ``docs/differences.md``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

# The tests of httpx that use its clients (the rest test models and helpers, which outbound does not touch).
CLIENT_TESTS = ("client", "test_timeouts.py", "test_asgi.py", "test_wsgi.py", "test_auth.py", "test_api.py")

PLUGIN = '''
"""Replaces {lib}.Client / AsyncClient by managed clients (tests/own_suite.py)."""
import ssl

import pytest
import {lib}

import outbound
from outbound._backends._library import LIBRARIES

LIBRARIES["{lib}"].backend("httpx")  # the managed classes subclass the real ones: built before they are replaced
_REAL = {{"Client": {lib}.Client, "AsyncClient": {lib}.AsyncClient}}
_BUILT_BY = ("auth", "params", "headers", "cookies", "timeout", "follow_redirects", "max_redirects", "event_hooks",
             "default_encoding")


def _managed(kind, args, kwargs):
    assert not args, "httpx's clients take keyword arguments only"
    service = {{"client": "{lib}", "base_url": "http://outbound.invalid/", "retry": None, "pause": None,
               "breaker": {{"fail_max": 1000000}}, "timeout": {{"total": None}}}}
    if kwargs.get("base_url"):
        service["base_url"] = str(kwargs["base_url"])
    verify = kwargs.get("verify", True)
    if isinstance(verify, ssl.SSLContext):
        service["ssl_context"] = verify
    elif verify is False or isinstance(verify, str):
        service["verify"] = verify
    for key in ("http2", "trust_env"):
        if key in kwargs:
            service[key] = kwargs[key]
    if kwargs.get("proxy") is not None:
        service["proxy"] = str(kwargs["proxy"].url if hasattr(kwargs["proxy"], "url") else kwargs["proxy"])
    limits = kwargs.get("limits")
    if limits is not None and limits.max_connections is not None:
        service["pool"] = {{"max_connections": limits.max_connections}}
    transports = {{"svc": kwargs["transport"]}} if kwargs.get("transport") is not None else None
    registry = outbound.Registry.from_mapping({{"services": {{"svc": service}}}}, transports=transports)
    client = registry.client("svc") if kind == "Client" else registry.async_client("svc")
    client.base_url = kwargs.get("base_url", "")
    client.timeout = kwargs.get("timeout", {lib}._config.DEFAULT_TIMEOUT_CONFIG)
    for key in _BUILT_BY:
        if key in kwargs and key != "timeout":
            setattr(client, key, kwargs[key])
    if kwargs.get("mounts"):
        client._mounts.update({{{lib}._utils.URLPattern(key): value for key, value in kwargs["mounts"].items()}})
        client._mounts = dict(sorted(client._mounts.items()))
    _REGISTRIES.append(registry)
    return client


_REGISTRIES = []


@pytest.fixture(autouse=True)
def _close_registries():
    # close() on a managed client does nothing: the registry closes its pooled sockets, at the test's end.
    yield
    while _REGISTRIES:
        _REGISTRIES.pop().close()


class _Meta(type):
    def __instancecheck__(cls, obj):
        return isinstance(obj, _REAL[cls.__name__])

    def __subclasscheck__(cls, sub):
        return issubclass(sub, _REAL[cls.__name__])


class Client(metaclass=_Meta):
    def __new__(cls, *args, **kwargs):
        return _managed("Client", args, kwargs)


class AsyncClient(metaclass=_Meta):
    def __new__(cls, *args, **kwargs):
        return _managed("AsyncClient", args, kwargs)


{lib}.Client = Client
{lib}.AsyncClient = AsyncClient
'''


def prepare(source: Path, library: str, into: Path) -> Path:
    """A copy of httpx's tests for ``library`` in ``into``; returns the folder to run pytest in."""
    shutil.copytree(source, into / "tests")
    if library != "httpx":
        for path in (into / "tests").rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            text = re.sub(r"\bhttpcore\b", "httpcore2", re.sub(r"\bhttpx\b", "httpx2", text))
            path.write_text(text, encoding="utf-8")
    (into / "pytest.ini").write_text(
        "[pytest]\nfilterwarnings =\n    error\n    ignore::DeprecationWarning\n"
        "markers =\n    copied_from(source, changes=None): copied\n    network: needs the network\n",
        encoding="utf-8",
    )
    (into / "outbound_managed.py").write_text(PLUGIN.format(lib=library), encoding="utf-8")
    return into


def run(folder: Path, *, managed: bool, report: str) -> dict[str, str]:
    """Outcome ("passed", "failed", "skipped") of each test id."""
    command = [
        sys.executable,
        "-m",
        "pytest",
        *CLIENT_PATHS,
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        "-p",
        "no:outbound",
        "-p",
        "no:pytest_httpx2",
        "--junitxml",
        report,
    ]
    if managed:
        command += ["-p", "outbound_managed"]
    subprocess.run(command, cwd=folder, check=False, timeout=1800, env=_environment(folder))
    outcomes: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):  # noqa: S314 (pytest's own report, written just now)
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        outcomes[name] = "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
    return outcomes


CLIENT_PATHS = tuple(f"tests/{name}" for name in CLIENT_TESTS)


def _environment(folder: Path) -> dict[str, str]:
    import os

    repo = Path(__file__).resolve().parent.parent
    extra = [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []  # the tests' own needs (chardet)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(repo), *extra])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="the tests folder of httpx's source distribution")
    parser.add_argument("--library", choices=("httpx", "httpx2"), default="httpx")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as plain_dir, tempfile.TemporaryDirectory() as managed_dir:
        plain = run(
            prepare(arguments.source, arguments.library, Path(plain_dir)),
            managed=False,
            report=str(Path(plain_dir) / "plain.xml"),
        )
        managed = run(
            prepare(arguments.source, arguments.library, Path(managed_dir)),
            managed=True,
            report=str(Path(managed_dir) / "managed.xml"),
        )
    baseline = {name for name, outcome in plain.items() if outcome == "passed"}
    failing = sorted(name for name in baseline if managed.get(name) != "passed")
    print(
        f"\n{arguments.library}: {len(plain)} tests; {len(baseline)} pass on the plain client; "
        f"{len(baseline) - len(failing)} of those pass on the managed one, {len(failing)} fail:"
    )
    for name in failing:
        print(f"  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
