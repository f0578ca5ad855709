"""``manage.py vtasks purge QUEUE``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError

from ..ops import check_queue, clear_queue, waiting_count
from ._table import confirm, interactive

HELP = (
    "Deletes a queue's waiting tasks (ready and delayed); running tasks, kept results and dead letters stay. "
    "Asks first unless --yes."
)


def add_arguments(parser: Any) -> None:
    parser.add_argument("queue", metavar="QUEUE")
    parser.add_argument("--yes", action="store_true", help="do not ask before purging")


def handle(command: Any, backend: Any, options: dict[str, Any]) -> None:
    queue = check_queue(backend, options["queue"])
    there = waiting_count(backend, queue)
    if there == 0:
        command.stdout.write(f"{queue} has no waiting tasks")
        return
    if not options["yes"]:
        if not interactive():
            raise CommandError("not purged: confirm at a terminal, or pass --yes")
        if not confirm(f"Purge {there} waiting task{'s' * (there != 1)} from queue '{queue}'?", False):
            command.stdout.write("not purged")
            return
    purged = clear_queue(backend, queue)
    command.stdout.write(f"{purged} waiting task{'s' * (purged != 1)} purged from {queue}")
