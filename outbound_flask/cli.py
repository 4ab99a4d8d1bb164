"""``flask outbound status|probe|isolate|reset``: the registry's health, reachability and control from a shell.

The commands are the core's (``outbound.cli``), as ``manage.py outbound``'s are.

Exit codes (as the Django command): ``status`` 0 when ok or degraded, 1 when down, 2 when the registry cannot be
built (a config error) or outbound is not set up on the app; ``probe`` 1 when a critical service's probe fails.

``init_app`` adds this group to the app's CLI. An invalid ``OUTBOUND`` makes ``init_app`` raise, so an app factory
that calls it fails and Flask cannot list the app's commands at all. For that case the group can also be installed
as a Flask CLI plugin (entry point group ``flask.commands``: ``outbound = "outbound_flask.cli:outbound_cli"``):
plugin commands exist even when the app fails to load, and these commands load the app themselves, so a config
error then prints the core's message and exits 2.
"""

from __future__ import annotations

from typing import NoReturn

import click
from flask import current_app, has_app_context
from flask.cli import ScriptInfo

import outbound
from outbound import cli as core_cli

from ._state import registry_for


@click.group("outbound")
def outbound_cli() -> None:
    """Health and reachability of the app's outbound services."""


@outbound_cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the full JSON report instead of the table.")
@click.option("--service", metavar="NAME", help="Only this service (its own status decides the exit code).")
@click.option("--url", help="Read a running server's /health/outbound at this URL instead of the app's registry.")
@click.option("--token", help="The health.token to send with --url, for the full report.")
@click.option("--watch", is_flag=True, help="Redraw every second, with a sparkline per service; Ctrl-C quits.")
def status_command(as_json: bool, service: str | None, url: str | None, token: str | None, watch: bool) -> None:
    """Show each service's breaker, pool and counters: the fleet's with a shared state backend, else this new
    process's own (use --url to read a running server).

    Exits 0 when ok or degraded, 1 when down, 2 on a configuration error.
    """
    if url and watch:
        _finish(core_cli.watch_status(None, url=url, token=token, service=service))
    if url:
        _finish(core_cli.remote_status(url, token=token, service=service, as_json=as_json))
    registry = _load_registry()
    if service is not None:
        _check_service(registry, service)
    if watch:
        _finish(core_cli.watch_status(registry, service=service))
    _finish(core_cli.status(registry, service=service, as_json=as_json))


@outbound_cli.command("probe")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON instead of the table.")
@click.option("--service", metavar="NAME", help="Only probe this service.")
def probe_command(as_json: bool, service: str | None) -> None:
    """Send one GET to each service's probe path, all at once, without retries.

    Each probe goes out with the service's TLS, proxy and headers, bounded by its connect and read timeouts, and
    changes neither its breaker nor its statistics.

    Exits 1 when a critical service's probe fails, 2 on a configuration error, else 0.
    """
    registry = _load_registry()
    if service is not None:
        _check_service(registry, service)
    _finish(core_cli.probe(registry, service=service, as_json=as_json))


@outbound_cli.command("isolate")
@click.argument("name")
@click.option("--for", "seconds", type=float, metavar="SECONDS", help="Only for this long (default: until reset).")
def isolate_command(name: str, seconds: float | None) -> None:
    """Force a service's breaker open in every process sharing the state backend: calls fail fast.

    Needs a shared state backend (state.backend: redis); exits 2 without one.
    """
    registry = _load_registry()
    _check_service(registry, name, param="NAME")
    _finish(core_cli.isolate(registry, name, seconds))


@outbound_cli.command("reset")
@click.argument("name", required=False)
def reset_command(name: str | None) -> None:
    """Close the breaker of NAME (or of every service) and clear its counts in every process.

    Needs a shared state backend (state.backend: redis); exits 2 without one.
    """
    registry = _load_registry()
    if name is not None:
        _check_service(registry, name, param="NAME")
    _finish(core_cli.reset(registry, name))


def _finish(output: core_cli.Output) -> NoReturn:
    click.echo(output.text, err=output.error)
    click.get_current_context().exit(output.code)


def _load_registry() -> outbound.Registry:
    ctx = click.get_current_context()
    if has_app_context():
        app = current_app  # `flask outbound ...` and test_cli_runner(): Flask loaded the app already
    else:
        # A plugin command, or the group invoked on its own: load the app here, so that a factory failing on an
        # invalid OUTBOUND is reported with exit code 2 rather than as a traceback with exit code 1 ("down").
        try:
            app = ctx.ensure_object(ScriptInfo).load_app()
        except outbound.ConfigError as error:
            _fail(ctx, error)
    try:
        return registry_for(app)
    except RuntimeError as error:
        _fail(ctx, error)


def _fail(ctx: click.Context, error: Exception) -> NoReturn:
    click.echo(f"Error: {error}", err=True)
    ctx.exit(core_cli.CONFIG_ERROR_EXIT_CODE)


def _check_service(registry: outbound.Registry, name: str, *, param: str = "--service") -> None:
    try:
        registry[name]
    except outbound.ServiceLookupError as error:
        raise click.BadParameter(str(error), param_hint=f"'{param}'") from None
