"""``manage.py outbound status|probe|isolate|reset``: the outbound services' health, reachability and control.

The commands are the core's (``outbound.cli``), as ``flask outbound``'s are. Exit codes: 0 ok or degraded (status) /
every critical probe passed (probe) / done (isolate, reset); 1 down / a critical probe failed; 2 invalid
``OUTBOUND`` settings, an unknown service, or isolate/reset without a shared state backend.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

import outbound
from outbound import cli as core_cli
from outbound_django.conf import get_registry


class Command(BaseCommand):
    """``status``, ``probe``, ``isolate`` and ``reset``: see ``outbound.cli``."""

    help = (
        "The outbound services: health (status: breaker, pool, counters, last error; with a shared state backend, "
        "the fleet's), reachability (probe), and control (isolate NAME, reset [NAME]). Exit 0 healthy or degraded, "
        "1 down, 2 invalid settings."
    )
    # The system checks would stop the command with exit 1 on a settings mistake; it reports that itself, with 2.
    requires_system_checks = ()

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="{status,probe,isolate,reset}")
        status = actions.add_parser("status", help="health of every service (the fleet's with a shared backend)")
        status.add_argument("--url", help="read a running server's /health/outbound at this URL instead")
        status.add_argument("--token", help="the health.token to send with --url, for the full report")
        status.add_argument(
            "--watch", action="store_true", help="redraw every second, with a sparkline per service; Ctrl-C quits"
        )
        probe = actions.add_parser(
            "probe", help="one GET to each service's probe path, all at once, without retries; changes nothing"
        )
        for sub in (status, probe):
            sub.add_argument("--json", action="store_true", help="print JSON instead of a table")
            sub.add_argument("--service", metavar="NAME", help="only this service")
        isolate = actions.add_parser("isolate", help="force a service's breaker open in every process (fleet)")
        isolate.add_argument("name", metavar="NAME", help="the service")
        isolate.add_argument("--for", dest="seconds", type=float, metavar="SECONDS", help="only for this long")
        reset = actions.add_parser("reset", help="close the breaker(s) and clear the counts in every process (fleet)")
        reset.add_argument("name", metavar="NAME", nargs="?", help="only this service (default: every service)")
        for sub in (status, probe, isolate, reset):
            _accept_common_options(parser, sub)

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "status" and options.get("watch") and options.get("url"):
            return self._finish(
                core_cli.watch_status(
                    None, url=options["url"], token=options.get("token"), service=options.get("service")
                )
            )
        if action == "status" and options.get("url"):
            output = core_cli.remote_status(
                options["url"], token=options.get("token"), service=options.get("service"), as_json=options["json"]
            )
            return self._finish(output)
        try:
            registry = get_registry()
        except outbound.ConfigError as error:
            raise CommandError(str(error), returncode=core_cli.CONFIG_ERROR_EXIT_CODE) from error
        name: str | None = options.get("service") or options.get("name")
        if name is not None:
            try:
                registry[name]  # for the core's message: the configured names and the closest match
            except outbound.ServiceLookupError as error:
                raise CommandError(str(error), returncode=core_cli.CONFIG_ERROR_EXIT_CODE) from error
        if action == "status" and options.get("watch"):
            output = core_cli.watch_status(registry, service=name)
        elif action == "status":
            output = core_cli.status(registry, service=name, as_json=options["json"])
        elif action == "probe":
            output = core_cli.probe(registry, service=name, as_json=options["json"])
        elif action == "isolate":
            output = core_cli.isolate(registry, options["name"], options.get("seconds"))
        else:
            output = core_cli.reset(registry, name)
        self._finish(output)

    def _finish(self, output: core_cli.Output) -> None:
        if output.error:
            raise CommandError(output.text.removeprefix("Error: "), returncode=output.code)
        self.stdout.write(output.text)
        if output.code:
            # Not a CommandError: the report is the output, not an error message; only the exit code says "down".
            raise SystemExit(output.code)


def _accept_common_options(parser: CommandParser, sub: argparse.ArgumentParser) -> None:
    # Django's own options (--settings, -v, --traceback...) belong to the command's parser, which rejects them after
    # the sub-command ("outbound status --settings=x"), where every other manage.py command takes them. Each
    # sub-command gets a copy; SUPPRESS keeps a copy that was not given from overwriting the one that was.
    for action in parser._actions:  # argparse keeps no public list of a parser's options
        if action.option_strings and not isinstance(action, argparse._HelpAction | argparse._VersionAction):
            common = copy.copy(action)
            common.default = argparse.SUPPRESS
            sub._add_action(common)
