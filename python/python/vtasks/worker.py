"""``vtasks.Worker``: runs registered tasks from Valkey queues.

Async tasks run on the event loop, sync tasks in a thread pool, at most
``concurrency`` at a time. Batches of tasks cross from Rust in one call, and
outcomes go back with the next fetch: one round trip per batch.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import inspect
import logging
import os
import queue as queue_module
import random
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from . import _native
from ._bridge import LoopBridge
from .client import Client, TaskState
from .errors import PayloadError, ResultNotStored, ServerFull, TaskNotRegistered, VtasksError
from .limits import DEFAULT_LEASE, DEFAULT_MAX_BACKOFF, DEFAULT_RETRY_BACKOFF, MAX_PAYLOAD
from .payloads import decode_call_with_options, dumps, error_entries, error_entry, error_record
from .tasks import resolve

logger = logging.getLogger("vtasks.worker")

Resolver = Callable[[str], Callable[..., Any]]


class Failure:
    """A failed attempt as the worker records it: the error text the
    server keeps (this attempt's error after the earlier attempts' ones,
    ``docs/PROTOCOL.md``, "Python tasks"), its attempts oldest first, and
    whether the task will run again."""

    __slots__ = ("exc", "entries", "text", "will_retry", "retryable")

    def __init__(self, exc: BaseException, attempt: int, state: TaskState | None, retryable: bool) -> None:
        previous: list[dict[str, Any]] = []
        omitted = 0
        if state is not None and state.error is not None and attempt > 1:
            previous, omitted = error_entries(state.error)
            # Text the server wrote (a lost lease) names no attempt: it is
            # the one before this.
            if previous and "attempt" not in previous[-1]:
                previous[-1]["attempt"] = attempt - 1
        self.exc = exc
        self.retryable = retryable
        self.entries = [*previous, error_entry(exc, attempt)]
        self.text = error_record(self.entries, omitted)
        # Unknown state (the read failed): the server decides; assume a retry.
        self.will_retry = retryable and (state is None or _failed_before(state) + 1 < state.max_attempts)


def _failed_before(state: TaskState) -> int:
    """Attempts of the task that failed before the running one."""
    failed = getattr(state, "failed_attempts", None)
    # Servers that count every ended attempt against max_attempts: all
    # attempts before the running one.
    return state.attempts - 1 if failed is None else int(failed)


class Delivery:
    """One run of a task: what a task wrapper learns about it (resolvers
    that mark their callable with ``wants_delivery = True`` get it as the
    first argument), and how the wrapper learns what becomes of a failure
    before the worker records it (``failure``/``afailure``)."""

    __slots__ = ("queue", "id", "attempt", "consumer", "timeout", "abandoned", "reported", "_client")

    def __init__(
        self, queue: str, id: str, attempt: int, consumer: str,
        timeout: float | None = None, client: Client | None = None,
    ) -> None:
        self.queue, self.id, self.attempt, self.consumer = queue, id, attempt, consumer
        # Seconds an async task may run (its payload's option), or None.
        self.timeout = timeout
        # Set when the worker stops without this run's outcome (shutdown):
        # a wrapper then reports nothing, the lease decides.
        self.abandoned = False
        # The failure the wrapper computed; the worker records the same.
        self.reported: Failure | None = None
        self._client = client

    def failure(self, exc: BaseException, *, retryable: bool = True) -> Failure:
        """How this failed attempt is recorded, with the errors of the
        earlier ones and whether the task runs again; reads the task once
        (blocking: call it from a sync task's thread)."""
        state = None
        if self._client is not None:
            try:
                state = self._client.get_sync(self.queue, self.id)
            except VtasksError:
                pass
        self.reported = Failure(exc, self.attempt, state, retryable)
        return self.reported

    async def afailure(self, exc: BaseException, *, retryable: bool = True) -> Failure:
        """As `failure`, for the event loop."""
        state = None
        if self._client is not None:
            try:
                state = await self._client.get(self.queue, self.id)
            except VtasksError:
                pass
        self.reported = Failure(exc, self.attempt, state, retryable)
        return self.reported


class _TaskThreads(concurrent.futures.Executor):
    """Threads for sync tasks, started as needed (the worker runs at most
    ``concurrency`` at once). Daemon threads: a task still running when the
    worker stops without it (grace period over, second signal) does not
    keep the process alive, as a ThreadPoolExecutor's threads would (the
    interpreter joins them at exit)."""

    def __init__(self, prefix: str) -> None:
        self._work: queue_module.SimpleQueue[tuple[concurrent.futures.Future[Any], Callable[[], Any]] | None] = (
            queue_module.SimpleQueue()
        )
        self._prefix = prefix
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._closed = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the task threads are shut down")
            self._work.put((future, lambda: fn(*args, **kwargs)))
            if self._idle == 0:
                self._threads += 1
                threading.Thread(target=self._serve, name=f"{self._prefix}-{self._threads}", daemon=True).start()
            else:
                self._idle -= 1
        return future

    def _serve(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            future, call = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(call())
                except BaseException as exc:
                    future.set_exception(exc)
            with self._lock:
                self._idle += 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            threads = self._threads
        if cancel_futures:
            while True:
                try:
                    item = self._work.get_nowait()
                except queue_module.Empty:
                    break
                if item is not None:
                    item[0].cancel()
        for _ in range(threads):
            self._work.put(None)


class Worker:
    """Fetches tasks from ``queues`` (in order of preference) and runs them.

    At most ``concurrency`` tasks run at once; up to ``prefetch`` more
    (default: a quarter of ``concurrency``) wait leased in the worker, so a
    finished task's slot is refilled without waiting for a round trip.
    ``queue_concurrency`` caps how many tasks of one queue run at once; the
    worker stops fetching from a queue while it is at its cap.

    ``burst=True`` drains the queues and returns once they hold no ready
    and no leased task (a lease lost with a connection is waited for and
    run when it expires; paused queues and delayed tasks, including failed
    tasks waiting for their retry, are not waited for). ``max_tasks``
    stops the worker once it has taken that many tasks (run, or
    dead-lettered because they cannot run); it never takes more.

    ``handle_signals`` turns SIGTERM/SIGINT into a graceful shutdown (as
    ``stop()`` does): no new tasks, fetched-but-unstarted ones go back to
    the queue without counting an attempt, running ones get ``grace``
    seconds. A second signal stops at once (``abort()``). A task still
    running when the grace ends, or at a forced stop, is abandoned and the
    log says so: its outcome is not recorded, its lease is no longer
    renewed and runs out, and the server then runs it again or, once its
    budget is spent, dead-letters it with the lease's error. An async task
    is cancelled; a sync task cannot be interrupted and ends with the
    process.

    A failed attempt is retried after ``retry_backoff`` seconds, doubled
    per attempt, with jitter (at most ``max_backoff``), until the task's
    ``max_attempts``; its error is recorded with the errors of the earlier
    attempts (one read of the task per failure). ``resolver`` maps a
    payload's task name to the callable to run; by default only tasks
    registered with ``@vtasks.task``. A payload naming anything else is
    dead-lettered.
    """

    def __init__(
        self,
        client: Client | str,
        *,
        queues: list[str] | tuple[str, ...] = ("default",),
        concurrency: int = 10,
        prefetch: int | None = None,
        queue_concurrency: dict[str, int] | None = None,
        burst: bool = False,
        handle_signals: bool = True,
        resolver: Resolver | None = None,
        lease: float = DEFAULT_LEASE,
        block: float = 5.0,
        keep_results: float | None = None,
        grace: float = 30.0,
        max_tasks: int | None = None,
        retry_backoff: float = DEFAULT_RETRY_BACKOFF,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        consumer: str | None = None,
    ) -> None:
        if not queues:
            raise ValueError("a worker needs at least one queue")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.client = Client(client) if isinstance(client, str) else client
        self.queues = list(queues)
        self.concurrency = concurrency
        self.prefetch = max(0, concurrency // 4 if prefetch is None else prefetch)
        self.queue_concurrency = dict(queue_concurrency or {})
        unknown = set(self.queue_concurrency) - set(self.queues)
        if unknown:
            raise ValueError(f"queue_concurrency names queues the worker does not serve: {sorted(unknown)}")
        if any(limit < 1 for limit in self.queue_concurrency.values()):
            raise ValueError("each queue_concurrency limit must be at least 1")
        # Per queue: tasks leased to this worker and not finished.
        self._held: collections.Counter[str] = collections.Counter()
        self.burst = burst
        self.handle_signals = handle_signals
        self.resolver = resolver or resolve
        self.lease = lease
        self.block = min(block, 0.2) if burst else block
        self.keep_results = keep_results
        self.grace = grace
        self.max_tasks = max_tasks
        self.retry_backoff = retry_backoff
        self.max_backoff = max_backoff
        self.consumer = consumer or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.succeeded = 0
        self.failed = 0
        self.dead_lettered = 0
        self._running: set[asyncio.Future[Any]] = set()
        # The run behind each running future: (delivery, task name, async).
        self._runs: dict[asyncio.Future[Any], tuple[Delivery, str, bool]] = {}
        # Failures being recorded (each reads the task first).
        self._reports: set[asyncio.Task[None]] = set()
        # Tasks taken (started or refused), against max_tasks.
        self._taken = 0
        self._stopping = False
        self._aborting = False
        self._aborted = asyncio.Event()
        self._native: _native.NativeWorker | None = None
        self._pool: concurrent.futures.Executor | None = None
        self._is_async: dict[Callable[..., Any], bool] = {}
        self._signatures: dict[Callable[..., Any], inspect.Signature] = {}
        # Leased, not started yet: (queue, id, token, attempt, payload).
        self._backlog: collections.deque[tuple[str, str, int, int, bytes]] = collections.deque()
        self._starting = False

    def __repr__(self) -> str:
        return (
            f"<vtasks.Worker {self.consumer} queues={self.queues} running={len(self._running)} "
            f"succeeded={self.succeeded} failed={self.failed} dead={self.dead_lettered}>"
        )

    @property
    def stats(self) -> dict[str, int]:
        """Counters of the native core (fetched, round_trips, stale, ...)."""
        return self._native.stats() if self._native is not None else {}

    async def run(self) -> None:
        """Runs until stopped (or, in burst mode, until the queues are empty)."""
        loop = asyncio.get_running_loop()
        bridge = LoopBridge.current()
        holds = self.concurrency + self.prefetch
        if self.max_tasks is not None:
            holds = max(1, min(holds, self.max_tasks))  # never fetch more than it may run
        self._native = _native.NativeWorker(
            self.client.native, self.queues, self.consumer, holds, self.lease, self.block, self.keep_results,
        )
        self._pool = _TaskThreads("vtasks-task")
        if self.handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal)
        self._native.start()
        logger.info("worker %s serving %s, concurrency %d", self.consumer, self.queues, self.concurrency)
        watcher = asyncio.create_task(self._log_connection(bridge))
        try:
            await self._loop(bridge)
        finally:
            await self._shutdown(bridge)
            watcher.cancel()
            if self.handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            logger.info("worker %s stopped: %r", self.consumer, self)

    async def _loop(self, bridge: LoopBridge) -> None:
        native = self._native
        assert native is not None
        full_since: float | None = None
        while not self._stopping:
            try:
                batch = await bridge.wait(native.next_batch(bridge.native))
            except ServerFull as exc:
                # Only an older module, or a function library that cannot be
                # loaded while the server is full, refuses a fetch: memory
                # comes back as other workers drain and results expire.
                if full_since is None:
                    full_since = time.monotonic()
                    logger.warning("worker %s: %s; retrying until it has room", self.consumer, exc)
                await asyncio.sleep(min(2.0, 0.05 + (time.monotonic() - full_since) / 4))
                continue
            if full_since is not None:
                logger.warning(
                    "worker %s: Valkey has room again after %.1f s", self.consumer, time.monotonic() - full_since
                )
                full_since = None
            if self._stopping:
                if batch:
                    await bridge.wait(native.release(bridge.native, [(q, i, t) for q, i, t, _, _ in batch]))
                return
            if not batch and self.burst and native.running() == 0 and not self._running:
                # Leases lost with a connection come back when they expire:
                # a burst ends once nothing is ready or leased.
                if await bridge.wait(native.drained(bridge.native)):
                    return
            self._backlog.extend(batch)
            for queue, *_ in batch:
                self._count(queue, +1)
            self._start_waiting()

    def _on_signal(self) -> None:
        if self._stopping:
            self.abort()
        else:
            logger.warning(
                "worker %s stopping: no new tasks, %d running get up to %g s (signal again to stop at once)",
                self.consumer, len(self._running), self.grace,
            )
            self.stop()

    def abort(self) -> None:
        """Stops at once: running tasks are abandoned (see the class
        docstring); settlements already gathered get a second to reach
        Valkey. Call it on the worker's event loop."""
        if not self._aborting:
            self._aborting = True
            logger.warning("worker %s stopping at once", self.consumer)
        self.stop()
        self._aborted.set()

    def _quota_reached(self) -> bool:
        return self.max_tasks is not None and self._taken >= self.max_tasks

    async def _log_connection(self, bridge: LoopBridge) -> None:
        """Logs once when the server becomes unreachable and once when it
        is back; the native core retries by itself meanwhile."""
        native = self._native
        assert native is not None
        up = True
        while True:
            error = await bridge.wait(native.connection_changed(bridge.native, up))
            if (error is None) == up:
                return  # closed
            up = error is None
            if up:
                logger.warning("worker %s: the connection to Valkey is back", self.consumer)
            else:
                logger.warning("worker %s: Valkey is unreachable, retrying: %s", self.consumer, error)

    def stop(self) -> None:
        """Requests a graceful shutdown; call it on the worker's event loop
        (signal handlers installed by ``run`` do)."""
        if self._stopping:
            return
        self._stopping = True
        if self._native is not None:
            bridge = LoopBridge.current()
            stopped = bridge.wait(self._native.stop(bridge.native))
            # Nobody awaits it; retrieve its outcome so a failure is not reported as unhandled.
            stopped.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def close(self) -> None:
        """Stops the worker; ``run`` returns once running tasks finish."""
        self.stop()

    def _start_waiting(self) -> None:
        # Not re-entered: a task that finishes while being started (eagerly)
        # frees its slot for the loop already running here.
        if self._starting:
            return
        self._starting = True
        try:
            while (
                self._backlog and len(self._running) < self.concurrency and not self._stopping
                and not self._quota_reached()
            ):
                item = self._next_startable()
                if item is None:
                    return
                self._start(*item)
        finally:
            self._starting = False

    def _next_startable(self) -> tuple[str, str, int, int, bytes] | None:
        """The oldest waiting task whose queue is under its running cap."""
        if not self.queue_concurrency:
            return self._backlog.popleft()
        running = collections.Counter(q for q, *_ in self._backlog)
        for index, item in enumerate(self._backlog):
            queue = item[0]
            limit = self.queue_concurrency.get(queue)
            if limit is None or self._held[queue] - running[queue] < limit:
                del self._backlog[index]
                return item
        return None

    def _count(self, queue: str, delta: int) -> None:
        """Tracks tasks held per queue and holds back fetching at the cap."""
        self._held[queue] += delta
        limit = self.queue_concurrency.get(queue)
        if limit is not None and self._native is not None:
            self._native.hold_back(queue, self._held[queue] >= limit)

    async def _shutdown(self, bridge: LoopBridge) -> None:
        native = self._native
        if native is not None and self._backlog:
            # Fetched but never started: back to the queue, no attempt counted.
            unstarted = [(q, i, t) for q, i, t, _, _ in self._backlog]
            self._backlog.clear()
            await bridge.wait(native.release(bridge.native, unstarted))
        if self._running:
            self._abandon(await self._wait_running())
        sent = True
        if self._reports:
            sent = await self._unless_aborted(asyncio.gather(*self._reports, return_exceptions=True))
        if native is not None:
            sent = await self._unless_aborted(bridge.wait(native.close(bridge.native))) and sent
        if not sent:
            logger.warning("worker %s stopped before its last outcomes reached Valkey", self.consumer)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def _unless_aborted(self, future: asyncio.Future[Any]) -> bool:
        """Waits for ``future``; a forced stop, before or during the wait,
        gives it one more second. Whether it finished."""
        aborted = asyncio.ensure_future(self._aborted.wait())
        try:
            done, _ = await asyncio.wait({future, aborted}, return_when=asyncio.FIRST_COMPLETED)
            if future not in done:
                done, _ = await asyncio.wait({future}, timeout=1.0)
            if future in done:
                future.result()
                return True
            future.cancel()
            return False
        finally:
            aborted.cancel()

    async def _wait_running(self) -> set[asyncio.Future[Any]]:
        """Waits for the running tasks until the grace period ends or a
        forced stop; the ones still running."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace
        aborted = asyncio.ensure_future(self._aborted.wait())
        try:
            while self._running and not self._aborting:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                await asyncio.wait({*self._running, aborted}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        finally:
            aborted.cancel()
        return set(self._running)

    def _abandon(self, pending: set[asyncio.Future[Any]]) -> None:
        """Gives up on tasks still running, saying what becomes of them."""
        when = "at a forced stop" if self._aborting else f"after the {self.grace:g} s grace period"
        for future in pending:
            delivery, name, is_async = self._runs[future]
            delivery.abandoned = True
            logger.warning(
                "task %s in %s (%s, attempt %d) is still running %s: the worker stops without its outcome. "
                "Its lease is no longer renewed and runs out within %g s; the server then runs the task again "
                "or, once its budget is spent, dead-letters it with the lease's error%s.",
                delivery.id, delivery.queue, name, delivery.attempt, when, self.lease,
                "" if is_async else " (a sync task cannot be interrupted: it ends with the process)",
            )
            future.cancel()

    def _start(self, queue: str, task_id: str, token: int, attempt: int, body: bytes) -> None:
        native = self._native
        assert native is not None
        self._taken += 1
        if self._quota_reached():
            self.stop()
        delivery = Delivery(queue, task_id, attempt, self.consumer, client=self.client)
        try:
            name, args, kwargs, options = decode_call_with_options(body)
            fn = self.resolver(name)
        except (ValueError, TaskNotRegistered) as exc:
            self._refuse(token, delivery, "?", exc)
            return
        is_async = self._is_async.get(fn)
        if is_async is None:
            is_async = self._is_async[fn] = inspect.iscoroutinefunction(fn)
        backoff = float(options.get("backoff", self.retry_backoff))
        timeout = options.get("timeout")
        delivery.timeout = None if timeout is None else float(timeout)
        if getattr(fn, "wants_delivery", False):
            args = [delivery, *args]
        loop = asyncio.get_running_loop()
        call = (name, fn, args, kwargs)
        if is_async:
            # Started eagerly: a task that finishes without awaiting anything
            # is settled at once, without a trip through the event loop.
            try:
                coro = fn(*args, **kwargs)
            except TypeError as exc:
                # Calling a coroutine function runs none of its body: a
                # TypeError here is arguments that do not fit.
                self._refuse(token, delivery, name, self._arguments_mismatch(name, fn, args, kwargs) or exc)
                return
            if delivery.timeout is not None:
                coro = asyncio.wait_for(coro, delivery.timeout)
            future: asyncio.Future[Any] = asyncio.Task(coro, loop=loop, eager_start=True)
            if future.done():
                self._finished(future, token, delivery, call, backoff)
                return
        else:
            future = loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))
        self._running.add(future)
        self._runs[future] = (delivery, name, is_async)
        future.add_done_callback(lambda f: self._finished(f, token, delivery, call, backoff))

    def _refuse(self, token: int, delivery: Delivery, name: str, exc: BaseException, counted: bool = True) -> None:
        """Dead-letters a task that cannot run (or cannot succeed), at once
        and with the reason (``counted``: it still holds its place in the
        per-queue count)."""
        self.dead_lettered += 1
        self._report(token, delivery, name, exc, None)
        if counted:
            self._count(delivery.queue, -1)

    def _report(self, token: int, delivery: Delivery, name: str, exc: BaseException, retry_in: float | None) -> None:
        """Records a failed attempt: retried after ``retry_in`` seconds (the
        server dead-letters it once its attempts are used up), or
        dead-lettered now when None. The error text carries the earlier
        attempts' errors, read from the task first unless the task's
        wrapper did."""
        failure = delivery.reported
        if failure is not None:
            self._record(token, delivery, name, failure, retry_in)
            return
        if delivery.attempt == 1 and retry_in is None:
            # No earlier attempt to keep, and nothing to ask: it ends here.
            self._record(token, delivery, name, Failure(exc, 1, None, False), None)
            return

        async def read_then_record() -> None:
            reported = await delivery.afailure(exc, retryable=retry_in is not None)
            self._record(token, delivery, name, reported, retry_in)

        report = asyncio.ensure_future(read_then_record())
        self._reports.add(report)
        report.add_done_callback(self._reports.discard)

    def _record(self, token: int, delivery: Delivery, name: str, failure: Failure, retry_in: float | None) -> None:
        native = self._native
        assert native is not None
        task, attempt = f"task {delivery.id} in {delivery.queue} ({name})", delivery.attempt
        if not failure.retryable or retry_in is None:
            logger.error("%s cannot succeed and is dead-lettered: %s", task, failure.exc)
        elif failure.will_retry:
            logger.warning("%s attempt %d failed, retried in %.1f s: %r", task, attempt, retry_in, failure.exc)
        else:
            logger.error("%s attempt %d failed, no attempts left: dead-lettered: %r", task, attempt, failure.exc)
        native.failed(delivery.queue, delivery.id, token, failure.text, retry_in if failure.retryable else None)

    def _arguments_mismatch(
        self, name: str, fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]
    ) -> TypeError | None:
        """Why ``fn(*args, **kwargs)`` cannot bind, or None if it can."""
        signature = self._signatures.get(fn)
        if signature is None:
            try:
                signature = self._signatures[fn] = inspect.signature(fn)
            except (TypeError, ValueError):  # no signature to check against
                return None
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            return TypeError(f"arguments do not fit task {name}: {exc}")
        return None

    def _finished(
        self,
        future: asyncio.Future[Any],
        token: int,
        delivery: Delivery,
        call: tuple[str, Callable[..., Any], list[Any], dict[str, Any]],
        backoff: float,
    ) -> None:
        self._running.discard(future)
        self._runs.pop(future, None)
        self._count(delivery.queue, -1)
        try:
            self._settle(future, token, delivery, call, backoff)
        finally:
            self._start_waiting()

    def _settle(
        self,
        future: asyncio.Future[Any],
        token: int,
        delivery: Delivery,
        call: tuple[str, Callable[..., Any], list[Any], dict[str, Any]],
        backoff: float,
    ) -> None:
        native = self._native
        name = call[0]
        assert native is not None
        if future.cancelled():
            # Abandoned at shutdown (logged): the lease decides.
            return
        exc = future.exception()
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise exc
        if exc is None:
            try:
                result = dumps(future.result())
            except (TypeError, ValueError) as err:
                # It ran: retrying would repeat its effects.
                self._refuse(token, delivery, name, result_not_stored(name, err), counted=False)
                return
            try:
                native.succeeded(delivery.queue, delivery.id, token, result)
            except PayloadError as err:
                # Over the size limit once compressed: it ran, and its
                # result cannot be kept.
                self._refuse(token, delivery, name, result_not_stored(name, err, too_large=True), counted=False)
                return
            self.succeeded += 1
            return
        if isinstance(exc, ResultNotStored):
            self._refuse(token, delivery, name, exc, counted=False)
            return
        if isinstance(exc, TypeError):
            # Arguments that do not fit the task fail the same way on every
            # attempt: dead-lettered at once, with the reason.
            mismatch = self._arguments_mismatch(*call)
            if mismatch is not None:
                self._refuse(token, delivery, name, mismatch, counted=False)
                return
        self.failed += 1
        delay = min(backoff * 2 ** (delivery.attempt - 1), self.max_backoff)
        delay *= random.uniform(0.5, 1.5)
        self._report(token, delivery, name, exc, delay)


def result_not_stored(name: str, err: BaseException, too_large: bool = False) -> ResultNotStored:
    """The error of a task that ran but returned what cannot be stored:
    what JSON cannot carry, or more than the size limit."""
    hint = (
        f"return at most {MAX_PAYLOAD} bytes once encoded (keep large data elsewhere and return its key)"
        if too_large
        else "return JSON types (str, int, float, bool, None, lists, dicts with string keys)"
    )
    return ResultNotStored(
        f"task {name} ran, but its return value cannot be stored: {err}. "
        f"It is not retried (its effects would repeat); {hint}"
    )
