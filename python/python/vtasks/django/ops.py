"""What the operator's tools share: the admin pages, ``manage.py vtasks``
and the metrics view read and steer queues through these functions, so
the three say the same thing about a queue.

Nothing here loads a whole queue: dead letters are read a page at a time
(``VTASKS.DEADLIST`` with OFFSET and COUNT), counts come from
``VTASKS.STATS``, and "all" actions run on the server in batches.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
from typing import Any

from django.tasks import task_backends
from django.tasks.exceptions import InvalidTaskBackend

from ..client import TaskState, _error_record
from ..errors import NoSuchQueue
from ..payloads import decode_call_with_options, error_entries
from .backend import ValkeyTaskBackend, result_id, split_result_id

# The counters of VTASKS.STATS (totals since the queue was first used).
COUNTERS = (
    "enqueued", "acked", "failed", "retried", "expired", "dead_lettered", "released", "requeued",
    "cancelled", "purged", "vanished", "leases_cut", "dead_lost",
)
# Its gauges (the state now).
GAUGES = ("ready", "delayed", "leased", "dead", "done", "overdue_leases", "paused", "blocked", "oldest_ready_age_ms")
# VTASKS.REQUEUE/PURGE ... ALL handle at most this many per call.
_ALL_BATCH = 10_000


def valkey_backends() -> dict[str, ValkeyTaskBackend]:
    """Every configured task backend that is a vtasks backend, by alias,
    in the order of ``settings.TASKS``."""
    found = {}
    for alias in task_backends.settings:
        try:
            backend = task_backends[alias]
        except InvalidTaskBackend:
            continue
        if isinstance(backend, ValkeyTaskBackend):
            found[alias] = backend
    return found


def backend_named(alias: str) -> ValkeyTaskBackend:
    """The vtasks backend ``alias``; LookupError with the configured ones."""
    backends = valkey_backends()
    backend = backends.get(alias)
    if backend is None:
        configured = ", ".join(repr(a) for a in backends) or "none"
        raise LookupError(f"no vtasks task backend {alias!r} in settings.TASKS (vtasks backends: {configured})")
    return backend


def check_queue(backend: ValkeyTaskBackend, queue: str) -> str:
    """``queue`` if the backend serves it; LookupError otherwise. A typo
    must not pause, or purge, a queue nobody uses (PAUSE creates one)."""
    if backend.queues and queue not in backend.queues:
        raise LookupError(
            f"queue {queue!r} is not configured for backend {backend.alias!r} "
            f"(its QUEUES: {', '.join(backend.queue_order)})"
        )
    return queue


def stats(backend: ValkeyTaskBackend, queue: str) -> dict[str, int]:
    """``VTASKS.STATS`` of a queue; all zeros for a queue never used."""
    try:
        return backend.client.stats_sync(queue)
    except NoSuchQueue:
        return dict.fromkeys(GAUGES + COUNTERS, 0)


class RateSampler:
    """Enqueue and completion rates from two readings of the STATS
    counters: each reading is kept (per backend and queue, in this
    process), and a rate is the change since the oldest reading taken in
    the last ``window`` seconds, over the time between them. The first
    reading of a queue has no rate yet. A counter that went down (the
    queue was deleted) starts the window again."""

    def __init__(self, window: float = 60.0) -> None:
        self.window = window
        self._lock = threading.Lock()
        self._readings: dict[tuple[str, str], list[tuple[float, dict[str, int]]]] = {}

    def rates(
        self, key: tuple[str, str], counters: dict[str, int], names: tuple[str, ...], now: float | None = None
    ) -> tuple[dict[str, float] | None, float]:
        """Per second, the change of each counter in ``names`` over the
        window (None without an earlier reading), and the seconds it spans."""
        now = time.monotonic() if now is None else now
        with self._lock:
            readings = [r for r in self._readings.get(key, []) if now - r[0] <= self.window]
            if any(counters.get(n, 0) < old.get(n, 0) for _, old in readings for n in names):
                readings = []
            base = readings[0] if readings else None
            # Keep one reading a second at most: a page reloaded in a loop
            # cannot grow the list.
            if not readings or now - readings[-1][0] >= 1.0:
                readings.append((now, {n: counters.get(n, 0) for n in names}))
            self._readings[key] = readings
        if base is None or now - base[0] < 0.5:
            return None, 0.0
        span = now - base[0]
        return {n: (counters.get(n, 0) - base[1].get(n, 0)) / span for n in names}, span


# The admin's readings, shared by its pages in this process.
sampler = RateSampler()


@dataclasses.dataclass
class QueueRow:
    """One queue as the admin's queue list and ``manage.py vtasks stats``
    show it."""

    backend: str
    name: str
    stats: dict[str, int]
    # Enqueued and completed (acknowledged) tasks per second, or None
    # before a second reading; the seconds the rates span.
    enqueue_rate: float | None
    completion_rate: float | None
    rate_span: float

    @property
    def oldest_ready_age(self) -> float:
        return self.stats.get("oldest_ready_age_ms", 0) / 1000

    @property
    def paused(self) -> bool:
        return bool(self.stats.get("paused"))


def queue_rows(backends: dict[str, ValkeyTaskBackend], rates: RateSampler | None = None) -> list[QueueRow]:
    """Every configured queue of ``backends`` with its STATS (one round
    trip per queue)."""
    rows = []
    for alias, backend in backends.items():
        for queue in backend.queue_order:
            counts = stats(backend, queue)
            found, span = (None, 0.0) if rates is None else rates.rates((alias, queue), counts, ("enqueued", "acked"))
            rows.append(
                QueueRow(
                    backend=alias,
                    name=queue,
                    stats=counts,
                    enqueue_rate=None if found is None else found["enqueued"],
                    completion_rate=None if found is None else found["acked"],
                    rate_span=span,
                )
            )
    return rows


def _when(ms: int | None) -> dt.datetime | None:
    return None if ms is None else dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


@dataclasses.dataclass
class TaskView:
    """A task as an operator reads it: its call decoded from the payload
    (``name`` None when the payload is not a vtasks call), its state and
    its errors, oldest first."""

    backend: str
    queue: str
    id: str
    state: TaskState
    name: str | None
    args: list[Any]
    kwargs: dict[str, Any]
    errors: list[dict[str, Any]]
    omitted_errors: int

    @property
    def result_id(self) -> str:
        return result_id(self.id, self.queue)

    @property
    def waiting(self) -> bool:
        """Cancellable: ready or delayed, not yet running."""
        return self.state.status in ("ready", "delayed")


def task_view(backend: ValkeyTaskBackend, queue: str, task_id: str) -> TaskView | None:
    """The task ``task_id`` of ``queue`` (one round trip); None when the
    server has no such task (never enqueued, or its kept record expired)."""
    state = backend.client.get_sync(queue, task_id)
    if state is None:
        return None
    try:
        name, args, kwargs, _ = decode_call_with_options(state.payload)
    except ValueError:
        name, args, kwargs = None, [], {}
    errors, omitted = error_entries(state.error)
    return TaskView(backend.alias, queue, task_id, state, name, args, kwargs, errors, omitted)


def parse_result_id(value: str) -> tuple[str, str]:
    """``(task id, queue)`` of a result id ``<task id>@<queue>``;
    ValueError when it is not one."""
    try:
        return split_result_id(value)
    except Exception:
        raise ValueError(f"{value!r} is not a vtasks result id (<task id>@<queue>)") from None


@dataclasses.dataclass
class DeadLetter:
    """A dead-lettered task on a page of the dead-letter list."""

    id: str
    dead_at: dt.datetime | None
    attempts: int
    # The last failure (exception_class, message, traceback) and how many
    # failed before it.
    error: dict[str, Any]
    earlier_errors: int
    # From the task itself (None if it vanished meanwhile).
    name: str | None
    workers: list[str]


def dead_count(backend: ValkeyTaskBackend, queue: str) -> int:
    return stats(backend, queue).get("dead", 0)


def dead_page(backend: ValkeyTaskBackend, queue: str, offset: int, count: int, newest_first: bool = True) -> list[
    DeadLetter
]:
    """``count`` dead letters from ``offset``, newest first by default
    (``VTASKS.DEADLIST`` lists oldest first, so the page is read from the
    end), each with its task's name and workers (one read per task: pages
    are small)."""
    client = backend.client
    if newest_first:
        total = dead_count(backend, queue)
        end = max(0, total - offset)
        start = max(0, end - count)
        try:
            entries = client.dead_letters_sync(queue, start, end - start) if end > start else []
        except NoSuchQueue:
            entries = []
        entries.reverse()
    else:
        try:
            entries = client.dead_letters_sync(queue, offset, count)
        except NoSuchQueue:
            entries = []
    page = []
    for task_id, dead_at, attempts, text in entries:
        entries_, _ = error_entries(_error_record(text) if text else None)
        last = entries_[-1] if entries_ else {"exception_class": "", "message": "", "traceback": ""}
        state = client.get_sync(queue, task_id)
        name = None
        workers: list[str] = []
        if state is not None:
            workers = state.workers
            try:
                name = decode_call_with_options(state.payload)[0]
            except ValueError:
                name = None
        page.append(DeadLetter(task_id, _when(dead_at), attempts, last, len(entries_) - 1, name, workers))
    return page


def requeue_dead(backend: ValkeyTaskBackend, queue: str, ids: list[str] | None = None) -> int:
    """Puts dead letters back in the queue (all when ``ids`` is None, in
    server-side batches); how many."""
    client = backend.client
    try:
        if ids is not None:
            return client.requeue_dead_sync(queue, ids) if ids else 0
        return _all_batches(backend, queue, client.requeue_dead_sync)
    except NoSuchQueue:
        return 0


def purge_dead(backend: ValkeyTaskBackend, queue: str, ids: list[str] | None = None) -> int:
    """Deletes dead letters (all when ``ids`` is None); how many."""
    client = backend.client
    try:
        if ids is not None:
            return client.purge_dead_sync(queue, ids) if ids else 0
        return _all_batches(backend, queue, client.purge_dead_sync)
    except NoSuchQueue:
        return 0


def waiting_count(backend: ValkeyTaskBackend, queue: str) -> int:
    """Tasks waiting to run (ready and delayed); 0 for a queue never used."""
    counts = stats(backend, queue)
    return counts.get("ready", 0) + counts.get("delayed", 0)


def clear_queue(backend: ValkeyTaskBackend, queue: str) -> int:
    """Deletes the queue's waiting tasks, ready and delayed (``VTASKS.CLEAR``,
    at most 10,000 a call, repeated until a call deletes none); how many.
    Running tasks, kept results and dead letters stay; each deleted task is
    as if cancelled. Tasks enqueued while it runs may be deleted too."""
    client = backend.client
    total = 0
    try:
        while cleared := client.clear_queue_sync(queue):
            total += cleared
    except NoSuchQueue:
        pass
    return total


def _all_batches(backend: ValkeyTaskBackend, queue: str, action: Any) -> int:
    """Runs ``action(queue, None)`` (an ``ALL`` form, at most 10,000 tasks
    a call) until it has handled the dead letters there were at the start:
    tasks that die again meanwhile (a requeued task failing at once) are
    not chased for ever."""
    there = dead_count(backend, queue)
    total = 0
    while True:
        moved = action(queue, None)
        total += moved
        if moved < _ALL_BATCH or total >= there:
            return total
