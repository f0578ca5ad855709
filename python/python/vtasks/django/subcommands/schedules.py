"""``manage.py vtasks schedules list|apply``: the backend's periodic
schedules (``OPTIONS["SCHEDULES"]``, see `vtasks.django.schedules`)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.management.base import CommandError

from .. import schedules

HELP = (
    "Periodic schedules: 'list' shows those on the server with their next and last runs; "
    "'apply' makes the settings' SCHEDULES the server's, as a worker does when it starts."
)


def add_arguments(parser: Any) -> None:
    parser.add_argument("action", choices=["list", "apply"])


def _when(value: dt.datetime | None) -> str:
    return "-" if value is None else value.isoformat(timespec="seconds")


def handle(command: Any, backend: Any, options: dict[str, Any]) -> None:
    out = command.stdout
    if options["action"] == "apply":
        if backend.schedule_settings is None:
            raise CommandError(f"task backend {options['backend']!r} has no OPTIONS['SCHEDULES']: nothing to apply")
        report, refused = schedules.apply(backend)
        out.write(f"schedules applied: {report}")
        for reason in refused.values():
            command.stderr.write(f"refused: {reason}")
        if refused:
            raise CommandError(f"{len(refused)} schedule(s) refused: {sorted(refused)}")
        return
    listed = schedules.listed(backend)
    if not listed:
        out.write("no schedules")
        return
    for s in listed:
        state = "" if s.enabled else " (disabled)"
        next_run = "computing" if s.pending_since is not None else _when(s.next_run)
        out.write(
            f"{s.name}{state}: {s.task} on {s.queue}, {s.timing}, next {next_run}, "
            f"last {_when(s.last_run)} ({s.last_task_id or 'none'}), runs {s.runs}, skipped {s.skipped}"
        )
