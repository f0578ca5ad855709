"""Running Django Tasks on a vtasks worker: only Django ``Task`` objects,
with ``TaskContext``, the task signals, and Django's database connection
hygiene for sync tasks (each runs in a worker thread, with
``close_old_connections`` around it).

``task_finished`` is sent once per attempt. An attempt that failed and will
run again finishes with status ``READY`` (Django's "ready to be executed
again"), so Django's log reads ``state=READY`` for a retry and
``state=FAILED`` only when the task failed for good; ``errors`` lists every
failed attempt so far. A run the worker abandons at shutdown sends no
``task_finished``: its lease decides what becomes of it."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

from django.db import close_old_connections
from django.tasks import TaskContext, TaskResult, TaskResultStatus
from django.tasks.base import Task
from django.tasks.signals import task_finished, task_started
from django.utils import timezone
from django.utils.json import normalize_json

from ..errors import ResultNotStored, TaskNotRegistered
from ..payloads import dumps
from ..worker import Delivery, Failure, Worker, result_not_stored
from .backend import ValkeyTaskBackend, resolve_task, result_id, task_error


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


def _succeeded(result: TaskResult, sender: type) -> None:
    object.__setattr__(result, "finished_at", timezone.now())
    object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
    task_finished.send(sender, task_result=result)


def _failed(result: TaskResult, sender: type, failure: Failure) -> None:
    """Sends ``task_finished`` for a failed attempt (inside the handler of
    its exception, so Django's log shows the traceback)."""
    result.errors[:] = [task_error(entry) for entry in failure.entries]
    if failure.will_retry:
        object.__setattr__(result, "status", TaskResultStatus.READY)
    else:
        object.__setattr__(result, "finished_at", timezone.now())
        object.__setattr__(result, "status", TaskResultStatus.FAILED)
    task_finished.send(sender, task_result=result)


def _stored(task: Task, value: Any) -> Any:
    """The return value as it will be stored, or ResultNotStored."""
    try:
        value = normalize_json(value)
        dumps(value)
    except (TypeError, ValueError) as exc:
        raise result_not_stored(task.module_path, exc) from exc
    return value


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

        signature = _call_signature(task)

        def call_args(result: TaskResult, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return (TaskContext(task_result=result), *args) if task.takes_context else args

        def retryable(d: Delivery, exc: BaseException, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
            """As the worker decides: arguments that do not fit, or a
            result that cannot be stored, fail the same way every time."""
            if isinstance(exc, ResultNotStored):
                return False
            if isinstance(exc, TypeError) and signature is not None:
                try:
                    signature.bind(d, *args, **kwargs)
                except TypeError:
                    return False
            return True

        if _is_coroutine(task.func):

            async def run_async(d: Delivery, *args: Any, **kwargs: Any) -> Any:
                result = _running_result(task, backend.alias, d, args, kwargs)
                task_started.send(sender, task_result=result)
                try:
                    value = _stored(task, await task.func(*call_args(result, args), **kwargs))
                except asyncio.CancelledError:
                    if d.abandoned or d.timeout is None:
                        raise  # stopped without an outcome: the lease decides
                    # The worker's timeout cut it; it records a TimeoutError.
                    try:
                        raise TimeoutError(f"task {task.module_path} ran longer than its timeout of {d.timeout:g} s")
                    except TimeoutError as timeout:
                        _failed(result, sender, await d.afailure(timeout))
                    raise
                except BaseException as exc:
                    _failed(result, sender, await d.afailure(exc, retryable=retryable(d, exc, args, kwargs)))
                    raise
                _succeeded(result, sender)
                return value

            wrapper = run_async
        else:

            def run_sync(d: Delivery, *args: Any, **kwargs: Any) -> Any:
                close_old_connections()
                try:
                    result = _running_result(task, backend.alias, d, args, kwargs)
                    task_started.send(sender, task_result=result)
                    try:
                        value = _stored(task, task.func(*call_args(result, args), **kwargs))
                    except BaseException as exc:
                        _failed(result, sender, d.failure(exc, retryable=retryable(d, exc, args, kwargs)))
                        raise
                    _succeeded(result, sender)
                    return value
                finally:
                    close_old_connections()

            wrapper = run_sync
        wrapper.wants_delivery = True  # type: ignore[union-attr]
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
