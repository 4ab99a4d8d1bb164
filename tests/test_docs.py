"""The README and the documentation site stay true to the code.

The README's snippets run as a newcomer pastes them: the Django ones into a project fresh from ``startproject``
(checked by ``manage.py check`` and a request to ``/health/outbound``), the Flask ones as a package whose
``create_app()`` serves requests. Snippets are found by the ``<!-- snippet: name -->`` line just above their fenced
block. The site lists every page in its nav, its API page names every public name, and its logging page every
logger.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import responses
import respx
import yaml

import outbound
import outbound.cli
import outbound.health
import outbound.testing
import outbound_django
import outbound_flask

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
SET_UP_COMMANDS = ["python3 example_project/run.py", "python3 tests/run.py"]
PACKAGES = ("outbound", "outbound_django", "outbound_flask")
FLASK_PACKAGE = "yourapp"  # the package the README's Flask snippets name in their first line


def readme() -> str:
    return README.read_text(encoding="utf-8")


def snippet(name: str, page: Path = README) -> str:
    """The fenced block right after the line ``<!-- snippet: name -->`` in the README (or in ``page``)."""
    text = page.read_text(encoding="utf-8")
    match = re.search(rf"^<!-- snippet: {re.escape(name)} -->\n```\w*\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)
    assert match, f"{page.name} has no fenced block right after <!-- snippet: {name} -->"
    return match.group(1)


def section(heading: str) -> str:
    """The README's ``## heading...`` section, up to the next ``## `` heading."""
    match = re.search(rf"^## {re.escape(heading)}.*?\n(.*?)(?=^## |\Z)", readme(), re.MULTILINE | re.DOTALL)
    assert match, f"README.md has no section starting '## {heading}'"
    return match.group(1)


def shell_commands(text: str) -> list[str]:
    """The commands in the ``sh``/``bash``/``console`` fenced blocks of ``text``, without their comments."""
    commands = []
    for block in re.findall(r"^```(?:sh|bash|shell|console)\n(.*?)^```$", text, re.MULTILINE | re.DOTALL):
        for line in block.splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def nav_pages(nav: list[Any]) -> list[str]:
    pages: list[str] = []
    for entry in nav:
        targets = entry.values() if isinstance(entry, dict) else [entry]
        for target in targets:
            pages.extend(nav_pages(target) if isinstance(target, list) else [target])
    return pages


def docs_pages() -> set[str]:
    return {path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md")}


# -- the README ------------------------------------------------------------------------------------------------------


def test_set_up_has_exactly_the_two_commands_that_exist() -> None:
    assert shell_commands(section("Set up")) == SET_UP_COMMANDS
    for command in SET_UP_COMMANDS:
        assert (ROOT / command.split()[1]).is_file(), command


def test_why_opens_with_the_brownout_table() -> None:
    why = section("Why").lstrip()
    assert why.startswith("<!-- brownout-table:start -->\n| app and its client |"), "the table, before any prose"
    assert "\n<!-- brownout-table:end -->\n" in why


def test_readme_links_to_every_docs_page_and_every_link_resolves() -> None:
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme())
    local = [link for link in links if "://" not in link]
    assert not [link for link in local if not (ROOT / link).exists()], "README.md links to missing files"
    assert {f"docs/{page}" for page in docs_pages()} <= set(local)


def test_install_names_the_distribution_and_every_extra() -> None:
    install = section("Install")
    assert 'pip install "outbound-http[django]"' in install
    assert re.search(r'pip install "\./[\w/.-]+\[django\]"', install), "no install from a checkout"
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    extras_table = re.search(r"^\[project\.optional-dependencies\]\n(.*?)^\[", pyproject, re.MULTILINE | re.DOTALL)
    assert extras_table
    extras = set(re.findall(r"^([\w-]+)\s*=", extras_table.group(1), re.MULTILINE)) - {"dev"}
    assert extras
    assert {extra for extra in extras if f"`{extra}`" not in install} == set()


@responses.activate
@respx.mock
def test_core_quickstart_runs() -> None:
    responses.get("https://billing.internal/api/invoices/42", json={"number": 42})
    search = respx.get("https://search.internal/q", params={"text": "shoes"})
    search.mock(return_value=httpx.Response(200, json={"hits": []}))
    namespace: dict[str, Any] = {}
    exec(compile(snippet("core"), "README.md:core", "exec"), namespace)  # noqa: S102 (the README's own snippet)
    assert namespace["invoice"].json() == {"number": 42}
    assert namespace["hits"].json() == {"hits": []}
    assert namespace["registry"].closed


# -- Django: the snippets in a project fresh from startproject ---------------------------------------------------------

DJANGO_SHELL = """
import json

import responses
from django.test import Client, RequestFactory
from django.test.utils import setup_test_environment

from mysite import views

setup_test_environment()  # lets the test client's host through ALLOWED_HOSTS
health = Client().get("/health/outbound")
with responses.RequestsMock() as mock:
    mock.get("https://billing.internal/api/invoices/42", json={"number": 42})
    invoice = views.invoice(RequestFactory().get("/invoices/42"), 42)
print(json.dumps({"health": [health.status_code, health.json()], "invoice": json.loads(invoice.content)}))
"""


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def new_django_project(tmp_path: Path, *, apps: list[str], settings: str, urls: str) -> tuple[Path, dict[str, str]]:
    """A project fresh from ``startproject`` with ``apps`` added to its ``INSTALLED_APPS``, ``settings`` appended to
    its settings and ``urls`` as its URLconf; returns the project's directory and the environment to run it in."""
    env = {key: value for key, value in os.environ.items() if key not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH")}
    env.pop("OUTBOUND_HEALTH_TOKEN", None)  # the snippets must not need it
    env["PYTHONPATH"] = str(ROOT)  # outbound_django from this checkout
    _run([sys.executable, "-m", "django", "startproject", "mysite"], tmp_path, env)
    project = tmp_path / "mysite"
    package = project / "mysite"
    settings_py = package / "settings.py"
    text = settings_py.read_text(encoding="utf-8")
    added = "".join(f'    "{app}",\n' for app in apps if f"'{app}'" not in text and f'"{app}"' not in text)
    assert "INSTALLED_APPS = [\n" in text
    text = text.replace("INSTALLED_APPS = [\n", "INSTALLED_APPS = [\n" + added, 1)
    settings_py.write_text(text + "\n" + settings, encoding="utf-8")
    (package / "urls.py").write_text(urls, encoding="utf-8")
    return project, env


def installed_apps(code: str) -> list[str]:
    """The apps a snippet lists, one ``"name",`` per line."""
    return re.findall(r'^\s*"([\w.]+)",', code, re.MULTILINE)


def test_django_quickstart_pastes_into_a_fresh_startproject(tmp_path: Path) -> None:
    wanted_apps = installed_apps(snippet("django-installed-apps"))
    assert "outbound_django" in wanted_apps
    project, env = new_django_project(
        tmp_path, apps=wanted_apps, settings=snippet("django-settings"), urls=snippet("django-urls")
    )
    (project / "mysite" / "views.py").write_text(snippet("django-views"), encoding="utf-8")

    manage = [sys.executable, "manage.py"]
    checked = _run([*manage, "check"], project, env)
    assert "System check identified no issues" in checked.stdout
    answers = json.loads(_run([*manage, "shell", "-c", DJANGO_SHELL], project, env).stdout.strip().splitlines()[-1])
    assert answers == {"health": [200, {"status": "ok"}], "invoice": {"number": 42}}


HEALTH_CHECK_SHELL = """
import json

from django.test import Client
from django.test.utils import setup_test_environment

setup_test_environment()  # lets the test client's host through ALLOWED_HOSTS
client = Client(raise_request_exception=False)
page = client.get("/ht/", headers={"Accept": "text/html"})
data = client.get("/ht/", {"format": "json"})
print(json.dumps({"html": [page.status_code, page["Content-Type"]], "json": [data.status_code, data.json()]}))
"""


def test_django_health_check_snippets_serve_the_html_and_json_views(tmp_path: Path) -> None:
    django_page = DOCS / "django.md"
    wanted_apps = installed_apps(snippet("health-check-installed-apps", django_page))
    assert wanted_apps == ["health_check"]
    project, env = new_django_project(
        tmp_path,
        apps=["outbound_django", *wanted_apps],
        settings=snippet("django-settings"),
        urls=snippet("health-check-urls", django_page),
    )
    manage = [sys.executable, "manage.py"]
    assert "System check identified no issues" in _run([*manage, "check"], project, env).stdout
    shell = _run([*manage, "shell", "-c", HEALTH_CHECK_SHELL], project, env)
    answers = json.loads(shell.stdout.strip().splitlines()[-1])
    assert answers["html"] == [200, "text/html; charset=utf-8"], shell.stderr
    assert answers["json"][0] == 200
    assert set(answers["json"][1].values()) == {"OK"}
    assert len(answers["json"][1]) == 2  # the database and outbound


# -- Flask: the snippets as a package with an app factory --------------------------------------------------------------


@pytest.fixture
def flask_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The README's Flask snippets written where their first line says, imported as a package."""
    for name in ("flask-extensions", "flask-views", "flask-app"):
        code = snippet(name)
        first_line = re.match(r"# ([\w/]+\.py)\n", code)
        assert first_line, f"the {name} snippet does not start with '# <package>/<module>.py'"
        path = tmp_path / first_line.group(1)
        assert path.parts[-2] == FLASK_PACKAGE
        path.parent.mkdir(exist_ok=True)
        path.write_text(code, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("OUTBOUND_HEALTH_TOKEN", raising=False)
    try:
        yield importlib.import_module(FLASK_PACKAGE)
    finally:
        for module in [m for m in sys.modules if m == FLASK_PACKAGE or m.startswith(f"{FLASK_PACKAGE}.")]:
            del sys.modules[module]


def test_flask_quickstart_app_factory_serves_health_and_views(flask_package: Any) -> None:
    app = flask_package.create_app()
    try:
        client = app.test_client()
        health = client.get("/health/outbound")
        assert (health.status_code, health.json) == (200, {"status": "ok"})
        with responses.RequestsMock() as mock:
            mock.get("https://billing.internal/api/invoices/42", json={"number": 42})
            assert client.get("/invoices/42").json == {"number": 42}
        with respx.mock:
            search = respx.get("https://search.internal/q", params={"text": "shoes"})
            search.mock(return_value=httpx.Response(200, json={"hits": []}))
            assert client.get("/search?q=shoes").json == {"hits": []}
    finally:
        app.extensions["outbound"].close()


# -- the documentation site ----------------------------------------------------------------------------------------


def test_every_docs_page_is_in_the_nav() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert config["docs_dir"] == "docs"
    listed = nav_pages(config["nav"])
    assert len(listed) == len(set(listed)), "a page is listed twice"
    assert set(listed) == docs_pages()


@pytest.mark.parametrize(
    "module",
    [outbound, outbound.cli, outbound.health, outbound.testing, outbound_django, outbound_flask],
    ids=lambda module: module.__name__,
)
def test_api_page_names_every_public_name(module: Any) -> None:
    api = (DOCS / "api.md").read_text(encoding="utf-8")
    assert [name for name in module.__all__ if f"`{name}`" not in api] == []


def loggers() -> set[str]:
    """Every logger name the packages pass to ``logging.getLogger``: a literal, or ``__name__`` (the module's name)."""
    names = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            for literal in re.findall(r"getLogger\(\s*(\"[\w.]+\"|__name__)\s*\)", path.read_text(encoding="utf-8")):
                names.add(module if literal == "__name__" else literal.strip('"'))
    return names


def test_logging_page_names_every_logger() -> None:
    found = loggers()
    assert "outbound.breaker" in found  # the scan works
    logging_page = (DOCS / "logging.md").read_text(encoding="utf-8")
    assert sorted(name for name in found if f"`{name}`" not in logging_page) == []


def settings_keys() -> list[str]:
    """Every key a user can write, as the configuration page names it: ``timeout.read``, ``breaker.window.size``,
    ``health.token``; derived from the settings dataclasses, so a new field needs its row."""
    from outbound import _config

    def walk(cls: type, prefix: str, exclude: tuple[str, ...] = ()) -> list[str]:
        keys = []
        hints = typing.get_type_hints(cls)
        for name in _config.keys_of(cls, exclude=exclude):
            keys.append(prefix + name)
            nested = [arg for arg in typing.get_args(hints[name]) or (hints[name],) if dataclasses.is_dataclass(arg)]
            for inner in nested:
                keys += walk(inner, f"{prefix}{name}.")  # type: ignore[arg-type]
        return keys

    keys = walk(_config.ServiceConfig, "", _config.DERIVED_SERVICE_FIELDS)
    for section_name, cls in (
        ("health", _config.HealthConfig),
        ("metrics", _config.MetricsConfig),
        ("state", _config.StateConfig),
        ("deadline", _config.DeadlineConfig),
        ("chaos", _config.ChaosSwitch),
    ):
        keys += walk(cls, f"{section_name}.")
    return keys


def test_the_configuration_page_has_a_row_for_every_key() -> None:
    page = (DOCS / "configuration.md").read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| `([\w.]+)` \|", page, re.MULTILINE))
    keys = settings_keys()
    assert "breaker.window.size" in keys  # the walk reaches nested sections
    assert [key for key in keys if key not in rows] == []


def test_the_beyond_the_basics_settings_are_valid_and_raise_no_warning() -> None:
    namespace: dict[str, Any] = {}
    exec(snippet("beyond"), namespace)  # noqa: S102 (our own README)
    config = outbound.parse_config(namespace["OUTBOUND"])
    assert config.services["payments"].rate_limit is not None
    assert outbound.setting_warnings(config) == []
