"""Run a library's own client tests against managed clients: ``python3 tests/own_suite.py SOURCE [--suite ...]``.

Two suites. ``--suite httpx`` (the default): SOURCE is the ``tests`` folder of httpx's source distribution (``pip
download --no-binary :all: --no-deps httpx==0.28.1``, unpacked); with ``--library httpx2`` those tests are rewritten to
httpx2's names (``httpx`` -> ``httpx2``, ``httpcore`` -> ``httpcore2``), as httpx2 is httpx's fork with the same API.
``--suite httpx2``: SOURCE is the ``tests`` folder of httpx2's own repository (github.com/pydantic/httpx2, holding
``tests/httpx2/``), run as it is against httpx2. The tests also need their optional dependencies, or those that use
them fail on the plain client and are left out: ``chardet==5.2.0`` (the encoding the tests expect is the one it
detects), ``brotli``, ``zstandard`` (httpx) and ``backports.zstd`` (httpx2, Python < 3.14), ``socksio`` (``pip
install --target DIR ...`` and ``PYTHONPATH=DIR``).

The client tests run twice, each in a copy of its own (nothing is written here), with the network tests (marked
``network``) left out, as they leave the machine: once as they are (the baseline: a test that fails on the plain
library is left out) and once with the library's ``Client`` and ``AsyncClient`` replaced by clients of a registry,
each built from the test's arguments (``Registry(transports=...)`` for a ``transport=``, ``base_url``, ``verify``,
``proxy``, ``limits``... as settings; ``auth``, ``headers``, ``cookies``... set on the client; ``default_encoding``,
which no setting or public attribute takes, as the constructor stores it) with the policy's own features off (no
retries, no breaker, no deadline), and each registry closed at the end of its test, so what is left is what a
managed client does differently. Prints the tests that pass on the plain client and fail on the managed one.

Not part of the test suite (it needs the library's sources, and takes a minute or two): the results, and the
difference each failing test meets, are in ``docs/differences.md``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

# Each suite's tests that use the clients (the rest test models and helpers, which outbound does not touch), and
# the pytest settings they run under (httpx2's are its repository's). httpx2 added client tests of its own:
# server-sent events (``client.sse()``).
SUITES = {
    "httpx": (
        ("client", "test_timeouts.py", "test_asgi.py", "test_wsgi.py", "test_auth.py", "test_api.py"),
        "[pytest]\nfilterwarnings =\n    error\n    ignore::DeprecationWarning\n"
        "markers =\n    copied_from(source, changes=None): copied\n    network: needs the network\n",
    ),
    "httpx2": (
        tuple(
            f"httpx2/{name}"
            for name in (
                "client",
                "test_timeouts.py",
                "test_asgi.py",
                "test_wsgi.py",
                "test_auth.py",
                "test_api.py",
                "test_sse.py",
            )
        ),
        "[pytest]\naddopts = --import-mode=importlib\nfilterwarnings =\n    error\n"
        "markers =\n    copied_from(source, changes=None): copied\n    network: needs the network\n"
        "    benchmark: benchmark\n",
    ),
}

PLUGIN = '''
"""Replaces {lib}.Client / AsyncClient by managed clients (tests/own_suite.py)."""
import ssl

import pytest
import {lib}

import outbound
from outbound._backends._library import LIBRARIES

LIBRARIES["{lib}"].backend("httpx")  # the managed classes subclass the real ones: built before they are replaced
_REAL = {{"Client": {lib}.Client, "AsyncClient": {lib}.AsyncClient}}
_BUILT_BY = ("auth", "params", "headers", "cookies", "timeout", "follow_redirects", "max_redirects", "event_hooks")


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
    if limits is not None:
        pool = {{"keepalive_expiry": limits.keepalive_expiry}}
        size = limits.max_connections
        if size is not None:
            keepalive = limits.max_keepalive_connections
            pool.update(max_connections=size, max_keepalive=size if keepalive is None else min(keepalive, size))
        service["pool"] = pool
    transports = {{"svc": kwargs["transport"]}} if kwargs.get("transport") is not None else None
    registry = outbound.Registry.from_mapping({{"services": {{"svc": service}}}}, transports=transports)
    client = registry.client("svc") if kind == "Client" else registry.async_client("svc")
    client.base_url = kwargs.get("base_url", "")
    client.timeout = kwargs.get("timeout", {lib}._config.DEFAULT_TIMEOUT_CONFIG)
    for key in _BUILT_BY:
        if key in kwargs and key != "timeout":
            setattr(client, key, kwargs[key])
    if "default_encoding" in kwargs:
        client._default_encoding = kwargs["default_encoding"]  # no public setter: what the constructor does
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


def prepare(source: Path, suite: str, library: str, into: Path) -> Path:
    """A copy of ``suite``'s tests for ``library`` in ``into``; returns the folder to run pytest in."""
    shutil.copytree(source, into / "tests")
    if library != suite:
        for path in (into / "tests").rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            text = re.sub(r"\bhttpcore\b", "httpcore2", re.sub(r"\bhttpx\b", "httpx2", text))
            path.write_text(text, encoding="utf-8")
    (into / "pytest.ini").write_text(SUITES[suite][1], encoding="utf-8")
    (into / "outbound_managed.py").write_text(PLUGIN.format(lib=library), encoding="utf-8")
    return into


def run(folder: Path, suite: str, *, managed: bool, report: str) -> dict[str, str]:
    """Outcome ("passed", "failed", "skipped") of each test id."""
    paths = [f"tests/{name}" for name in SUITES[suite][0] if (folder / "tests" / name).exists()]
    command = [
        sys.executable,
        "-m",
        "pytest",
        *paths,
        "-m",
        "not network",
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


def _environment(folder: Path) -> dict[str, str]:
    import os

    repo = Path(__file__).resolve().parent.parent
    extra = [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []  # the tests' own needs (chardet)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(repo), *extra])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="the tests folder of the suite's sources")
    parser.add_argument("--suite", choices=tuple(SUITES), default="httpx", help="whose tests SOURCE holds")
    parser.add_argument("--library", choices=("httpx", "httpx2"), help="the library to run them on (the suite's)")
    arguments = parser.parse_args()
    library = arguments.library or arguments.suite
    if arguments.suite == "httpx2" and library != "httpx2":
        parser.error("httpx2's tests run on httpx2 only")
    with tempfile.TemporaryDirectory() as plain_dir, tempfile.TemporaryDirectory() as managed_dir:
        plain = run(
            prepare(arguments.source, arguments.suite, library, Path(plain_dir)),
            arguments.suite,
            managed=False,
            report=str(Path(plain_dir) / "plain.xml"),
        )
        managed = run(
            prepare(arguments.source, arguments.suite, library, Path(managed_dir)),
            arguments.suite,
            managed=True,
            report=str(Path(managed_dir) / "managed.xml"),
        )
    baseline = {name for name, outcome in plain.items() if outcome == "passed"}
    failing = sorted(name for name in baseline if managed.get(name) != "passed")
    left_out = Counter(outcome for outcome in plain.values() if outcome != "passed")
    print(
        f"\n{arguments.suite}'s tests on {library}: {len(plain)} tests; {len(baseline)} pass on the plain client "
        f"({left_out['failed']} fail and {left_out['skipped']} are skipped there: left out); "
        f"{len(baseline) - len(failing)} of those pass on the managed one, {len(failing)} fail:"
    )
    for name in failing:
        print(f"  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
