"""``manage.py outbound status|probe``: the outbound services' health and reachability from this host.

Exit codes: 0 ok or degraded (status) / every critical probe passed (probe); 1 down / a critical probe failed;
2 invalid ``OUTBOUND`` settings or an unknown ``--service``.
"""

from __future__ import annotations

import argparse
import copy
import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

import outbound
from outbound import health as outbound_health
from outbound_django.conf import get_registry


class Command(BaseCommand):
    """``status [--json] [--service NAME]`` and ``probe [--json] [--service NAME]``."""

    help = (
        "Show the outbound services' health (status: breaker, pool, counters, last error) or send each "
        "service's probe request (probe). Exit 0 healthy or degraded, 1 down, 2 invalid settings."
    )
    # The system checks would stop the command with exit 1 on a settings mistake; it reports that itself, with 2.
    requires_system_checks = ()

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="{status,probe}")
        status = actions.add_parser("status", help="health of every service: no network I/O")
        probe = actions.add_parser(
            "probe", help="one GET to each service's probe path, all at once, without retries; changes nothing"
        )
        for sub in (status, probe):
            sub.add_argument("--json", action="store_true", help="print JSON instead of a table")
            sub.add_argument("--service", metavar="NAME", help="only this service")
            _accept_common_options(parser, sub)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            registry = get_registry()
        except outbound.ConfigError as error:
            raise CommandError(str(error), returncode=outbound_health.CONFIG_ERROR_EXIT_CODE) from error
        name: str | None = options["service"]
        if name is not None:
            try:
                registry[name]  # for the core's message: the configured names and the closest match
            except outbound.ServiceLookupError as error:
                raise CommandError(str(error), returncode=outbound_health.CONFIG_ERROR_EXIT_CODE) from error
        if options["action"] == "status":
            code = self._status(registry, name, as_json=options["json"])
        else:
            code = self._probe(registry, name, as_json=options["json"])
        if code:
            # Not a CommandError: the report is the output, not an error message; only the exit code says "down".
            raise SystemExit(code)

    def _status(self, registry: outbound.Registry, name: str | None, *, as_json: bool) -> int:
        report = registry.report(service=name)
        self.stdout.write(json.dumps(report.as_dict(), indent=2) if as_json else outbound_health.render_status(report))
        return outbound_health.status_exit_code(report)

    def _probe(self, registry: outbound.Registry, name: str | None, *, as_json: bool) -> int:
        results = registry.probe(name)
        if as_json:
            self.stdout.write(json.dumps([result.as_dict() for result in results], indent=2))
        else:
            self.stdout.write(outbound_health.render_probe(results))
        return outbound_health.probe_exit_code(results)


def _accept_common_options(parser: CommandParser, sub: argparse.ArgumentParser) -> None:
    # Django's own options (--settings, -v, --traceback...) belong to the command's parser, which rejects them after
    # the sub-command ("outbound status --settings=x"), where every other manage.py command takes them. Each
    # sub-command gets a copy; SUPPRESS keeps a copy that was not given from overwriting the one that was.
    for action in parser._actions:  # argparse keeps no public list of a parser's options
        if action.option_strings and not isinstance(action, argparse._HelpAction | argparse._VersionAction):
            common = copy.copy(action)
            common.default = argparse.SUPPRESS
            sub._add_action(common)
