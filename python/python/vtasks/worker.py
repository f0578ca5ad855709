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
import random
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from . import _native
from ._bridge import LoopBridge
from .client import Client
from .errors import ServerFull, TaskNotRegistered
from .limits import DEFAULT_LEASE, DEFAULT_MAX_BACKOFF, DEFAULT_RETRY_BACKOFF
from .payloads import decode_call_with_options, describe_exception, dumps
from .tasks import resolve

logger = logging.getLogger("vtasks.worker")

Resolver = Callable[[str], Callable[..., Any]]


class Delivery:
    """What a task wrapper learns about the run it belongs to (resolvers
    that mark their callable with ``wants_delivery = True`` get it as the
    first argument)."""

    __slots__ = ("queue", "id", "attempt", "consumer")

    def __init__(self, queue: str, id: str, attempt: int, consumer: str) -> None:
        self.queue, self.id, self.attempt, self.consumer = queue, id, attempt, consumer


class Worker:
    """Fetches tasks from ``queues`` (in order of preference) and runs them.

    At most ``concurrency`` tasks run at once; up to ``prefetch`` more
    (default: a quarter of ``concurrency``) wait leased in the worker, so a
    finished task's slot is refilled without waiting for a round trip.
    ``queue_concurrency`` caps how many tasks of one queue run at once; the
    worker stops fetching from a queue while it is at its cap.

    ``burst=True`` drains the queues and returns once they hold no ready
    and no leased task (a lease lost with a connection is waited for and
    run when it expires; paused queues and future delayed tasks are not
    waited for). ``handle_signals`` turns
    SIGTERM/SIGINT into a graceful shutdown: no new tasks, running ones get
    ``grace`` seconds, fetched-but-unstarted ones go back to the queue
    without counting an attempt. ``resolver`` maps a payload's task name to
    the callable to run; by default only tasks registered with
    ``@vtasks.task``. A payload naming anything else is dead-lettered.
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
        self._stopping = False
        self._native: _native.NativeWorker | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
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
        self._native = _native.NativeWorker(
            self.client.native, self.queues, self.consumer, self.concurrency + self.prefetch,
            self.lease, self.block, self.keep_results,
        )
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.concurrency, thread_name_prefix="vtasks-task"
        )
        if self.handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        self._native.start()
        logger.info("worker %s serving %s, concurrency %d", self.consumer, self.queues, self.concurrency)
        try:
            await self._loop(bridge)
        finally:
            await self._shutdown(bridge)
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
            if self.max_tasks is not None and self.succeeded + self.failed >= self.max_tasks:
                self.stop()

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
            while self._backlog and len(self._running) < self.concurrency and not self._stopping:
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
            _, pending = await asyncio.wait(self._running, timeout=self.grace)
            for future in pending:
                future.cancel()
        if native is not None:
            await bridge.wait(native.close(bridge.native))
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _start(self, queue: str, task_id: str, token: int, attempt: int, body: bytes) -> None:
        native = self._native
        assert native is not None
        try:
            name, args, kwargs, options = decode_call_with_options(body)
            fn = self.resolver(name)
        except (ValueError, TaskNotRegistered) as exc:
            self._refuse(queue, task_id, token, exc)
            return
        is_async = self._is_async.get(fn)
        if is_async is None:
            is_async = self._is_async[fn] = inspect.iscoroutinefunction(fn)
        backoff = float(options.get("backoff", self.retry_backoff))
        if getattr(fn, "wants_delivery", False):
            args = [Delivery(queue, task_id, attempt, self.consumer), *args]
        loop = asyncio.get_running_loop()
        if is_async:
            # Started eagerly: a task that finishes without awaiting anything
            # is settled at once, without a trip through the event loop.
            try:
                coro = fn(*args, **kwargs)
            except TypeError as exc:
                # Calling a coroutine function runs none of its body: a
                # TypeError here is arguments that do not fit.
                self._refuse(queue, task_id, token, self._arguments_mismatch(name, fn, args, kwargs) or exc)
                return
            timeout = options.get("timeout")
            if timeout is not None:
                coro = asyncio.wait_for(coro, float(timeout))
            future: asyncio.Future[Any] = asyncio.Task(coro, loop=loop, eager_start=True)
            if future.done():
                self._finished(future, queue, task_id, token, attempt, (name, fn, args, kwargs), backoff)
                return
        else:
            future = loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))
        self._running.add(future)
        call = (name, fn, args, kwargs)
        future.add_done_callback(lambda f: self._finished(f, queue, task_id, token, attempt, call, backoff))

    def _refuse(self, queue: str, task_id: str, token: int, exc: Exception, counted: bool = True) -> None:
        """Dead-letters a task that cannot run, at once and with the reason
        (``counted``: it still holds its place in the per-queue count)."""
        logger.error("task %s in %s cannot run and is dead-lettered: %s", task_id, queue, exc)
        self.dead_lettered += 1
        assert self._native is not None
        self._native.failed(queue, task_id, token, describe_exception(exc), None)
        if counted:
            self._count(queue, -1)

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
        queue: str,
        task_id: str,
        token: int,
        attempt: int,
        call: tuple[str, Callable[..., Any], list[Any], dict[str, Any]],
        backoff: float,
    ) -> None:
        self._running.discard(future)
        self._count(queue, -1)
        try:
            self._settle(future, queue, task_id, token, attempt, call, backoff)
        finally:
            self._start_waiting()

    def _settle(
        self,
        future: asyncio.Future[Any],
        queue: str,
        task_id: str,
        token: int,
        attempt: int,
        call: tuple[str, Callable[..., Any], list[Any], dict[str, Any]],
        backoff: float,
    ) -> None:
        native = self._native
        name = call[0]
        assert native is not None
        if future.cancelled():
            # Cut off by shutdown: the lease runs out and another worker
            # retries it.
            return
        exc = future.exception()
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise exc
        if exc is None:
            try:
                result = dumps(future.result())
            except TypeError as err:
                self.dead_lettered += 1
                error = TypeError(f"result of task {name} is not JSON-serializable: {err}")
                native.failed(queue, task_id, token, describe_exception(error), None)
                return
            self.succeeded += 1
            native.succeeded(queue, task_id, token, result)
            return
        if isinstance(exc, TypeError):
            # Arguments that do not fit the task fail the same way on every
            # attempt: dead-lettered at once, with the reason.
            mismatch = self._arguments_mismatch(*call)
            if mismatch is not None:
                self._refuse(queue, task_id, token, mismatch, counted=False)
                return
        self.failed += 1
        delay = min(backoff * 2 ** (attempt - 1), self.max_backoff)
        delay *= random.uniform(0.5, 1.5)
        logger.warning("task %s (%s) attempt %d failed: %r", task_id, name, attempt, exc)
        native.failed(queue, task_id, token, describe_exception(exc), delay)
