"""``manage.py vtasks cancel RESULT_ID``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError

from ..ops import parse_result_id

HELP = "Cancels a task that is still waiting (ready or delayed), by its result id."


def add_arguments(parser: Any) -> None:
    parser.add_argument("result_id", metavar="RESULT_ID")


def handle(command: Any, backend: Any, options: dict[str, Any]) -> None:
    task_id, queue = parse_result_id(options["result_id"])
    if backend.client.cancel_sync(queue, [task_id])[0]:
        command.stdout.write(f"cancelled {options['result_id']}")
        return
    state = backend.client.get_sync(queue, task_id)
    if state is None:
        raise CommandError(f"no task {options['result_id']} (never enqueued, or its kept record expired)")
    status = {"leased": "running", "done": "done", "dead": "dead-lettered"}.get(state.status, state.status)
    raise CommandError(f"task {options['result_id']} is {status}: only a waiting task can be cancelled")
