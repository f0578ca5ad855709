"""Task registration. A worker runs only callables registered here (or
resolved by the resolver it was given), never an arbitrary import path."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import TaskNotRegistered

_registry: dict[str, Callable[..., Any]] = {}


@dataclass(frozen=True)
class TaskOptions:
    name: str
    queue: str = "default"
    priority: int = 0
    max_attempts: int = 3


def task(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    queue: str = "default",
    priority: int = 0,
    max_attempts: int = 3,
) -> Any:
    """Registers a function (sync or async) as a task.

    ``@task`` or ``@task(queue="emails", max_attempts=5)``. The task's name
    is ``module.qualname`` unless ``name`` is given.
    """

    def register(f: Callable[..., Any]) -> Callable[..., Any]:
        task_name = name or f"{f.__module__}.{f.__qualname__}"
        if not -100 <= priority <= 100:
            raise ValueError(f"priority {priority} of task {task_name}: expected -100..100")
        if max_attempts < 1:
            raise ValueError(f"max_attempts of task {task_name} must be at least 1")
        existing = _registry.get(task_name)
        if existing is not None and existing is not f:
            raise ValueError(f"a different callable is already registered as task {task_name}")
        _registry[task_name] = f
        f.__vtasks__ = TaskOptions(task_name, queue, priority, max_attempts)  # type: ignore[attr-defined]
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
