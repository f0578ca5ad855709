"""``manage.py vtasks task RESULT_ID``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError

from ..ops import parse_result_id, task_view
from ._table import shown, when

HELP = "One task by its result id (<task id>@<queue>): call, status, attempts, times, workers, result or errors."


def add_arguments(parser: Any) -> None:
    parser.add_argument("result_id", metavar="RESULT_ID")


def handle(command: Any, backend: Any, options: dict[str, Any]) -> None:
    task_id, queue = parse_result_id(options["result_id"])
    view = task_view(backend, queue, task_id)
    if view is None:
        raise CommandError(f"no task {options['result_id']} (never enqueued, or its kept record expired)")
    s = view.state
    lines = [
        ("result id", view.result_id),
        ("task", view.name or "? (not a vtasks call)"),
        ("args", shown(view.args)),
        ("kwargs", shown(view.kwargs)),
        ("status", s.status),
        ("priority", str(s.priority)),
        ("attempts", f"{s.attempts} started, {s.failed_attempts} of {s.max_attempts} failed, "
                     f"{s.lost_leases} of {s.max_lost_leases} lost"),
        ("enqueued", when(s.enqueued_at)),
        ("runs at", when(s.run_at)),
        ("started", when(s.started_at)),
        ("last attempt", when(s.last_attempted_at)),
        ("finished", when(s.finished_at)),
        ("workers", ", ".join(s.workers) or "-"),
    ]
    if s.status == "done":
        lines.append(("result", shown(s.result)))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        command.stdout.write(f"{key.ljust(width)}  {value}")
    if view.omitted_errors:
        command.stdout.write(f"({view.omitted_errors} earlier failed attempts not kept)")
    for entry in view.errors:
        attempt = entry.get("attempt")
        head = f"attempt {attempt}: " if attempt is not None else ""
        command.stdout.write(f"\n{head}{entry.get('exception_class', '')}: {entry.get('message', '')}")
        if entry.get("traceback"):
            command.stdout.write(str(entry["traceback"]).rstrip())
