"""Task registration. A worker runs only callables registered here (or
resolved by the resolver it was given), never an arbitrary import path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import TaskNotRegistered
from .limits import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_LOST_LEASES,
    check_max_attempts,
    check_max_lost_leases,
    check_priority,
)

_registry: dict[str, Callable[..., Any]] = {}


class TaskOptions:
    """A registered task's name and enqueue defaults (its ``__vtasks__``).
    A plain class: a dataclass costs every process that imports vtasks a
    millisecond or two to build."""

    __slots__ = ("max_attempts", "max_lost_leases", "name", "priority", "queue")

    def __init__(
        self, name: str, queue: str = "default", priority: int = 0, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        max_lost_leases: int = DEFAULT_MAX_LOST_LEASES,
    ) -> None:
        self.name = name
        self.queue = queue
        self.priority = priority
        self.max_attempts = max_attempts
        self.max_lost_leases = max_lost_leases

    def __repr__(self) -> str:
        return (
            f"TaskOptions(name={self.name!r}, queue={self.queue!r}, priority={self.priority}, "
            f"max_attempts={self.max_attempts}, max_lost_leases={self.max_lost_leases})"
        )


def task(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    queue: str = "default",
    priority: int = 0,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    max_lost_leases: int = DEFAULT_MAX_LOST_LEASES,
) -> Any:
    """Registers a function (sync or async) as a task.

    ``@task`` or ``@task(queue="emails", max_attempts=5)``. The task's name
    is ``module.qualname`` unless ``name`` is given. ``max_attempts`` counts
    attempts that failed (the task raised or timed out);
    ``max_lost_leases`` counts runs lost because the worker process
    running them vanished (a crash, a kill, a lost connection). Either
    budget used up dead-letters the task.
    """

    def register(f: Callable[..., Any]) -> Callable[..., Any]:
        task_name = name or f"{f.__module__}.{f.__qualname__}"
        check_priority(priority, f"priority of task {task_name}")
        check_max_attempts(max_attempts, f"max_attempts of task {task_name}")
        check_max_lost_leases(max_lost_leases, f"max_lost_leases of task {task_name}")
        existing = _registry.get(task_name)
        if existing is not None and existing is not f:
            raise ValueError(f"a different callable is already registered as task {task_name}")
        _registry[task_name] = f
        f.__vtasks__ = TaskOptions(task_name, queue, priority, max_attempts, max_lost_leases)  # type: ignore[attr-defined]
        return f

    return register(fn) if fn is not None else register


def options_of(fn: Callable[..., Any] | str) -> TaskOptions:
    """The options of a registered task, by callable or name."""
    target = resolve(fn) if isinstance(fn, str) else fn
    opts: TaskOptions | None = getattr(target, "__vtasks__", None)
    if opts is None:
        raise TaskNotRegistered(f"{fn!r} is not a registered task: decorate it with @vtasks.task")
    return opts


def resolve(name: str) -> Callable[..., Any]:
    """The registered callable for ``name``."""
    try:
        return _registry[name]
    except KeyError:
        raise TaskNotRegistered(f"no task is registered as {name!r}") from None


def registered() -> dict[str, Callable[..., Any]]:
    return dict(_registry)
