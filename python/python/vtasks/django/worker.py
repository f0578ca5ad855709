"""Running Django Tasks on a vtasks worker: only Django ``Task`` objects,
with ``TaskContext``, the task signals, and Django's database connection
hygiene for sync tasks (each runs in a worker thread, with
``close_old_connections`` around it)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from django.db import close_old_connections
from django.tasks import TaskContext, TaskResult, TaskResultStatus
from django.tasks.base import Task, TaskError
from django.tasks.signals import task_finished, task_started
from django.utils import timezone
from django.utils.json import normalize_json

from ..errors import TaskNotRegistered
from ..worker import Delivery, Worker
from .backend import ValkeyTaskBackend, resolve_task, result_id


def _running_result(task: Task, backend: str, d: Delivery, args: Any, kwargs: Any) -> TaskResult:
    now = timezone.now()
    return TaskResult(
        task=task,
        id=result_id(d.id, d.queue),
        status=TaskResultStatus.RUNNING,
        enqueued_at=None,
        started_at=now,
        last_attempted_at=now,
        finished_at=None,
        args=list(args),
        kwargs=dict(kwargs),
        backend=backend,
        errors=[],
        worker_ids=[d.consumer] * d.attempt,
    )


def _finish(result: TaskResult, sender: type, error: BaseException | None) -> None:
    object.__setattr__(result, "finished_at", timezone.now())
    if error is None:
        object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
    else:
        cls = type(error)
        result.errors.append(TaskError(exception_class_path=f"{cls.__module__}.{cls.__qualname__}", traceback=""))
        object.__setattr__(result, "status", TaskResultStatus.FAILED)
    task_finished.send(sender, task_result=result)


def make_resolver(backend: ValkeyTaskBackend) -> Callable[[str], Callable[..., Any]]:
    """Maps a payload's task path to a wrapper that runs the Django Task."""
    sender = type(backend)
    cache: dict[str, Callable[..., Any]] = {}

    def resolve(path: str) -> Callable[..., Any]:
        wrapper = cache.get(path)
        if wrapper is not None:
            return wrapper
        try:
            task = resolve_task(path)
        except LookupError as exc:
            raise TaskNotRegistered(str(exc)) from None

        def call_args(result: TaskResult, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return (TaskContext(task_result=result), *args) if task.takes_context else args

        if _is_coroutine(task.func):

            async def run_async(d: Delivery, *args: Any, **kwargs: Any) -> Any:
                result = _running_result(task, backend.alias, d, args, kwargs)
                task_started.send(sender, task_result=result)
                try:
                    value = normalize_json(await task.func(*call_args(result, args), **kwargs))
                except BaseException as exc:
                    _finish(result, sender, exc)
                    raise
                _finish(result, sender, None)
                return value

            wrapper = run_async
        else:

            def run_sync(d: Delivery, *args: Any, **kwargs: Any) -> Any:
                close_old_connections()
                try:
                    result = _running_result(task, backend.alias, d, args, kwargs)
                    task_started.send(sender, task_result=result)
                    try:
                        value = normalize_json(task.func(*call_args(result, args), **kwargs))
                    except BaseException as exc:
                        _finish(result, sender, exc)
                        raise
                    _finish(result, sender, None)
                    return value
                finally:
                    close_old_connections()

            wrapper = run_sync
        wrapper.wants_delivery = True  # type: ignore[union-attr]
        signature = _call_signature(task)
        if signature is not None:
            # The worker checks arguments against it when a call fails with
            # TypeError: arguments that cannot fit are dead-lettered at once.
            wrapper.__signature__ = signature  # type: ignore[union-attr]
        cache[path] = wrapper
        return wrapper

    return resolve


def _is_coroutine(func: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(func)


def _call_signature(task: Task) -> inspect.Signature | None:
    """The wrapper's signature: the delivery, then the task's own
    parameters (without the context Django passes itself)."""
    try:
        signature = inspect.signature(task.func)
    except (TypeError, ValueError):
        return None
    parameters = list(signature.parameters.values())
    if task.takes_context:
        parameters = parameters[1:]
    delivery = inspect.Parameter("delivery", inspect.Parameter.POSITIONAL_ONLY)
    try:
        return signature.replace(parameters=[delivery, *parameters])
    except ValueError:
        return None


def make_worker(backend: ValkeyTaskBackend, **options: Any) -> Worker:
    """A vtasks worker for a Django task backend; ``options`` as Worker's."""
    options.setdefault("queues", list(backend.queue_order))
    options.setdefault("lease", backend.lease)
    options.setdefault("keep_results", backend.result_ttl)
    options.setdefault("retry_backoff", backend.retry_backoff)
    if backend.queue_concurrency and "queue_concurrency" not in options:
        options["queue_concurrency"] = {
            q: n for q, n in backend.queue_concurrency.items() if q in options["queues"]
        }
    return Worker(backend.client, resolver=make_resolver(backend), **options)
