"""``manage.py vtasks``: see and steer vtasks queues from the command line.

The subcommands live in ``vtasks.django.subcommands``, one module each
(``manage.py vtasks --help`` lists them)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from ....errors import VtasksError
from ...ops import backend_named
from ...subcommands import subcommands


class Command(BaseCommand):
    help = "Sees and steers vtasks queues: stats, pause and resume, dead letters, a task, cancel, purge."
    # The subcommands that need the server reach it themselves; a failing
    # system check must not stop an operator from looking at the queues.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: Any) -> None:
        commands = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
        for name, module in subcommands().items():
            sub = commands.add_parser(name, help=module.HELP, description=module.HELP)
            sub.add_argument("--backend", default="default", help="TASKS alias (default: %(default)s)")
            module.add_arguments(sub)

    def handle(self, *args: Any, **options: Any) -> None:
        module = subcommands()[options["subcommand"]]
        try:
            backend = backend_named(options["backend"])
            module.handle(self, backend, options)
        except CommandError:
            raise
        except (ValueError, LookupError, VtasksError) as exc:
            raise CommandError(str(exc)) from exc
