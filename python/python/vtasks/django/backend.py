"""``ValkeyTaskBackend``: Django's Tasks framework on vtasks.

Result ids carry their queue (``<task id>@<queue>``), so ``get_result`` needs
nothing but the id and costs one round trip.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, transaction
from django.tasks import DEFAULT_TASK_QUEUE_NAME, TaskResult, TaskResultStatus, task_backends
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import Task, TaskError
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued
from django.utils import timezone
from django.utils.json import normalize_json
from django.utils.module_loading import import_string

from .. import limits
from ..client import Client, TaskState, TaskTuple, new_task_id, redacted_url, run_at_ms
from ..errors import ModuleNotLoaded, VtasksError
from ..payloads import argument_error, dumps, error_entries, loads
from .checks import reaches_server
from .listening import Listening

# Status of a vtasks task -> Django's.
STATUSES = {
    "ready": TaskResultStatus.READY,
    "delayed": TaskResultStatus.READY,
    "leased": TaskResultStatus.RUNNING,
    "done": TaskResultStatus.SUCCESSFUL,
    "dead": TaskResultStatus.FAILED,
}

_clients: dict[tuple[Any, ...], Client] = {}

# Tasks whose enqueue plan a backend keeps (``_plan``); a project has a few
# dozen, each ``.using()`` or ``.options()`` variant one more.
PLANS_KEPT = 1024


def client_key(
    url: str,
    connect_timeout: float = 5.0,
    response_timeout: float = 10.0,
    engine: str = "auto",
    wait_replicas: int = 0,
    wait_timeout: float = 1.0,
    cluster: bool = False,
    partitions: dict[str, int] | None = None,
) -> tuple[Any, ...]:
    """What tells one client of `client_for` from another."""
    parts = tuple(sorted((partitions or {}).items()))
    return (url, connect_timeout, response_timeout, engine, wait_replicas, wait_timeout, cluster, parts)


def client_for(key: tuple[Any, ...]) -> Client:
    """One client (one pipelined connection) per URL and options
    (`client_key`) per process."""
    client = _clients.get(key)
    if client is None:
        url, connect_timeout, response_timeout, engine, wait_replicas, wait_timeout, cluster, parts = key
        client = _clients[key] = Client(
            url,
            connect_timeout=connect_timeout,
            response_timeout=response_timeout,
            engine=engine,
            wait_replicas=wait_replicas,
            wait_timeout=wait_timeout,
            cluster=cluster,
            partitions=dict(parts),
        )
    return client


def result_id(task_id: str, queue: str) -> str:
    return f"{task_id}@{queue}"


def split_result_id(value: str) -> tuple[str, str]:
    task_id, sep, queue = value.rpartition("@")
    if not sep or not task_id or not queue:
        raise TaskResultDoesNotExist(value)
    return task_id, queue


def task_error(entry: dict[str, Any]) -> TaskError:
    """Django's record of one failed attempt. An attempt without a traceback
    (a lost lease, whose text the server wrote; an earlier attempt whose
    traceback was cut to fit the error limit) shows its message instead."""
    cls = str(entry.get("exception_class") or "vtasks.VtasksError")
    traceback = str(entry.get("traceback") or "")
    if not traceback:
        traceback = f"{cls}: {entry.get('message', '')}"
    return TaskError(exception_class_path=cls, traceback=traceback)


def _argument_error(task: Task, args: Any, kwargs: Any) -> TypeError | ValueError | None:
    """Which argument Django's JSON normalization or the encoder refuses."""
    return argument_error(task.module_path, list(args), dict(kwargs), lambda value: dumps(normalize_json(value)))


class _Plan:
    """What enqueueing a task takes from the task alone, worked out once
    per Task object: a Task is frozen, and a backend's settings do not
    change. A plain class: a dataclass costs a worker's start-up a
    millisecond or two to build."""

    __slots__ = ("max_attempts", "max_lost_leases", "module_path", "run_options", "task", "unique")

    def __init__(
        self, task: Task, module_path: str, run_options: dict[str, Any] | None, unique: str | None,
        max_attempts: int, max_lost_leases: int,
    ) -> None:
        # Kept, so that its id() is not reused while the plan is.
        self.task = task
        self.module_path = module_path
        # The payload's "options" (None: none differ from the worker's).
        self.run_options = run_options
        self.unique = unique
        self.max_attempts = max_attempts
        self.max_lost_leases = max_lost_leases


# The values Django's normalize_json returns as they are.
_PLAIN_JSON = frozenset({str, int, float, bool, type(None)})


def normalized_args(args: Any) -> list[Any]:
    """``normalize_json(list(args))``, without its walk when every argument
    is a plain JSON value (the usual case)."""
    if not args:
        return []
    values = list(args)
    for value in values:
        if type(value) not in _PLAIN_JSON:
            return normalize_json(values)  # type: ignore[no-any-return]
    return values


def normalized_kwargs(kwargs: Any) -> dict[str, Any]:
    """``normalize_json(dict(kwargs))``, the same way."""
    if not kwargs:
        return {}
    values = dict(kwargs)
    for key, value in values.items():
        if type(key) is not str or type(value) not in _PLAIN_JSON:
            return normalize_json(values)  # type: ignore[no-any-return]
    return values


# The fields of Django's TaskResult that `task_result` sets, in order. A
# Django whose TaskResult has others gets its constructor.
_RESULT_FIELDS = (
    "task", "id", "status", "enqueued_at", "started_at", "finished_at", "last_attempted_at", "args", "kwargs",
    "backend", "errors", "worker_ids", "_return_value",
)
_BUILD_RESULTS = tuple(f.name for f in dataclasses.fields(TaskResult)) == _RESULT_FIELDS


def _setter(name: str) -> Callable[[TaskResult, Any], None]:
    """A field's slot setter, called directly: a frozen dataclass refuses
    `setattr`, and `object.__setattr__` looks the name up on every call."""
    if _BUILD_RESULTS:
        setter: Callable[[TaskResult, Any], None] = getattr(TaskResult, name).__set__
        return setter
    return lambda result, value: object.__setattr__(result, name, value)


(
    _set_task, _set_id, _set_status, _set_enqueued_at, _set_started_at, _set_finished_at, _set_last_attempted_at,
    _set_args, _set_kwargs, _set_backend, _set_errors, _set_worker_ids, _set_return_value,
) = (_setter(name) for name in _RESULT_FIELDS)
_new = object.__new__


def task_result(
    task: Task,
    id: str,
    status: TaskResultStatus,
    args: list[Any],
    kwargs: dict[str, Any],
    backend: str,
    started_at: dt.datetime | None = None,
    worker_ids: list[str] | None = None,
) -> TaskResult:
    """What ``TaskResult(...)`` makes of arguments already normalized
    (`normalized_args`, `normalized_kwargs`), built field by field: the
    frozen dataclass's constructor and its ``__post_init__`` (which
    normalizes the arguments again) cost a producer more than a tenth of
    an enqueue. ``started_at`` is also the last attempt's start."""
    if not _BUILD_RESULTS:
        return TaskResult(
            task=task, id=id, status=status, enqueued_at=None, started_at=started_at,
            last_attempted_at=started_at, finished_at=None, args=args, kwargs=kwargs, backend=backend, errors=[],
            worker_ids=worker_ids or [],
        )
    result = _new(TaskResult)
    _set_task(result, task)
    _set_id(result, id)
    _set_status(result, status)
    _set_enqueued_at(result, None)
    _set_started_at(result, started_at)
    _set_finished_at(result, None)
    _set_last_attempted_at(result, started_at)
    _set_args(result, args)
    _set_kwargs(result, kwargs)
    _set_backend(result, backend)
    _set_errors(result, [])
    _set_worker_ids(result, worker_ids or [])
    _set_return_value(result, None)
    return result


class _Prepared(NamedTuple):
    """An enqueue ready to send: its result, task tuple, plan and queue (a
    partitioned queue's partition)."""

    result: TaskResult
    item: TaskTuple
    plan: _Plan
    queue: str


def resolve_task(path: str) -> Task:
    """The Task object at ``path``: only Django Task objects may run."""
    try:
        obj = import_string(path)
    except ImportError as exc:
        raise LookupError(f"cannot import task {path!r}: {exc}") from exc
    if not isinstance(obj, Task):
        raise LookupError(f"{path!r} is not a Django Task object (decorate it with @task)")
    return obj


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class VtasksTask(Task):
    """A Django Task with vtasks' own options. ``@task(max_attempts=5,
    retry_backoff=2.0, timeout=30)`` sets them (Django's decorator passes
    extra keywords to the backend's task class), and ``.options(...)``
    changes them like ``.using(...)`` changes the standard ones."""

    # Failed attempts (the task raised or timed out) before the task is
    # marked FAILED (None: the backend's MAX_ATTEMPTS).
    max_attempts: int | None = None
    # Runs lost with their worker (a crash, a kill, a lost connection)
    # before the task is marked FAILED (None: the backend's MAX_LOST_LEASES).
    max_lost_leases: int | None = None
    # Seconds before the first retry, doubled per attempt (None: RETRY_BACKOFF).
    retry_backoff: float | None = None
    # Seconds an async task may run before it is cancelled and counted as failed.
    timeout: float | None = None
    # "mutex": at most one waiting or running task per task and arguments;
    # "throttle": at most one enqueue per `unique_period` seconds.
    unique: str | None = None
    unique_period: float | None = None

    def options(
        self,
        *,
        max_attempts: int | None = None,
        retry_backoff: float | None = None,
        timeout: float | None = None,
        unique: str | None = None,
        unique_period: float | None = None,
        max_lost_leases: int | None = None,
    ) -> VtasksTask:
        given = {
            "max_attempts": max_attempts,
            "max_lost_leases": max_lost_leases,
            "retry_backoff": retry_backoff,
            "timeout": timeout,
            "unique": unique,
            "unique_period": unique_period,
        }
        changes: dict[str, Any] = {name: value for name, value in given.items() if value is not None}
        return dataclasses.replace(self, **changes)

    # What Django's Task does for these three, with less of a producer's
    # time: `task_backends` imported once rather than on every call, and
    # `aenqueue` handing back the backend's coroutine rather than wrapping
    # it in one more (still a coroutine function to `inspect`).
    def get_backend(self) -> BaseTaskBackend:
        return task_backends[self.backend]

    def enqueue(self, *args: Any, **kwargs: Any) -> TaskResult:
        return self.get_backend().enqueue(self, args, kwargs)

    @inspect.markcoroutinefunction
    def aenqueue(self, *args: Any, **kwargs: Any) -> Awaitable[TaskResult]:  # type: ignore[override]
        return self.get_backend().aenqueue(self, args, kwargs)


class ValkeyTaskBackend(BaseTaskBackend):
    # Tasks can be scheduled with run_after.
    supports_defer = True
    # Coroutine functions run on the worker's event loop.
    supports_async_task = True
    # Results can be read from any process by id.
    supports_get_result = True
    # Higher priority first, FIFO within a priority.
    supports_priority = True

    task_class = VtasksTask

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        # Django keeps QUEUES as a set; their order is the order in which a
        # worker prefers them (the first queue with a ready task is served).
        self.queue_order: list[str] = list(dict.fromkeys(params.get("QUEUES", [DEFAULT_TASK_QUEUE_NAME])))
        # Django's receiver of task_enqueued logs at DEBUG: with nobody else
        # listening and DEBUG records dropped, the signal is not sent.
        self._enqueued_heard = Listening(type(self)).heard(task_enqueued, logging.DEBUG)
        options = {key.upper(): value for key, value in self.options.items()}
        self.url: str = options.get("URL", "valkey://127.0.0.1:6379")
        self.lease: float = float(options.get("LEASE", limits.DEFAULT_LEASE))
        self.result_ttl: float = float(options.get("RESULT_TTL", limits.DEFAULT_RESULT_TTL))
        # One attempt unless configured: a task that raises fails, as with
        # Django's own backends (docs/DECISIONS.md); a worker that dies
        # mid-task does not use up an attempt.
        try:
            self.max_attempts: int = limits.check_max_attempts(
                int(options.get("MAX_ATTEMPTS", limits.DJANGO_MAX_ATTEMPTS)), "MAX_ATTEMPTS"
            )
        except ValueError as err:
            raise ImproperlyConfigured(f"TASKS[{alias!r}]['OPTIONS']: {err}") from None
        # Runs lost with their worker (crash, kill, lost connection) before a
        # task is FAILED: a worker dying never fails a task under the defaults.
        try:
            self.max_lost_leases: int = limits.check_max_lost_leases(
                int(options.get("MAX_LOST_LEASES", limits.DEFAULT_MAX_LOST_LEASES)), "MAX_LOST_LEASES"
            )
        except ValueError as err:
            raise ImproperlyConfigured(f"TASKS[{alias!r}]['OPTIONS']: {err}") from None
        self.retry_backoff: float = float(options.get("RETRY_BACKOFF", limits.DEFAULT_RETRY_BACKOFF))
        self.connect_timeout: float = float(options.get("CONNECT_TIMEOUT", 5.0))
        self.response_timeout: float = float(options.get("RESPONSE_TIMEOUT", 10.0))
        self.queue_concurrency: dict[str, int] = dict(options.get("QUEUE_CONCURRENCY", {}))
        # "auto" (module if loaded, else scripts), "module" or "scripts".
        self.engine: str = str(options.get("ENGINE", "auto"))
        # Enqueues return once this many replicas hold them (Valkey's WAIT).
        self.wait_replicas: int = int(options.get("WAIT_REPLICAS", 0))
        self.wait_timeout: float = float(options.get("WAIT_TIMEOUT", 1.0))
        # Defer a sync enqueue made inside a transaction until it commits.
        self.enqueue_on_commit: bool = bool(options.get("ENQUEUE_ON_COMMIT", False))
        # The import path of a factory of a context manager entered around
        # each task the worker runs (vtasks.django.worker.TaskRun).
        self.task_context: str | None = options.get("TASK_CONTEXT")
        # Periodic schedules the server keeps (vtasks.django.schedules),
        # applied when a worker starts. Without the key the settings leave
        # the server's schedules alone; with it (even empty) they own them.
        schedules = options.get("SCHEDULES")
        if schedules is not None and not isinstance(schedules, dict):
            raise ImproperlyConfigured(f"TASKS[{alias!r}]['OPTIONS']['SCHEDULES'] must be a dict of name to schedule")
        self.schedule_settings: dict[str, Any] | None = None if schedules is None else dict(schedules)
        # URL names nodes of a Valkey Cluster.
        self.cluster: bool = bool(options.get("CLUSTER", False))
        # {queue: count}: queues spread over several partitions, each in its
        # own slot (vtasks.Client's `partitions`).
        self.partitions: dict[str, int] = dict(options.get("PARTITIONS", {}) or {})
        for name, count in self.partitions.items():
            if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 1024:
                raise ImproperlyConfigured(
                    f"TASKS[{alias!r}]['OPTIONS']['PARTITIONS'][{name!r}]: expected a number of "
                    f"partitions from 1 to 1024, got {count!r}"
                )
        self._client_key = client_key(
            self.url, self.connect_timeout, self.response_timeout, self.engine, self.wait_replicas,
            self.wait_timeout, self.cluster, self.partitions,
        )
        self._plans: dict[int, _Plan] = {}

    @property
    def client(self) -> Client:
        return client_for(self._client_key)

    def _plan(self, task: Task) -> _Plan:
        """The task validated, and what its enqueues need from it, once per
        task: producers enqueue the same few tasks again and again."""
        plan = self._plans.get(id(task))
        if plan is not None and plan.task is task:
            return plan
        self.validate_task(task)
        run_options = {
            key: value
            for key, value in (
                ("backoff", getattr(task, "retry_backoff", None)),
                ("timeout", getattr(task, "timeout", None)),
            )
            if value is not None
        }
        plan = _Plan(
            task=task,
            module_path=task.module_path,
            run_options=run_options or None,
            unique=getattr(task, "unique", None),
            max_attempts=getattr(task, "max_attempts", None) or self.max_attempts,
            max_lost_leases=getattr(task, "max_lost_leases", None) or self.max_lost_leases,
        )
        if len(self._plans) >= PLANS_KEPT:
            self._plans.clear()
        self._plans[id(task)] = plan
        return plan

    def validate_task(self, task: Task) -> None:
        super().validate_task(task)
        max_attempts = getattr(task, "max_attempts", None)
        if max_attempts is not None:
            try:
                limits.check_max_attempts(max_attempts)
            except ValueError as err:
                raise InvalidTask(str(err)) from None
        max_lost = getattr(task, "max_lost_leases", None)
        if max_lost is not None:
            try:
                limits.check_max_lost_leases(max_lost)
            except ValueError as err:
                raise InvalidTask(str(err)) from None
        for name in ("retry_backoff", "timeout", "unique_period"):
            value = getattr(task, name, None)
            if value is not None and value <= 0:
                raise InvalidTask(f"{name} must be a positive number of seconds.")
        unique = getattr(task, "unique", None)
        if unique not in (None, "mutex", "throttle"):
            raise InvalidTask("unique must be 'mutex' or 'throttle'.")
        if unique == "throttle" and getattr(task, "unique_period", None) is None:
            raise InvalidTask("unique='throttle' needs unique_period (seconds).")

    @staticmethod
    def _task_id(plan: _Plan, args: list[Any], kwargs: dict[str, Any]) -> str:
        """A random id, or for unique tasks one derived from the task and its
        arguments (and, throttled, the current period), so that the
        server's idempotent enqueue keeps the duplicates out."""
        unique = plan.unique
        if unique is None:
            return new_task_id()
        digest = hashlib.sha256(dumps([plan.module_path, args, kwargs])).hexdigest()[:32]
        if unique == "mutex":
            return f"mutex-{digest}"
        period = float(getattr(plan.task, "unique_period", 0) or 0)
        return f"throttle-{digest}-{int(time.time() // period)}"

    def _partition_of(self, queue: str, task_id: str) -> str:
        """The queue a task with this id goes to: for a partitioned queue,
        the partition its id picks."""
        if queue not in self.partitions:
            return queue
        return self.client.native.partition_of(queue, task_id)

    def _prepare(self, task: Task, args: Any, kwargs: Any) -> _Prepared:
        plan = self._plan(task)
        try:
            # JSON types, as Django's TaskResult makes them (normalize_json).
            json_args, json_kwargs = normalized_args(args), normalized_kwargs(kwargs)
            task_id = self._task_id(plan, json_args, json_kwargs)
        except (TypeError, ValueError) as exc:
            raise _argument_error(task, args, kwargs) or exc from exc
        queue = self._partition_of(task.queue_name, task_id)
        # A partitioned queue's result id names the partition its task
        # lives in, so reading the result is one round trip.
        result = task_result(
            task, result_id(task_id, queue), TaskResultStatus.READY, json_args, json_kwargs, self.alias
        )
        body: dict[str, Any] = {"task": plan.module_path, "args": json_args, "kwargs": json_kwargs}
        if plan.run_options is not None:
            body["options"] = plan.run_options
        try:
            payload = dumps(body)
        except (TypeError, ValueError) as exc:
            raise _argument_error(task, args, kwargs) or exc from exc
        item = (task_id, payload, task.priority, None, run_at_ms(task.run_after), plan.max_attempts)
        return _Prepared(result, item, plan, queue)

    def _enqueued(self, result: TaskResult, added: bool) -> TaskResult:
        """Sends ``task_enqueued`` if the task was added: a unique task that
        already existed was not enqueued again (the result is the existing
        task's; its ``enqueued_at`` stays None until refreshed)."""
        if added:
            _set_enqueued_at(result, timezone.now())
            if self._enqueued_heard():
                task_enqueued.send(type(self), task_result=result)
        return result

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        result, item, plan, queue = self._prepare(task, args, kwargs)

        def send() -> None:
            added = self.client.enqueue_items_sync(queue, [item], plan.unique == "mutex", plan.max_lost_leases)
            self._enqueued(result, added[0])

        if self.enqueue_on_commit and any(c.in_atomic_block for c in connections.all(initialized_only=True)):
            # The task must not run before the data it needs is committed,
            # nor at all if the transaction rolls back.
            transaction.on_commit(send)
        else:
            send()
        return result

    async def aenqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        result, item, plan, queue = self._prepare(task, args, kwargs)
        added = await self.client.enqueue_items(queue, [item], plan.unique == "mutex", plan.max_lost_leases)
        return self._enqueued(result, added[0])

    def _result(self, value: str, state: TaskState | None) -> TaskResult:
        if state is None:
            raise TaskResultDoesNotExist(value)
        try:
            body = loads(state.payload)
            task = resolve_task(body["task"])
        except (ValueError, TypeError, KeyError, LookupError) as exc:
            # Not enqueued through Django, or its task was renamed or
            # removed since: there is no Task to give the result.
            raise TaskResultDoesNotExist(
                f"{value}: the task exists in Valkey but is not a Django task result ({exc})"
            ) from exc
        entries, _ = error_entries(state.error)
        errors = [task_error(entry) for entry in entries]
        # Django counts attempts as len(worker_ids); vtasks keeps each
        # worker once, so the last one is repeated for its further attempts.
        workers = state.workers[: state.attempts]
        if workers:
            workers += [workers[-1]] * (state.attempts - len(workers))
        result = TaskResult(
            task=task,
            id=value,
            status=STATUSES[state.status],
            enqueued_at=state.enqueued_at,
            started_at=state.started_at,
            last_attempted_at=state.last_attempted_at,
            finished_at=state.finished_at,
            args=body.get("args", []),
            kwargs=body.get("kwargs", {}),
            backend=self.alias,
            errors=errors,
            worker_ids=workers,
        )
        if state.status == "done":
            object.__setattr__(result, "_return_value", state.result)
        return result

    def get_result(self, result_id: str) -> TaskResult:
        task_id, queue = split_result_id(result_id)
        return self._result(result_id, self.client.get_sync(queue, task_id))

    async def aget_result(self, result_id: str) -> TaskResult:
        task_id, queue = split_result_id(result_id)
        return self._result(result_id, await self.client.get(queue, task_id))

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        """Django's system checks of this backend (run by ``django.tasks``'
        own check): its options always; the server only in the commands that
        use it (see ``vtasks.django.checks``). Each check is a method of its
        own with its own message id."""
        messages = self._check_engine_option() + self._check_partitions() + self._check_schedules()
        if any(m.level >= checks.ERROR for m in messages) or not reaches_server():
            return messages
        return messages + self.check_server()

    def _check_schedules(self) -> list[checks.CheckMessage]:
        """Each SCHEDULES entry a worker would refuse, as a warning: the
        worker still starts (and applies the others)."""
        if self.schedule_settings is None:
            return []  # nothing to check, and the schedule classes stay unloaded
        from .schedules import schedules_from_settings

        _, refused = schedules_from_settings(self)
        return [
            checks.Warning(
                f"Task backend {self.alias!r}: {reason}.",
                hint="Fix the entry in OPTIONS['SCHEDULES']; until then the server keeps what it had under that name.",
                id="vtasks.W002",
            )
            for reason in refused.values()
        ]

    def check_server(self) -> list[checks.CheckMessage]:
        """The checks that connect to Valkey: reachable (``vtasks.E001``),
        with the module if ``ENGINE`` requires it (``vtasks.E002``), then
        the checks of the running server."""
        try:
            engine = self.client.engine
        except ModuleNotLoaded as exc:
            return [
                checks.Error(
                    f"Task backend {self.alias!r}: {exc}",
                    hint="Add `loadmodule /path/to/libvtasks.so` to valkey.conf (see the vtasks README), "
                    "or set OPTIONS['ENGINE'] to 'auto' to run on the scripts engine where modules cannot load.",
                    id="vtasks.E002",
                )
            ]
        except VtasksError as exc:
            return [
                checks.Error(
                    f"Task backend {self.alias!r} cannot reach Valkey at {redacted_url(self.url)}: {exc}",
                    hint="Start Valkey (with the vtasks module: the fastest engine), or fix OPTIONS['URL'].",
                    id="vtasks.E001",
                )
            ]
        messages: list[checks.CheckMessage] = []
        for check in (self._check_engine_in_use, self._check_eviction):
            messages += check(engine)
        return messages

    def _check_engine_option(self) -> list[checks.CheckMessage]:
        if self.engine in ("auto", "module", "scripts"):
            return []
        return [
            checks.Error(
                f"Task backend {self.alias!r}: OPTIONS['ENGINE'] is {self.engine!r}.",
                hint="Use 'auto' (the default), 'module' or 'scripts'.",
                id="vtasks.E003",
            )
        ]

    def _check_partitions(self) -> list[checks.CheckMessage]:
        """``vtasks.E004``: a queue of ``QUEUES`` that is a partition of a
        partitioned queue (``emails:3`` when ``emails`` has 4 or more): its
        tasks and the partition's would be the same queue."""
        messages: list[checks.CheckMessage] = []
        for queue in self.queue_order:
            base, sep, index = queue.rpartition(":")
            count = self.partitions.get(base)
            if sep and count is not None and index.isdigit() and str(int(index)) == index and 0 < int(index) < count:
                messages.append(
                    checks.Error(
                        f"Task backend {self.alias!r}: queue {queue!r} is partition {index} of queue {base!r} "
                        f"(OPTIONS['PARTITIONS'][{base!r}] is {count}).",
                        hint="Rename the queue: a partitioned queue's partitions are named <queue>:<n>.",
                        id="vtasks.E004",
                    )
                )
        return messages

    def _check_engine_in_use(self, engine: str) -> list[checks.CheckMessage]:
        if engine == "scripts" and self.engine == "auto":
            return [
                checks.Info(
                    f"Task backend {self.alias!r} runs on the scripts engine: "
                    f"{redacted_url(self.url)} has no vtasks module.",
                    hint="Fine on managed Valkey/Redis. Where you can load the module, it is faster; "
                    "set OPTIONS['ENGINE'] to 'module' to require it.",
                    id="vtasks.I001",
                )
            ]
        return []

    def _check_eviction(self, engine: str) -> list[checks.CheckMessage]:
        """``vtasks.W001``: the server's ``maxmemory-policy`` can evict task
        data (``allkeys-*``: waiting and running tasks; ``volatile-*``: kept
        results). A user without ``INFO`` is not checked."""
        try:
            warning = self.client.eviction_warning_sync()
        except VtasksError:
            return []
        if warning is None:
            return []
        return [
            checks.Warning(
                f"Task backend {self.alias!r}: {warning}.",
                hint="See 'Memory' in the vtasks README: a server that holds task queues runs with "
                "maxmemory-policy noeviction.",
                id="vtasks.W001",
            )
        ]
