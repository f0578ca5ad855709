"""``vtasks.Client``: enqueue tasks and inspect queues.

Every method has an async form (a native coroutine: no thread-pool hop;
concurrent awaits share one pipelined connection) and a ``_sync`` form for
synchronous code.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import re
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _native
from ._bridge import LoopBridge
from ._wire import OwnConnection, own_connections
from .limits import check_max_attempts, check_max_lost_leases, check_priority
from .payloads import encode_call, loads
from .tasks import options_of

if TYPE_CHECKING:
    # Imported when first used: a worker that sets no schedules does not
    # pay for their classes at start-up (`vtasks.schedules`).
    from .schedules import Schedule, ScheduleInfo

DEFAULT_URL = "valkey://127.0.0.1:6379"
ENGINES = ("auto", "module", "scripts")

logger = logging.getLogger("vtasks")

# A task as the native layer takes it: (id, payload, priority, delay_ms,
# run_at_ms, max_attempts).
TaskTuple = tuple[str, bytes, int, int | None, int | None, int | None]


# Task ids drawn from the OS's randomness 64 at a time: one getrandom call
# per id cost a producer a microsecond. `list.pop` hands each id to one
# caller only, from any thread; a forked child starts with none of its
# parent's, or both would hand out the same ids.
IDS_PER_DRAW = 64
_unused_ids: list[str] = []
os.register_at_fork(after_in_child=_unused_ids.clear)


def new_task_id() -> str:
    """A task id: 128 random bits as 32 hex digits (as random as a uuid4's
    hex, without building a UUID)."""
    try:
        return _unused_ids.pop()
    except IndexError:
        digits = os.urandom(16 * IDS_PER_DRAW).hex()
        _unused_ids.extend([digits[i : i + 32] for i in range(0, len(digits), 32)])
        return _unused_ids.pop()


def redacted_url(url: str) -> str:
    """The URL without its password, for logs."""
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)


@dataclass(frozen=True)
class TaskState:
    """A task as ``VTASKS.GET`` reports it; times are aware datetimes.

    ``attempts`` counts runs started; ``failed_attempts`` those that failed
    (budget ``max_attempts``), ``lost_leases`` those lost because their
    worker vanished (budget ``max_lost_leases``)."""

    id: str
    queue: str
    status: str
    priority: int
    attempts: int
    max_attempts: int
    failed_attempts: int
    lost_leases: int
    max_lost_leases: int
    enqueued_at: dt.datetime
    run_at: dt.datetime | None
    started_at: dt.datetime | None
    last_attempted_at: dt.datetime | None
    finished_at: dt.datetime | None
    workers: list[str]
    error: dict[str, Any] | None
    result: Any
    payload: bytes

    @property
    def has_result(self) -> bool:
        return self.status == "done"


def _when(ms: int | None) -> dt.datetime | None:
    return None if ms is None else dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def _error_record(text: str) -> dict[str, Any]:
    """A task's error text as a failure record (``docs/PROTOCOL.md``,
    "Python tasks"). Text that is not one was written by the server (a lost
    lease) or by another kind of worker: it becomes the record's message,
    with a class path that imports."""
    try:
        record = loads(text)
    except Exception:
        record = None
    if isinstance(record, dict) and isinstance(record.get("exception_class"), str):
        return record
    cls = "vtasks.LeaseLost" if text.startswith("lease ") else "vtasks.VtasksError"
    return {"exception_class": cls, "message": text, "traceback": ""}


def _task_state(queue: str, id: str, raw: dict[str, Any] | None) -> TaskState | None:
    if raw is None:
        return None
    error = raw["error"]
    if error is not None:
        error = _error_record(error)
    result = raw["result"]
    return TaskState(
        id=id,
        queue=queue,
        status=raw["status"],
        priority=raw["priority"],
        attempts=raw["attempts"],
        max_attempts=raw["max_attempts"],
        failed_attempts=raw["failed_attempts"],
        lost_leases=raw["lost_leases"],
        max_lost_leases=raw["max_lost_leases"],
        enqueued_at=_when(raw["enqueued_at"]),  # type: ignore[arg-type]
        run_at=_when(raw["run_at"]),
        started_at=_when(raw["started_at"]),
        last_attempted_at=_when(raw["leased_at"]),
        finished_at=_when(raw["finished_at"]),
        workers=list(raw["workers"]),
        error=error,
        result=None if result is None else loads(result),
        payload=raw["payload"],
    )


def _lost_budget(task: Callable[..., Any] | str, given: int | None) -> int:
    """The lost-lease budget of a call: as given, else the task's own."""
    return check_max_lost_leases(options_of(task).max_lost_leases if given is None else given)


def _delay_ms(delay: float | dt.timedelta | None) -> int | None:
    if delay is None:
        return None
    seconds = delay.total_seconds() if isinstance(delay, dt.timedelta) else float(delay)
    if seconds < 0:
        raise ValueError(f"delay must not be negative, got {delay!r}")
    return int(seconds * 1000)


def run_at_ms(run_at: dt.datetime | None) -> int | None:
    """An aware datetime as the unix milliseconds a task tuple carries."""
    if run_at is None:
        return None
    if run_at.tzinfo is None:
        raise ValueError("run_at must be a timezone-aware datetime")
    return max(0, int(run_at.timestamp() * 1000))


class Client:
    """A connection to Valkey (or Redis) running vtasks.

    ``url``: ``valkey://``, ``redis://``, ``valkeys://``/``rediss://`` or
    ``unix://``. The connection is opened on first use, in one attempt: a
    server that is not running, a wrong password or a database the server
    does not have raise `ConnectionFailed` at once, and the next use tries
    again. Once connected, a lost connection is re-established by itself:
    a call made while the server is unreachable waits while the client
    reconnects with backoff (about 5 to 10 seconds) and then raises
    `ConnectionFailed`. ``connect_timeout`` bounds each connection attempt,
    ``response_timeout`` each command's reply.

    ``engine``: ``"auto"`` (the default) runs the module's commands when the
    server has the vtasks module and the same commands as Lua scripts when it
    does not (managed Valkey/Redis); ``"module"`` refuses to start without
    the module (`ModuleNotLoaded`); ``"scripts"`` always uses the scripts.
    Both engines work on the same keys, so a deployment can move between
    them without draining its queues. The choice is logged once, when the
    connection opens.

    ``wait_replicas``: when above 0, an enqueue returns only once that many
    replicas hold it (Valkey's ``WAIT``, at most ``wait_timeout`` seconds),
    so a failover to a replica cannot lose an enqueue the caller saw
    succeed; fewer confirmations raise `NotReplicated` (the task is on the
    primary; enqueueing it again with the same id is safe). The ``WAIT``
    travels in the same pipeline as the enqueue: no extra round trip.

    Async enqueues go over a connection of the event loop's own, which the
    loop writes and reads itself (about half the time of a call through the
    client's connection, which a Rust runtime drives on another thread);
    sync enqueues take one of up to four connections that the calling
    thread writes and reads itself. A process holds the client's connection
    plus those it used. TLS URLs and ``wait_replicas`` keep to the client's
    connection; so does a client a `Worker` runs with (``own_connection``).

    ``cluster=True``: ``url`` names one or more nodes of a Valkey Cluster
    (``valkey://host1:6379,host2:6379``), from which the client learns the
    others; each command goes to the node serving its queue's slot, and
    redirections, failovers and reshards are followed.

    ``partitions``: ``{"emails": 16}`` spreads a queue over that many
    partitions, each a queue of its own in its own slot (``emails``,
    ``emails:1``, ... ``emails:15``), so one busy queue's load spreads over
    a cluster's nodes. A task goes to the partition its id picks (ids
    sharing a hash tag, ``{customer-17}...``, share one, and its FIFO
    order); workers of the queue fetch from every partition; ``get``,
    ``cancel``, the dead letters and ``stats`` take the queue's name.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        connect_timeout: float = 5.0,
        response_timeout: float = 10.0,
        engine: str = "auto",
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
        cluster: bool = False,
        partitions: dict[str, int] | None = None,
    ) -> None:
        if engine not in ENGINES:
            raise ValueError(f"engine {engine!r}: expected one of {', '.join(ENGINES)}")
        if wait_replicas < 0 or wait_timeout <= 0:
            raise ValueError("wait_replicas must be at least 0 and wait_timeout positive")
        self.url = url
        self.engine_choice = engine
        self.wait_replicas, self.wait_timeout = wait_replicas, wait_timeout
        self.cluster = bool(cluster)
        self.partitions = dict(partitions or {})
        for name, count in self.partitions.items():
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise ValueError(f"partitions of queue {name!r} must be an integer of at least 1, got {count!r}")
        self._timeouts = (connect_timeout, response_timeout)
        self._native_client: _native.NativeClient | None = None
        self._lock = threading.Lock()
        # Async enqueues go over a connection of the event loop's own
        # (`vtasks._wire`), one per loop, unless this is False (a worker
        # sets it on its client to keep to two connections).
        self.own_connection = True
        self._own_connections = own_connections()
        # The own connection used last (`OwnConnection.of`).
        self._own_last: OwnConnection | None = None

    @property
    def native(self) -> _native.NativeClient:
        if self._native_client is None:
            with self._lock:
                if self._native_client is None:
                    native = _native.NativeClient(
                        self.url,
                        *self._timeouts,
                        engine=self.engine_choice,
                        wait_replicas=self.wait_replicas,
                        wait_timeout=self.wait_timeout,
                        cluster=self.cluster,
                        partitions=sorted(self.partitions.items()),
                    )
                    logger.info(
                        "vtasks: %s engine on %s (asked for %s)",
                        native.engine, redacted_url(self.url), self.engine_choice,
                    )
                    warning = _eviction_warning(native)
                    if warning is not None:
                        logger.warning("vtasks: %s (%s)", warning, redacted_url(self.url))
                    self._native_client = native
        return self._native_client

    @property
    def engine(self) -> str:
        """The engine in use, ``"module"`` or ``"scripts"`` (connects if needed)."""
        return self.native.engine

    def __repr__(self) -> str:
        return f"<vtasks.Client {self.url}>"

    def _task_tuple(
        self,
        task: Callable[..., Any] | str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        id: str | None,
        priority: int | None,
        delay: float | dt.timedelta | None,
        run_at: dt.datetime | None,
        max_attempts: int | None,
    ) -> tuple[str, TaskTuple]:
        opts = options_of(task)
        priority = opts.priority if priority is None else priority
        check_priority(priority)
        attempts = check_max_attempts(opts.max_attempts if max_attempts is None else max_attempts)
        if delay is not None and run_at is not None:
            raise ValueError("give delay or run_at, not both")
        task_id = id or new_task_id()
        body = encode_call(opts.name, args, kwargs)
        return opts.queue, (task_id, body, priority, _delay_ms(delay), run_at_ms(run_at), attempts)

    async def enqueue(self, task: Callable[..., Any] | str, *args: Any, **kwargs: Any) -> str:
        """Enqueues ``task(*args, **kwargs)`` with the task's own options;
        returns the task id. See :meth:`enqueue_call` for options."""
        return await self.enqueue_call(task, args, kwargs)

    def enqueue_sync(self, task: Callable[..., Any] | str, *args: Any, **kwargs: Any) -> str:
        return self.enqueue_call_sync(task, args, kwargs)

    async def enqueue_call(
        self,
        task: Callable[..., Any] | str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        id: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        delay: float | dt.timedelta | None = None,
        run_at: dt.datetime | None = None,
        max_attempts: int | None = None,
        max_lost_leases: int | None = None,
    ) -> str:
        """Enqueues one call with explicit options; returns the task id.

        ``id`` makes the enqueue idempotent: enqueueing an id that exists
        changes nothing. ``delay`` (seconds or timedelta) or ``run_at`` (an
        aware datetime) postpone it. ``max_attempts`` and
        ``max_lost_leases`` replace the task's budgets of failed attempts
        and of runs lost with their worker (see :func:`vtasks.task`).
        """
        target, item = self._task_tuple(
            task, tuple(args), kwargs or {}, id=id, priority=priority, delay=delay,
            run_at=run_at, max_attempts=max_attempts,
        )
        lost = _lost_budget(task, max_lost_leases)
        await self.enqueue_items(queue or target, [item], False, lost)
        return item[0]

    def enqueue_call_sync(
        self,
        task: Callable[..., Any] | str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        id: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        delay: float | dt.timedelta | None = None,
        run_at: dt.datetime | None = None,
        max_attempts: int | None = None,
        max_lost_leases: int | None = None,
    ) -> str:
        target, item = self._task_tuple(
            task, tuple(args), kwargs or {}, id=id, priority=priority, delay=delay,
            run_at=run_at, max_attempts=max_attempts,
        )
        lost = _lost_budget(task, max_lost_leases)
        self.native.enqueue(None, queue or target, [item], None, False, lost, self.own_connection)
        return item[0]

    async def enqueue_payload(
        self,
        queue: str,
        payload: bytes,
        *,
        id: str,
        priority: int = 0,
        run_at: dt.datetime | None = None,
        max_attempts: int | None = None,
        replace_finished: bool = False,
        max_lost_leases: int | None = None,
    ) -> bool:
        """Enqueues an already-encoded payload (framework integrations);
        returns False if a task with this id already exists. With
        ``replace_finished`` a finished task with the id is replaced."""
        item = (id, payload, priority, None, run_at_ms(run_at), max_attempts)
        added = await self.enqueue_items(queue, [item], replace_finished, max_lost_leases)
        return added[0]

    def enqueue_payload_sync(
        self,
        queue: str,
        payload: bytes,
        *,
        id: str,
        priority: int = 0,
        run_at: dt.datetime | None = None,
        max_attempts: int | None = None,
        replace_finished: bool = False,
        max_lost_leases: int | None = None,
    ) -> bool:
        item = (id, payload, priority, None, run_at_ms(run_at), max_attempts)
        return self.enqueue_items_sync(queue, [item], replace_finished, max_lost_leases)[0]

    def enqueue_items_sync(
        self, queue: str, items: list[TaskTuple], replace_finished: bool = False, max_lost_leases: int | None = None
    ) -> list[bool]:
        """Enqueues task tuples (framework integrations: `TaskTuple`, with
        encoded payloads) in one command; per task, whether it was added."""
        added: list[bool] = self.native.enqueue(
            None, queue, items, None, replace_finished, max_lost_leases, self.own_connection
        )
        return added

    def enqueue_items(
        self, queue: str, items: list[TaskTuple], replace_finished: bool = False, max_lost_leases: int | None = None
    ) -> Awaitable[list[bool]]:
        """`enqueue_items_sync` from the event loop: over the loop's own
        connection (`vtasks._wire`) when it can carry it, else through the
        client's. Not a coroutine itself: the caller awaits the reply's
        future, one coroutine fewer on a producer's every enqueue."""
        native = self.native

        def through_client() -> asyncio.Future[list[bool]]:
            bridge = LoopBridge.current()
            return bridge.wait(native.enqueue(bridge.native, queue, items, None, replace_finished, max_lost_leases))

        if not self.own_connection:
            return through_client()
        request = native.enqueue_request(queue, items, None, replace_finished, max_lost_leases)
        return OwnConnection.of(self).enqueue(request, len(items), through_client)

    def _many(
        self, task: Callable[..., Any] | str, calls: list[tuple[tuple[Any, ...], dict[str, Any]]], queue: str | None
    ) -> tuple[str, list[TaskTuple]]:
        """The queue and task tuples of many calls of one task."""
        items = [
            self._task_tuple(task, a, k, id=None, priority=None, delay=None, run_at=None,
                             max_attempts=None)
            for a, k in calls
        ]
        return (queue or (items[0][0] if items else "")), [i for _, i in items]

    async def enqueue_many(
        self, task: Callable[..., Any] | str, calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
        *, queue: str | None = None,
    ) -> list[str]:
        """Enqueues many calls of one task in one command; returns their ids."""
        target, items = self._many(task, calls, queue)
        if not items:
            return []
        await self.enqueue_items(target, items, False, _lost_budget(task, None))
        return [i[0] for i in items]

    def enqueue_many_sync(
        self, task: Callable[..., Any] | str, calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
        *, queue: str | None = None,
    ) -> list[str]:
        target, items = self._many(task, calls, queue)
        if not items:
            return []
        self.native.enqueue(None, target, items, None, False, _lost_budget(task, None), self.own_connection)
        return [i[0] for i in items]

    async def get(self, queue: str, id: str) -> TaskState | None:
        bridge = LoopBridge.current()
        return _task_state(queue, id, await bridge.wait(self.native.get(bridge.native, queue, id)))

    def get_sync(self, queue: str, id: str) -> TaskState | None:
        return _task_state(queue, id, self.native.get(None, queue, id))

    async def stats(self, queue: str) -> dict[str, int]:
        bridge = LoopBridge.current()
        return await bridge.wait(self.native.stats(bridge.native, queue))

    def stats_sync(self, queue: str) -> dict[str, int]:
        return self.native.stats(None, queue)

    async def dead_letters(self, queue: str, offset: int = 0, count: int = 100) -> list[tuple[str, int, int, str]]:
        """Dead-lettered tasks, oldest first: ``(id, dead_at_ms, attempts, error)``."""
        bridge = LoopBridge.current()
        return await bridge.wait(self.native.dead_letters(bridge.native, queue, offset, count))

    def dead_letters_sync(self, queue: str, offset: int = 0, count: int = 100) -> list[tuple[str, int, int, str]]:
        return self.native.dead_letters(None, queue, offset, count)

    async def requeue_dead(self, queue: str, ids: list[str] | None = None) -> int:
        """Puts dead tasks back (all when ``ids`` is None); returns how many."""
        bridge = LoopBridge.current()
        return await bridge.wait(self.native.requeue_dead(bridge.native, queue, ids))

    def requeue_dead_sync(self, queue: str, ids: list[str] | None = None) -> int:
        return self.native.requeue_dead(None, queue, ids)

    async def purge_dead(self, queue: str, ids: list[str] | None = None) -> int:
        """Deletes dead tasks (all when ``ids`` is None); returns how many."""
        bridge = LoopBridge.current()
        return await bridge.wait(self.native.purge_dead(bridge.native, queue, ids))

    def purge_dead_sync(self, queue: str, ids: list[str] | None = None) -> int:
        return self.native.purge_dead(None, queue, ids)

    async def pause(self, queue: str) -> None:
        """Workers get nothing from a paused queue; enqueue still works."""
        bridge = LoopBridge.current()
        await bridge.wait(self.native.pause(bridge.native, queue))

    def pause_sync(self, queue: str) -> None:
        self.native.pause(None, queue)

    async def resume(self, queue: str) -> None:
        bridge = LoopBridge.current()
        await bridge.wait(self.native.resume(bridge.native, queue))

    def resume_sync(self, queue: str) -> None:
        self.native.resume(None, queue)

    async def cancel(self, queue: str, ids: list[str]) -> list[bool]:
        """Cancels tasks still waiting; per id, whether it was cancelled."""
        bridge = LoopBridge.current()
        return await bridge.wait(self.native.cancel(bridge.native, queue, ids))

    def cancel_sync(self, queue: str, ids: list[str]) -> list[bool]:
        return self.native.cancel(None, queue, ids)

    async def clear_queue(self, queue: str) -> int:
        """Deletes up to 10,000 of the queue's waiting tasks, ready then
        delayed (``VTASKS.CLEAR``), and returns how many: call again until
        it returns 0. Running, finished and dead-lettered tasks stay. Each
        deleted task is as if cancelled (``cancel``): its result is gone and
        its id free again; the queue's ``cancelled`` total counts it.
        ``vtasks.NoSuchQueue`` if the queue was never used."""
        bridge = LoopBridge.current()
        return await bridge.wait(self.native.clear_queue(bridge.native, queue))

    def clear_queue_sync(self, queue: str) -> int:
        """``clear_queue``, from synchronous code."""
        return self.native.clear_queue(None, queue)

    async def set_schedule(self, schedule: Schedule) -> str:
        """Adds or changes a periodic schedule kept by the server; returns
        ``"added"``, ``"changed"`` (in effect at once) or ``"unchanged"``
        (its next and last run kept). An invalid timing or argument raises
        ValueError or `InvalidArgument` before anything is sent."""
        bridge = LoopBridge.current()
        return await bridge.wait(self._set_schedule(bridge.native, schedule))

    def set_schedule_sync(self, schedule: Schedule) -> str:
        return self._set_schedule(None, schedule)

    def _set_schedule(self, bridge: Any, s: Schedule) -> Any:
        return self.native.set_schedule(
            bridge, s.queue, s.name, s.timing, s.payload(), s.priority, s.max_attempts, s.catch_up, s.enabled
        )

    async def unschedule(self, queue: str, *names: str) -> int:
        """Removes schedules by name; returns how many there were. Tasks
        they already enqueued stay."""
        bridge = LoopBridge.current()
        return await bridge.wait(self.native.unschedule(bridge.native, queue, list(names)))

    def unschedule_sync(self, queue: str, *names: str) -> int:
        return self.native.unschedule(None, queue, list(names))

    async def schedules(self, *queues: str) -> list[ScheduleInfo]:
        """The schedules of ``queues`` (default: ``"default"``), by queue
        then name, with their next and last runs."""
        from .schedules import info_from

        bridge = LoopBridge.current()
        out: list[ScheduleInfo] = []
        for queue in queues or ("default",):
            raw = await bridge.wait(self.native.schedules(bridge.native, queue))
            out.extend(info_from(queue, r) for r in raw)
        return out

    def schedules_sync(self, *queues: str) -> list[ScheduleInfo]:
        from .schedules import info_from

        return [info_from(q, r) for q in queues or ("default",) for r in self.native.schedules(None, q)]

    def has_module_sync(self) -> bool:
        return self.native.has_module(None)

    async def eviction_warning(self) -> str | None:
        """A warning naming the server's ``maxmemory-policy`` and the fix when
        that policy can evict task data (any ``allkeys-*`` policy; a
        ``volatile-*`` one for kept results), else None. Read now from
        ``INFO memory``; None too when the server refuses ``INFO``. The
        client logs it once when it connects."""
        bridge = LoopBridge.current()
        try:
            return await bridge.wait(self.native.eviction_warning(bridge.native))
        except _native.ServerError:
            return None

    def eviction_warning_sync(self) -> str | None:
        return _eviction_warning(self.native)


def _eviction_warning(native: _native.NativeClient) -> str | None:
    # A user without INFO (an ACL limited to vtasks) gets no check.
    try:
        return native.eviction_warning(None)
    except _native.ServerError:
        return None
