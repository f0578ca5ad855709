"""Django's periodic schedules: ``TASKS[alias]["OPTIONS"]["SCHEDULES"]``.

::

    "SCHEDULES": {
        "nightly-report": {"task": "shop.tasks.report", "cron": "0 3 * * *",
                           "timezone": "Europe/Berlin", "kwargs": {"full": True}},
        "heartbeat": {"task": "shop.tasks.beat", "every": 30},
        "fast": {"task": "shop.tasks.tick", "cron": "*/5 * * * * *"},
    }

Each entry names a Django task by module path and either ``cron`` (5
fields, or 6 with seconds first; ``timezone`` an IANA name, default
``TIME_ZONE`` or UTC) or ``every`` (seconds); optional ``args``,
``kwargs``, ``queue_name`` (default: the task's), ``priority`` (default:
the task's), ``catch_up`` (``"last"``, the default, or ``"none"``) and
``enabled`` (default True). With ``SCHEDULES`` in the OPTIONS (even
empty) the settings are the truth: `apply` (run when
a worker starts and by ``manage.py vtasks schedules apply``) adds and
changes them on the server and removes every other schedule of the
backend's queues. An entry that is invalid (a cron expression that does
not parse, a task that does not exist) is refused with its reason and
left as it was on the server; the others still apply.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.tasks.base import DEFAULT_TASK_QUEUE_NAME

from ..schedules import ApplyReport, Schedule, ScheduleInfo, apply_sync, timing
from .backend import ValkeyTaskBackend, resolve_task

logger = logging.getLogger("vtasks.schedules")

KEYS = {"task", "cron", "every", "timezone", "args", "kwargs", "queue_name", "priority", "catch_up", "enabled"}


def _default_timezone() -> str:
    zone = getattr(settings, "TIME_ZONE", None)
    return str(zone) if zone else "UTC"


def schedule_from_setting(backend: ValkeyTaskBackend, name: str, entry: Any) -> Schedule:
    """One ``SCHEDULES`` entry as a `Schedule`; ValueError with the reason
    if it is invalid."""
    where = f"schedule {name!r}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a dict, got {type(entry).__name__}")
    unknown = sorted(set(entry) - KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown} (allowed: {sorted(KEYS)})")
    path = entry.get("task")
    if not isinstance(path, str):
        raise ValueError(f"{where}: 'task' must be a task's module path such as 'shop.tasks.report'")
    try:
        task = resolve_task(path)
    except LookupError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if ("cron" in entry) == ("every" in entry):
        raise ValueError(f"{where}: give exactly one of 'cron' and 'every'")
    try:
        text = timing(entry.get("cron"), entry.get("every"), str(entry.get("timezone") or _default_timezone()))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    args = entry.get("args", [])
    kwargs = entry.get("kwargs", {})
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
        raise ValueError(f"{where}: 'args' must be a list and 'kwargs' a dict")
    queue = entry.get("queue_name") or task.queue_name or DEFAULT_TASK_QUEUE_NAME
    if backend.queues and queue not in backend.queues:
        raise ValueError(f"{where}: queue {queue!r} is not among the backend's QUEUES {sorted(backend.queues)}")
    return Schedule(
        name=name,
        task=task.module_path,
        timing=text,
        queue=queue,
        args=tuple(args),
        kwargs=kwargs,
        priority=entry.get("priority", task.priority),
        max_attempts=getattr(task, "max_attempts", None) or backend.max_attempts,
        catch_up=entry.get("catch_up", "last"),
        enabled=bool(entry.get("enabled", True)),
    )


def schedules_from_settings(backend: ValkeyTaskBackend) -> tuple[list[Schedule], dict[str, str]]:
    """The backend's schedules, and the reason of each one refused."""
    good, refused = [], {}
    for name, entry in (backend.schedule_settings or {}).items():
        try:
            good.append(schedule_from_setting(backend, str(name), entry))
        except ValueError as exc:
            refused[str(name)] = str(exc)
    return good, refused


def schedule_queues(backend: ValkeyTaskBackend) -> list[str]:
    """The queues whose schedules the settings own: the backend's QUEUES
    and the queues its schedules name."""
    good, _ = schedules_from_settings(backend)
    return list(dict.fromkeys([*backend.queue_order, *(s.queue for s in good)]))


def apply(backend: ValkeyTaskBackend) -> tuple[ApplyReport, dict[str, str]]:
    """Makes the settings' schedules the server's (see the module's
    docstring); returns what changed and the entries refused, by name.
    A backend without ``SCHEDULES`` in its OPTIONS changes nothing."""
    if backend.schedule_settings is None:
        return ApplyReport(), {}
    good, refused = schedules_from_settings(backend)
    for reason in refused.values():
        logger.error("vtasks: refused: %s (the server keeps what it had under that name)", reason)
    report = apply_sync(backend.client, good, schedule_queues(backend), keep=refused)
    return report, refused


def listed(backend: ValkeyTaskBackend) -> list[ScheduleInfo]:
    """The schedules on the server for the backend's queues."""
    return backend.client.schedules_sync(*schedule_queues(backend))
