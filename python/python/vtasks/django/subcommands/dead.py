"""``manage.py vtasks dead list|retry|purge QUEUE``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError

from ..ops import check_queue, dead_count, dead_page, purge_dead, requeue_dead
from ._table import confirm, table, when

HELP = "Dead letters: list them (newest first, a page at a time), retry or purge some or all."


def add_arguments(parser: Any) -> None:
    actions = parser.add_subparsers(dest="dead_action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="dead letters, newest first, with their last error")
    listing.add_argument("queue", metavar="QUEUE")
    listing.add_argument("--offset", type=int, default=0, help="skip this many of the newest (default: 0)")
    listing.add_argument("--limit", type=int, default=20, help="how many to show (default: %(default)s)")
    listing.add_argument("--traceback", action="store_true", help="print each one's last traceback too")
    for name, what in (("retry", "put back in the queue, attempts reset"), ("purge", "delete for good")):
        action = actions.add_parser(name, help=f"dead letters {what}: the ids given, or --all")
        action.add_argument("queue", metavar="QUEUE")
        action.add_argument("ids", nargs="*", metavar="ID", help="task ids (the part of a result id before @)")
        action.add_argument("--all", action="store_true", help="every dead letter of the queue")
        if name == "purge":
            action.add_argument("--yes", action="store_true", help="do not ask before purging --all")


def handle(command: Any, backend: Any, options: dict[str, Any]) -> None:
    queue = check_queue(backend, options["queue"])
    action = options["dead_action"]
    if action == "list":
        _list(command, backend, queue, options)
        return
    ids = options["ids"]
    if options["all"] == bool(ids):
        raise CommandError(f"dead {action}: give task ids or --all (not both)")
    if action == "retry":
        moved = requeue_dead(backend, queue, None if options["all"] else ids)
        command.stdout.write(f"{moved} dead letter{'s' * (moved != 1)} of {queue} back in the queue")
        return
    if options["all"]:
        there = dead_count(backend, queue)
        if not confirm(f"Delete all {there} dead letters of {queue} for good?", options["yes"]):
            raise CommandError("not purged: confirm at a terminal, or pass --yes")
    purged = purge_dead(backend, queue, None if options["all"] else ids)
    command.stdout.write(f"{purged} dead letter{'s' * (purged != 1)} of {queue} purged")


def _list(command: Any, backend: Any, queue: str, options: dict[str, Any]) -> None:
    if options["offset"] < 0 or options["limit"] < 1:
        raise CommandError("--offset must be at least 0 and --limit at least 1")
    total = dead_count(backend, queue)
    page = dead_page(backend, queue, options["offset"], options["limit"])
    shown_to = options["offset"] + len(page)
    command.stdout.write(f"{queue}: {total} dead letter{'s' * (total != 1)}" + (
        f", showing {options['offset'] + 1}-{shown_to} (newest first)" if page else ""
    ))
    if not page:
        return
    rows = [
        [
            letter.id, letter.name or "?", when(letter.dead_at), str(letter.attempts),
            ",".join(letter.workers) or "-",
            f"{letter.error.get('exception_class', '')}: {letter.error.get('message', '')}".strip(": ")[:120],
        ]
        for letter in page
    ]
    command.stdout.write(table(["ID", "TASK", "DIED", "ATTEMPTS", "WORKERS", "ERROR"], rows))
    if options["traceback"]:
        for letter in page:
            command.stdout.write(f"\n--- {letter.id}\n{letter.error.get('traceback') or '(no traceback)'}")
