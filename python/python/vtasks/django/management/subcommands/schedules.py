"""``manage.py vtasks schedules list|apply``: the periodic schedules of a
backend (``OPTIONS["SCHEDULES"]``, see `vtasks.django.schedules`)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.management.base import CommandError

from ....errors import VtasksError
from ... import schedules
from . import Subcommand as Base


def _when(value: dt.datetime | None) -> str:
    return "-" if value is None else value.isoformat(timespec="seconds")


class Subcommand(Base):
    help = (
        "Periodic schedules: 'list' shows those on the server with their next and last runs; "
        "'apply' makes the settings' SCHEDULES the server's (as a worker does when it starts)."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("action", choices=["list", "apply"])

    def handle(self, **options: Any) -> None:
        backend = self.backend(options["backend"])
        out = self.command.stdout
        try:
            if options["action"] == "apply":
                report, refused = schedules.apply(backend)
                out.write(f"schedules applied: {report}")
                for reason in refused.values():
                    self.command.stderr.write(f"refused: {reason}")
                if refused:
                    raise CommandError(f"{len(refused)} schedule(s) refused: {sorted(refused)}")
                return
            listed = schedules.listed(backend)
        except VtasksError as exc:
            raise CommandError(str(exc)) from exc
        if not listed:
            out.write("no schedules")
            return
        for s in listed:
            state = "" if s.enabled else " (disabled)"
            next_run = _when(s.next_run) if s.pending_since is None else "computing"
            out.write(
                f"{s.name}{state}: {s.task} on {s.queue}, {s.timing}, next {next_run}, "
                f"last {_when(s.last_run)} ({s.last_task_id or 'none'}), runs {s.runs}, skipped {s.skipped}"
            )
