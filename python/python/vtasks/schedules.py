"""Periodic schedules kept by the server (``docs/PROTOCOL.md``, "Schedules").

The server enqueues each occurrence of a schedule as the task
``schedule:<name>:<occurrence, unix ms>``: with the vtasks module its timer
does it, with the scripts engine the workers' fetches do; there is no
scheduler process. An occurrence is one task however many workers,
producers and restarts meet it.

This module holds the plain Python API: `Schedule` (a schedule to set),
`ScheduleInfo` (one as the server lists it), `timing` (validates a cron
expression or an interval) and `apply` (makes a set of schedules the only
ones on some queues). `vtasks.Client` has the same as methods.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import _native
from .limits import check_max_attempts, check_priority
from .payloads import encode_call, loads

if TYPE_CHECKING:
    from .client import Client

logger = logging.getLogger("vtasks.schedules")

CATCH_UPS = ("last", "none")


def timing(cron: str | None = None, every: int | None = None, timezone: str = "UTC") -> str:
    """The text form the server keeps of a schedule's timing: ``cron`` (5
    fields, or 6 with seconds first) in the IANA ``timezone``, or ``every``
    so many seconds (occurrences at whole multiples of it since the epoch).
    Raises ValueError with the reason if invalid."""
    if every is not None and (isinstance(every, bool) or not isinstance(every, int)):
        raise ValueError(f"every must be a whole number of seconds, got {every!r}")
    return _native.schedule_timing(cron, every, timezone)


def next_occurrence(timing_text: str, after: dt.datetime) -> dt.datetime | None:
    """The first occurrence of a timing strictly after ``after`` (aware)."""
    ms = _native.next_occurrence(timing_text, int(after.timestamp() * 1000))
    return None if ms is None else dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


@dataclass(frozen=True)
class Schedule:
    """A schedule to set: ``task`` (its registered name, or a Django task's
    module path) called with ``args`` and ``kwargs`` at each occurrence of
    ``timing`` (see `timing`), into ``queue``.

    ``catch_up``: ``"last"`` (one run, however late, for everything
    missed while the server was down or, on the scripts engine, no worker
    fetched) or ``"none"`` (occurrences found more than a minute late are
    skipped). A disabled schedule is kept but does not run."""

    name: str
    task: str
    timing: str
    queue: str = "default"
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    priority: int = 0
    max_attempts: int = 3
    catch_up: str = "last"
    enabled: bool = True

    def __post_init__(self) -> None:
        check_priority(self.priority, f"schedule {self.name}: priority")
        check_max_attempts(self.max_attempts, f"schedule {self.name}: max_attempts")
        if self.catch_up not in CATCH_UPS:
            raise ValueError(f"schedule {self.name}: catch_up must be 'last' or 'none', got {self.catch_up!r}")

    def payload(self) -> bytes:
        return encode_call(self.task, tuple(self.args), dict(self.kwargs))


@dataclass(frozen=True)
class ScheduleInfo:
    """A schedule as the server lists it. Times are aware datetimes (UTC).

    ``next_run`` is None while a scripts-engine worker computes it
    (``pending_since``: the run it follows) or when the timing has no
    further occurrence. ``last_run`` is the occurrence of the last task the
    schedule enqueued and ``last_task_id`` that task's id (read its state
    with `Client.get`)."""

    name: str
    queue: str
    timing: str
    task: str | None
    args: list[Any]
    kwargs: dict[str, Any]
    priority: int
    max_attempts: int
    catch_up: str
    enabled: bool
    next_run: dt.datetime | None
    last_run: dt.datetime | None
    last_task_id: str | None
    pending_since: dt.datetime | None
    runs: int
    skipped: int
    payload: bytes


def _when(ms: int | None) -> dt.datetime | None:
    return None if ms is None else dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def info_from(queue: str, raw: dict[str, Any]) -> ScheduleInfo:
    try:
        body = loads(raw["payload"])
    except Exception:
        body = None
    if not isinstance(body, dict):
        body = {}
    return ScheduleInfo(
        name=raw["name"],
        queue=queue,
        timing=raw["timing"],
        task=body.get("task") if isinstance(body.get("task"), str) else None,
        args=list(body.get("args") or []),
        kwargs=dict(body.get("kwargs") or {}),
        priority=raw["priority"],
        max_attempts=raw["max_attempts"],
        catch_up=raw["catch_up"],
        enabled=raw["enabled"],
        next_run=_when(raw["next"]),
        last_run=_when(raw["last"]),
        last_task_id=raw["last_id"],
        pending_since=_when(raw["pending_since"]),
        runs=raw["runs"],
        skipped=raw["skipped"],
        payload=raw["payload"],
    )


@dataclass
class ApplyReport:
    """What `apply` did, by ``(queue, name)``."""

    added: list[tuple[str, str]] = field(default_factory=list)
    changed: list[tuple[str, str]] = field(default_factory=list)
    unchanged: list[tuple[str, str]] = field(default_factory=list)
    removed: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"{len(self.added)} added, {len(self.changed)} changed, "
            f"{len(self.unchanged)} unchanged, {len(self.removed)} removed"
        )


def apply_sync(
    client: Client, schedules: Iterable[Schedule], queues: Iterable[str] = (), *, keep: Iterable[str] = ()
) -> ApplyReport:
    """Makes ``schedules`` the only schedules of ``queues`` (and of the
    queues they name): each is set (added, or changed at once; an unchanged
    one keeps its next and last run), and every other schedule found there
    is removed, except those named in ``keep`` (schedules whose new
    definition was refused stay as they were)."""
    wanted = list(schedules)
    names = [s.name for s in wanted]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"schedule names must be unique: {duplicates}")
    report = ApplyReport()
    for s in wanted:
        outcome = client.set_schedule_sync(s)
        getattr(report, outcome).append((s.queue, s.name))
    keep_names = set(keep)
    where = {s.name: s.queue for s in wanted}
    for queue in dict.fromkeys([*queues, *where.values()]):
        stale = [
            info.name
            for info in client.schedules_sync(queue)
            if where.get(info.name) != queue and info.name not in keep_names
        ]
        if stale:
            client.unschedule_sync(queue, *stale)
            report.removed.extend((queue, name) for name in stale)
    return report
