"""Running Django Tasks on a vtasks worker: only Django ``Task`` objects,
with ``TaskContext``, the task signals, and Django's database connection
hygiene for sync tasks (each runs in a worker thread, with
``close_old_connections`` around it on a thread that has connected to a
database).

``task_finished`` is sent once per attempt. An attempt that failed and will
run again finishes with status ``READY`` (Django's "ready to be executed
again"), so Django's log reads ``state=READY`` for a retry and
``state=FAILED`` only when the task failed for good; ``errors`` lists every
failed attempt so far. A run the worker abandons at shutdown sends no
``task_finished``: its lease decides what becomes of it.

``OPTIONS["TASK_CONTEXT"]`` names a factory called with a `TaskRun` for
each run; the context manager it returns is entered around the task (its
signals included), on the thread a sync task runs on and in the asyncio
task of an async one: the place for an error tracker's scope, log context
or a tracing span. An async task may get an async context manager."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import logging
import threading
from collections.abc import Callable
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import close_old_connections
from django.db.backends.signals import connection_created
from django.tasks import TaskContext, TaskResult, TaskResultStatus
from django.tasks.base import Task
from django.tasks.signals import task_finished, task_started
from django.utils import timezone
from django.utils.json import normalize_json
from django.utils.module_loading import import_string

from ..errors import ResultNotStored, TaskNotRegistered
from ..payloads import dumps
from ..worker import Delivery, Failure, Stored, Worker, result_not_stored
from .backend import (
    ValkeyTaskBackend,
    normalized_args,
    normalized_kwargs,
    resolve_task,
    result_id,
    task_error,
    task_result,
)
from .listening import Listening


class _ThreadConnections(threading.local):
    """Whether this thread has connected to a database.

    ``close_old_connections`` closes only connections that are open; a
    database connection belongs to the thread that opened it, and opening
    one sends ``connection_created`` on that thread. On a thread that never
    opened one, the call does nothing, at a cost (Django's per-thread
    connection lookup) that is a third of a no-op task's time: so the
    worker calls it only on threads that have connected, and after a task
    that raised (a connection that failed half-way through its set-up
    sends no signal)."""

    connected = False


_thread_connections = _ThreadConnections()


def _on_connection_created(sender: Any, **kwargs: Any) -> None:
    _thread_connections.connected = True


connection_created.connect(_on_connection_created, dispatch_uid="vtasks.django.worker.connections")


def _running_result(task: Task, backend: str, d: Delivery, args: Any, kwargs: Any) -> TaskResult:
    return task_result(
        task, result_id(d.id, d.queue), TaskResultStatus.RUNNING, normalized_args(args), normalized_kwargs(kwargs),
        backend, started_at=timezone.now(), worker_ids=[d.consumer] * d.attempt,
    )


def _succeeded(result: TaskResult, sender: type) -> None:
    object.__setattr__(result, "finished_at", timezone.now())
    object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
    task_finished.send(sender, task_result=result)


def _failed(
    result: TaskResult | None, sender: type, failure: Failure, listening: Listening, make: Callable[[], TaskResult]
) -> None:
    """Sends ``task_finished`` for a failed attempt (inside the handler of
    its exception, so Django's log shows the traceback), when someone
    listens: Django logs a failure for good at ERROR, a retry at INFO."""
    if not listening(task_finished, logging.INFO if failure.will_retry else logging.ERROR):
        return
    if result is None:
        result = make()
    result.errors[:] = [task_error(entry) for entry in failure.entries]
    if failure.will_retry:
        object.__setattr__(result, "status", TaskResultStatus.READY)
    else:
        object.__setattr__(result, "finished_at", timezone.now())
        object.__setattr__(result, "status", TaskResultStatus.FAILED)
    task_finished.send(sender, task_result=result)


def _stored(task: Task, value: Any) -> Stored:
    """A return value other than None encoded as it will be stored (once:
    the worker keeps these bytes), or ResultNotStored. The wrappers pass
    None, which most tasks return, on as it is without calling this (the
    worker stores it as it is: ``normalize_json`` keeps it)."""
    try:
        return Stored(dumps(normalize_json(value)))
    except (TypeError, ValueError) as exc:
        raise result_not_stored(task.module_path, exc) from exc


@dataclasses.dataclass(frozen=True, slots=True)
class TaskRun:
    """One run of a task, as ``OPTIONS["TASK_CONTEXT"]``'s factory gets it."""

    # The Django result id (``<task id>@<queue>``) and the task id alone.
    id: str
    task_id: str
    # The task's import path.
    name: str
    queue: str
    # 1 for the first run, counting every run started.
    attempt: int
    # The worker's name (its consumer name in Valkey).
    worker: str


def task_context_factory(backend: ValkeyTaskBackend) -> Callable[[TaskRun], Any] | None:
    """The backend's ``TASK_CONTEXT`` factory, imported; None when unset."""
    path = backend.task_context
    if not path:
        return None
    try:
        factory = import_string(path)
    except ImportError as exc:
        raise ImproperlyConfigured(f"TASKS[{backend.alias!r}]['OPTIONS']['TASK_CONTEXT']: {exc}") from exc
    if not callable(factory):
        raise ImproperlyConfigured(f"TASKS[{backend.alias!r}]['OPTIONS']['TASK_CONTEXT']: {path} is not callable")
    return factory


def _in_context(
    run: Callable[..., Any], factory: Callable[[TaskRun], Any], path: str, is_async: bool
) -> Callable[..., Any]:
    """``run`` (a task wrapper) inside the context manager that ``factory``
    returns for each run."""

    def info(d: Delivery) -> TaskRun:
        return TaskRun(result_id(d.id, d.queue), d.id, path, d.queue, d.attempt, d.consumer)

    def suppressed() -> RuntimeError:
        return RuntimeError(f"the TASK_CONTEXT context manager suppressed an exception of task {path}")

    if is_async:

        async def run_async(d: Delivery, *args: Any, **kwargs: Any) -> Any:
            manager = factory(info(d))
            if hasattr(manager, "__aenter__"):
                async with manager:
                    return await run(d, *args, **kwargs)
            else:
                with manager:
                    return await run(d, *args, **kwargs)
            raise suppressed()

        return run_async

    def run_sync(d: Delivery, *args: Any, **kwargs: Any) -> Any:
        with factory(info(d)):
            return run(d, *args, **kwargs)
        raise suppressed()

    return run_sync


def make_resolver(backend: ValkeyTaskBackend) -> Callable[[str], Callable[..., Any]]:
    """Maps a payload's task path to a wrapper that runs the Django Task."""
    sender = type(backend)
    cache: dict[str, Callable[..., Any]] = {}
    listening = Listening(sender)
    # Asked on every run: whether anyone hears a run start, and end well.
    started_heard, finished_heard = listening.heard(task_started), listening.heard(task_finished)
    context = task_context_factory(backend)

    def resolve(path: str) -> Callable[..., Any]:
        wrapper = cache.get(path)
        if wrapper is not None:
            return wrapper
        try:
            task = resolve_task(path)
        except LookupError as exc:
            raise TaskNotRegistered(str(exc)) from None

        signature = _call_signature(task)

        func, takes_context, alias = task.func, task.takes_context, backend.alias

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
                signals = started_heard()
                result = None
                if signals or takes_context:
                    result = _running_result(task, alias, d, args, kwargs)
                    if signals:
                        task_started.send(sender, task_result=result)
                try:
                    if takes_context:
                        value = await func(TaskContext(task_result=result), *args, **kwargs)
                    else:
                        value = await func(*args, **kwargs)
                    if value is not None:  # None is stored as it is
                        value = _stored(task, value)
                except asyncio.CancelledError:
                    if d.abandoned or d.timeout is None:
                        raise  # stopped without an outcome: the lease decides
                    # The worker's timeout cut it; it records a TimeoutError.
                    try:
                        raise TimeoutError(f"task {task.module_path} ran longer than its timeout of {d.timeout:g} s")
                    except TimeoutError as timeout:
                        make = functools.partial(_running_result, task, alias, d, args, kwargs)
                        _failed(result, sender, await d.afailure(timeout), listening, make)
                    raise
                except BaseException as exc:
                    failure = await d.afailure(exc, retryable=retryable(d, exc, args, kwargs))
                    make = functools.partial(_running_result, task, alias, d, args, kwargs)
                    _failed(result, sender, failure, listening, make)
                    raise
                if signals or finished_heard():
                    _succeeded(result or _running_result(task, alias, d, args, kwargs), sender)
                return value

            wrapper = run_async
        else:

            def run_sync(d: Delivery, *args: Any, **kwargs: Any) -> Any:
                connections = _thread_connections
                if connections.connected:
                    close_old_connections()
                raised = True
                try:
                    signals = started_heard()
                    result = None
                    if signals or takes_context:
                        result = _running_result(task, alias, d, args, kwargs)
                        if signals:
                            task_started.send(sender, task_result=result)
                    try:
                        if takes_context:
                            value = func(TaskContext(task_result=result), *args, **kwargs)
                        else:
                            value = func(*args, **kwargs)
                        if value is not None:  # None is stored as it is
                            value = _stored(task, value)
                    except BaseException as exc:
                        failure = d.failure(exc, retryable=retryable(d, exc, args, kwargs))
                        make = functools.partial(_running_result, task, alias, d, args, kwargs)
                        _failed(result, sender, failure, listening, make)
                        raise
                    if signals or finished_heard():
                        _succeeded(result or _running_result(task, alias, d, args, kwargs), sender)
                    raised = False
                    return value
                finally:
                    if raised or connections.connected:
                        close_old_connections()

            wrapper = run_sync
        if context is not None:
            wrapper = functools.update_wrapper(
                _in_context(wrapper, context, task.module_path, _is_coroutine(task.func)), wrapper
            )
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
