"""``vtasks.Worker``: runs registered tasks from Valkey queues.

Async tasks run on the event loop, sync tasks in long-lived threads, at
most ``concurrency`` at a time. Batches of tasks cross from Rust in one
call, and outcomes go back with the next fetch: one round trip per batch.

A stream of sync tasks does not touch the event loop: a task thread with
nothing to run takes the next batch from the native core itself
(``NativeWorker.take``), runs its tasks, records each outcome with the
core and takes the next waiting task. While sync tasks block (sleeps, I/O),
the event loop hands batches to the task threads instead: it never waits
behind a running task.
"""

from __future__ import annotations

import _thread
import asyncio
import collections
import functools
import inspect
import itertools
import logging
import math
import os
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

from . import _native
from ._bridge import LoopBridge
from .client import Client, TaskState
from .errors import PayloadError, ResultNotStored, TaskNotRegistered, VtasksError
from .limits import DEFAULT_LEASE, DEFAULT_MAX_BACKOFF, DEFAULT_RETRY_BACKOFF, MAX_PAYLOAD
from .payloads import decode_call_with_options, dumps, error_entries, error_entry, error_record
from .tasks import resolve
from .telemetry import WorkerTelemetry

logger = logging.getLogger("vtasks.worker")
# One DEBUG record per run that ended (id, name, queue, attempt, duration,
# outcome); whether it is enabled is checked once a second.
task_logger = logging.getLogger("vtasks.task")
# Seconds between a worker's chores: touching its health file, checking
# whether the per-task record is enabled, folding its telemetry.
CHORES_INTERVAL = 1.0
# Seconds a task thread waits at a time for a batch handed to it directly
# (it then looks again; a stop ends the wait at once).
HANDOFF_WAIT = 1.0
# Seconds a stopping worker waits for batches a task thread has taken to
# reach its backlog (a matter of microseconds unless the process is stuck).
HANDOFF_PATIENCE = 5.0

Resolver = Callable[[str], Callable[..., Any]]
# A task's call as the native layer reads it from the payload: name, args,
# kwargs, options (`decode_call_with_options`).
Call = tuple[str, list[Any], dict[str, Any], dict[str, Any]]
# A task the worker took: queue, id, lease token, attempt, and its call, or
# the payload itself when the native layer read no call in it.
Item = tuple[str, str, int, int, Call | bytes]


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


class _ThreadMeter:
    """For the thread that makes it, the seconds it has been ready to run
    and waited for a CPU, taken by other threads or processes (Linux:
    ``/proc/self/task/<tid>/schedstat``; 0 elsewhere), readable from any
    thread without letting go of the GIL (``_native.ThreadSchedstat``): the
    watcher that reads these among threads that keep the interpreter busy
    would otherwise wait for its next turn at the GIL after each read."""

    def __init__(self) -> None:
        self._native_id = threading.get_native_id()
        # Opened by the first reader: a thread's first turn at the GIL is
        # not spent opening a file, and most threads are never read (the
        # watcher reads a few).
        self._schedstat: _native.ThreadSchedstat | None = None
        self._opened = False

    def waited(self) -> float:
        if not self._opened:
            self._opened = True
            try:
                self._schedstat = _native.ThreadSchedstat(self._native_id)
            except OSError:
                self._schedstat = None
        if self._schedstat is None:
            return 0.0
        seconds = self._schedstat.waited_seconds()
        return 0.0 if seconds is None else seconds  # None: the thread has ended

    def close(self) -> None:
        self._opened = True  # never opened after this
        self._schedstat = None


class _TaskThreads:
    """Long-lived threads for sync tasks, as many as keep the tasks moving
    (never more than ``concurrency``: the worker runs at most that many
    tasks at once).

    Each thread runs one job after another while jobs wait; a job runs a
    task, records its outcome and goes on with the next waiting task itself.
    More threads help only while the running ones are blocked: on I/O, a
    sleep, a lock. While they keep the interpreter busy (short tasks), more
    threads only take turns with the GIL, and every turn is a context
    switch that costs more than a short task. So a job starts a thread only
    when none is running one; while jobs wait, a watcher thread looks every
    millisecond, and starts a thread for each waiting job when, HELD_UP
    looks in a row (HELD_UP_AT_KEEP while no more than KEEP run), the
    process wanted a CPU for less than half of that millisecond (its
    threads were blocked, not running or waiting for a CPU taken by other
    processes: ``_wanted_share``), or the running ones have all been in
    their current job for longer than LONG_JOB (a long CPU-bound task does
    not hold up short ones behind it). Once it has
    found them blocked, each new job gets a thread at once for WIDE_FOR
    (found again, that time starts over). Short tasks run on one or two
    threads; blocking tasks fill ``concurrency`` threads within a few
    milliseconds.

    A task the watcher has found blocking (by its ``kind``, the task's
    name) gets a thread at once the next times it comes, without waiting
    for the watcher's looks: a burst of sync tasks that each make a network
    call starts together, as async ones do. The watcher forgets those
    kinds when it retires threads.

    Threads started for blocking tasks step back when short tasks follow
    them. While more than KEEP run, the watcher also looks every
    NARROW_INTERVAL, and reckons the threads the tasks need: twice the
    number that were inside a task on average (the seconds tasks ran over
    the seconds since the last look; a task that blocks is inside longer),
    at least KEEP.
    When the running threads are more than that and the process wanted a
    CPU for NARROW_SHARE of the time or more, NARROW_AFTER looks in a row,
    the surplus goes idle as each thread ends its current
    job (never the last one running). Without it, a wave of short tasks
    after blocking ones keeps every thread the blocking ones started busy
    while the worker holds tasks, each taking its turn with the GIL: a
    third of the rate one thread reaches. The gap between BUSY_SHARE and
    NARROW_SHARE keeps the watcher from starting and retiring threads in
    turn.

    Among threads that keep the interpreter busy, the watcher waits long
    for its turn at the GIL after each wait for its next look; a task
    thread between jobs, which holds the GIL, looks instead when the
    watcher's look is LATE_LOOK overdue (``_look_if_late``).

    When no job waits, one thread waits for work with ``fetch()``: the
    worker's next batch, handed to it by the native core without going
    through the event loop; it runs the first of the jobs that batch makes
    and queues the rest as any submitted job.

    Daemon threads: a task still running when the worker stops without it
    (grace period over, second signal) does not keep the process alive, as
    a ThreadPoolExecutor's threads would (the interpreter joins them at
    exit)."""

    # How often the watcher looks while jobs wait, in seconds.
    WATCH_INTERVAL = 0.001
    # The share of the time the process must want a CPU to count as busy
    # (below it, more threads would help).
    BUSY_SHARE = 0.5
    # Running threads whose meters the watcher reads at each look.
    SAMPLED = 8
    # A job running this long (seconds) no longer holds back the others.
    LONG_JOB = 0.02
    # After the watcher has found the running threads blocked, for this
    # long (seconds) each new job gets a thread of its own at once, without
    # waiting for the watcher's next looks.
    WIDE_FOR = 0.1
    # The share of the time the process must want a CPU for the watcher to
    # retire threads the tasks do not need.
    NARROW_SHARE = 0.9
    # Looks in a row that must find more threads than the tasks need
    # keeping the CPU that busy.
    NARROW_AFTER = 4
    # How often the watcher looks while more than KEEP threads run and no
    # job waits, in seconds.
    NARROW_INTERVAL = 0.005
    # Threads it never retires below: short tasks run on one thread while
    # the next waits for the worker's next batch (``fetch``), so it
    # always has a thread to go on with.
    KEEP = 2
    # Looks in a row that must find the running threads held up to widen:
    # one slow look is often a pause (a garbage collection, the loop
    # handing out a batch).
    HELD_UP = 2
    # The same while no more than KEEP run: when a thread whose wait is not
    # read (one just woken) holds the GIL and the machine's other work has
    # put it aside, they want no CPU for a scheduler's time slice.
    HELD_UP_AT_KEEP = 4
    # How overdue (seconds) the watcher's look must be for a task thread
    # between jobs to look instead (``_look_if_late``).
    LATE_LOOK = 0.01
    # The most kinds of tasks remembered as blocking (then they start over).
    BLOCKING_KINDS = 1000

    def __init__(
        self, prefix: str, runner: Callable[[Any], None], fetch: Callable[[], list[Any]] | None = None,
        on_blocking: Callable[[], None] | None = None, limit: int | None = None, *,
        kind: Callable[[Any], Hashable],
    ) -> None:
        """Called on the thread of the event loop that hands out jobs;
        ``runner(job)`` runs one; ``fetch()`` waits a while for new jobs
        (see the class docstring); ``on_blocking()`` is called when the
        watcher finds the running jobs blocked; ``limit``: the most threads
        it starts; ``kind(job)``: what a job runs, for remembering which
        jobs block."""
        self._prefix = prefix
        self._limit = limit
        self._runner = runner
        self._fetch = fetch
        self._on_blocking = on_blocking
        self._kind = kind
        # Kinds of jobs the watcher found blocking: each gets a thread at once.
        self._blocking_kinds: set[Hashable] = set()
        self._fetching = False  # a thread is in fetch()
        # Threads other than the running ones whose waits for a CPU the
        # watcher reads at every look (the GIL held by one put aside by the
        # scheduler leaves the running ones blocked, not on I/O): the event
        # loop's, and the watcher's own (set when it starts: it holds the
        # GIL while it looks).
        self._loop_meter = (threading.get_ident(), _ThreadMeter())
        self._watcher_meter: tuple[int, _ThreadMeter] | None = None
        # The process's CPU time when the meters were last read.
        self._cpu_seen: float | None = None
        self._lock = threading.Lock()
        self._jobs: collections.deque[Any] = collections.deque()
        self._watcher_wakeup = threading.Condition(self._lock)
        self._threads = 0
        # Threads waiting for a job, each on a lock of its own (held while it
        # waits; released to wake it), the one that went idle last on top:
        # the thread woken is the one that ran last. A condition wakes the
        # one that has waited longest, so short tasks after blocking ones
        # went round every idle thread in turn, each one a cold start.
        self._idle_bells: list[threading.Lock] = []
        self._notified = 0  # threads woken but not yet running
        self._starting = 0  # new threads not yet running
        # Of those, the ones not started yet, and whether a thread is
        # starting them (``_start_threads``).
        self._unstarted = 0
        self._starter_running = False
        self._names = itertools.count(1)  # the numbers in the threads' names
        self._watcher: threading.Thread | None = None
        self._watcher_timed = False
        # Threads running a job: thread id -> (its meter, the job's start, the job).
        self._running: dict[int, tuple[_ThreadMeter, float, Any]] = {}
        # When the meters were last read (a look reads them unless no job
        # waits and no thread is surplus), and how long each thread read
        # had waited for a CPU by then.
        self._seen_at = 0.0
        self._seen_waited: dict[int, float] = {}
        # The thread waiting in fetch(), not running a job: (id, meter).
        self._fetcher: tuple[int, _ThreadMeter] | None = None
        self._wide_until = 0.0
        # When the last look was (the watcher's or a task thread's), and
        # looks in a row that found the running threads held up, and more
        # of them running than the tasks need.
        self._looked_at = 0.0
        self._held_up = 0
        self._crowded = 0
        # Running threads to go idle at the end of their current job.
        self._retiring = 0
        # Tasks run while more than KEEP threads ran (``ran``), and their
        # seconds, since the last look (the watcher's or a task thread's).
        self._runs = 0
        self._run_seconds = 0.0
        self._runs_since = 0.0
        self._closed = False

    def submit(self, job: Any) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the task threads are shut down")
            self._queue(job)

    def _queue(self, job: Any) -> None:
        """Queues a job and sees that a thread will run it (under the lock)."""
        self._jobs.append(job)
        if not self._running and not (self._notified or self._starting):
            self._start_threads(1)
        elif len(self._jobs) > self._notified + self._starting and (
            time.monotonic() < self._wide_until
            or (self._blocking_kinds and self._kind(job) in self._blocking_kinds)
        ):
            # Tasks have been blocking, or this one's kind did when the
            # watcher last looked: it gets a thread now.
            self._start_threads(1)
        elif not self._watcher_timed:
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._watch, name=f"{self._prefix}-watcher", daemon=True)
                self._watcher.start()
            else:
                self._watcher_wakeup.notify()

    def _start_threads(self, count: int) -> None:
        """Wakes idle threads, then has new ones started, ``count`` in all
        (under the lock).

        The first new thread starts the others, outside the lock, with
        ``_thread.start_new_thread``, which does not wait for a thread to
        run. ``threading.Thread.start()`` waits, and that wait (a turn at
        the GIL for the new thread, then one for the thread starting it)
        took a millisecond or more while a hundred threads woke from
        sleeps: started under the lock, two hundred held every thread that
        finished a task, and the event loop handing out the next batch,
        for a tenth of a second; started one by one outside it, they took
        most of a second to reach two hundred."""
        wake = max(min(count, len(self._idle_bells)), 0)
        self._notified += wake
        for _ in range(wake):
            self._idle_bells.pop().release()
        start = count - wake
        if self._limit is not None:
            start = min(start, self._limit - self._threads)
        if start <= 0:
            return
        self._threads += start
        self._starting += start
        self._unstarted += start
        if not self._starter_running:
            self._starter_running = True
            self._unstarted -= 1
            if not self._start_one(starter=True):
                self._give_up_starting()

    def _start_one(self, starter: bool) -> bool:
        """Starts a thread, the ``starter`` of those asked for after it;
        whether it started (one that cannot start is logged)."""
        try:
            _thread.start_new_thread(self._serve, (starter,))
            return True
        except Exception:
            logger.exception("vtasks: cannot start a task thread")
            return False

    def _give_up_starting(self) -> None:
        """After a thread could not start, it and the threads still to
        start are no longer counted (under the lock): while jobs wait and
        none runs, the watcher asks for one again."""
        left = self._unstarted + 1
        self._threads -= left
        self._starting -= left
        self._unstarted = 0
        self._starter_running = False

    def _start_the_rest(self) -> None:
        """The starter starts the threads asked for until none is left
        (outside the lock)."""
        while True:
            with self._lock:
                if self._closed or not self._unstarted:
                    self._starter_running = False
                    return
                self._unstarted -= 1
            if not self._start_one(starter=False):
                with self._lock:
                    self._give_up_starting()
                return

    def _serve(self, starter: bool) -> None:
        # What threading.Thread does for the threads it starts: a name, and
        # the hooks of threading.settrace() and setprofile() (coverage, profilers).
        threading.current_thread().name = f"{self._prefix}-{next(self._names)}"
        if (trace := threading.gettrace()) is not None:
            sys.settrace(trace)
        if (profile := threading.getprofile()) is not None:
            sys.setprofile(profile)
        if starter:
            self._start_the_rest()
        me = threading.get_ident()
        meter = _ThreadMeter()
        bell = threading.Lock()
        bell.acquire()
        with self._lock:
            self._starting -= 1
            job = self._take(me, meter, bell)
        while job is not None:
            try:
                self._runner(job)
            except BaseException:  # a job records its own outcome; this is a bug
                logger.exception("vtasks task thread: unexpected error")
            with self._lock:
                job = self._take(me, meter, bell)
        meter.close()

    def _take(self, me: int, meter: _ThreadMeter, bell: threading.Lock) -> Any:
        """The next job for this thread, waiting idle until it is woken for
        one; None once shut down (under the lock)."""
        while not self._closed:
            if self._jobs and not self._retires(me):
                job = self._jobs.popleft()
                now = time.monotonic()
                self._running[me] = (meter, now, job)
                above_keep = len(self._running) > self.KEEP
                if (self._jobs or above_keep) and not self._watcher_timed and self._watcher is not None:
                    # Jobs wait for a running thread, or more than KEEP
                    # run: the watcher looks.
                    self._watcher_wakeup.notify()
                self._look_if_late(now)
                return job
            self._running.pop(me, None)
            self._seen_waited.pop(me, None)
            if self._jobs:
                pass  # retired: idle while others run the waiting jobs
            elif self._fetch is not None and not self._fetching and time.monotonic() >= self._wide_until:
                self._fetcher = (me, meter)
                try:
                    jobs = self._fetch_jobs()
                finally:
                    self._fetcher = None
                if jobs:
                    self._running[me] = (meter, time.monotonic(), jobs[0])
                    for job in jobs[1:]:
                        self._queue(job)
                    return jobs[0]
                continue
            self._idle_bells.append(bell)
            self._lock.release()
            try:
                bell.acquire()  # until `_start_threads` or `shutdown` releases it
            finally:
                self._lock.acquire()
            self._notified = max(self._notified - 1, 0)
        self._running.pop(me, None)
        return None

    def _may_retire(self, me: int) -> bool:
        """Whether threads are to retire and this one may (under the
        lock): never the last one running."""
        return self._retiring > 0 and len(self._running) - (me in self._running) >= 1

    def _retires(self, me: int) -> bool:
        """Whether this thread, between jobs while jobs wait, goes idle
        to narrow the threads (under the lock)."""
        if self._may_retire(me):
            self._retiring -= 1
            return True
        return False

    def ran(self, seconds: float) -> None:
        """A task thread ran a task for ``seconds`` while more than KEEP
        threads ran; without a lock (under the GIL a lost update only shifts
        a look by a run)."""
        self._runs += 1
        self._run_seconds += seconds

    def _watch(self) -> None:
        """The watcher: while jobs wait for running threads, or more than
        KEEP run, looks every WATCH_INTERVAL or NARROW_INTERVAL (``_look``)."""
        with self._lock:
            self._watcher_meter = (threading.get_ident(), _ThreadMeter())
            while not self._closed:
                waiting = bool(self._jobs and self._running)
                if not waiting and len(self._running) <= self.KEEP:
                    self._watcher_timed = False
                    self._held_up = self._crowded = 0
                    self._watcher_wakeup.wait()
                    self._threads_needed()  # the tasks of the next look only
                    continue
                self._watcher_timed = True
                self._watcher_wakeup.wait(self.WATCH_INTERVAL if waiting else self.NARROW_INTERVAL)
                self._look()

    def _look_if_late(self, now: float) -> None:
        """A look by a task thread between jobs, when the watcher's is
        LATE_LOOK overdue (under the lock). The watcher must take the GIL
        back after each wait, and among forty threads that keep the
        interpreter busy (a GIL handed to whichever of them wakes first)
        that took it a fifth to half a second each time: that long, the
        threads those tasks did not need all took turns with the GIL. The
        threads that hold it look instead."""
        if self._watcher_timed and now - self._looked_at >= self.LATE_LOOK:
            self._look()

    def _look(self) -> None:
        """One look (under the lock): starts more threads when the running
        ones are held up while jobs wait; retires the ones the tasks do not
        need while more than KEEP run."""
        self._looked_at = time.monotonic()
        needed = self._threads_needed()
        surplus = len(self._running) - needed if needed is not None else 0
        if not self._jobs:
            self._held_up = 0
            if surplus <= 0:
                self._crowded = 0
                return
        elif not self._running:
            # A thread is on its way (submit starts one), or none is and
            # one must.
            self._held_up = self._crowded = 0
            if not (self._notified or self._starting):
                self._start_threads(1)
            return
        share = self._wanted_share()
        if self._jobs and self._running_are_held_up(share):
            self._held_up += 1
            self._crowded = 0
            if self._held_up >= (self.HELD_UP if len(self._running) > self.KEEP else self.HELD_UP_AT_KEEP):
                self._held_up = 0
                if share is not None and share < self.BUSY_SHARE:
                    self._remember_blocking()
                self._retiring = 0
                self._wide_until = time.monotonic() + self.WIDE_FOR
                if self._on_blocking is not None:
                    self._on_blocking()
                self._start_threads(len(self._jobs) - self._notified - self._starting)
            return
        self._held_up = 0
        if share is None:
            return  # a thread just started: judged at the next look
        if surplus > 0 and share >= self.NARROW_SHARE:
            self._crowded += 1
            if self._crowded >= self.NARROW_AFTER:
                self._crowded = 0
                self._wide_until = 0.0
                self._retiring = surplus
                self._blocking_kinds.clear()
        else:
            self._crowded = 0

    def _remember_blocking(self) -> None:
        """The kinds of the running jobs, found blocked, get a thread at once
        from now on (under the lock)."""
        if len(self._blocking_kinds) >= self.BLOCKING_KINDS:
            self._blocking_kinds.clear()
        self._blocking_kinds.update(self._kind(job) for _, _, job in self._running.values())

    def _threads_needed(self) -> int | None:
        """The threads the tasks that ended since the last look needed:
        twice as many as were inside one on average, at least KEEP (under
        the lock); None with fewer than two such tasks."""
        now = time.monotonic()
        runs, seconds, since = self._runs, self._run_seconds, self._runs_since
        self._runs, self._run_seconds, self._runs_since = 0, 0.0, now
        if runs < 2 or now <= since:
            return None
        return max(self.KEEP, math.ceil(2 * seconds / (now - since)))

    def _wanted_share(self) -> float | None:
        """The share of the time since the meters were last read that this
        process wanted a CPU (under the lock): the CPU time all its threads took,
        and the time the threads running jobs, the event loop's thread, the
        watcher and the thread in ``fetch()`` waited for a CPU. None when a
        thread started running since then (it is given until the next
        look).

        The CPU time is the process's, not the running threads': while they
        take turns with the GIL, one of them runs and the rest wait for it,
        blocked, and a sample of them that missed the one running read as
        all blocked (a false "held up" that started forty threads for short
        tasks again), or as five times busier than the machine can be. The
        waits are sampled: on a machine busy with other work, the one that
        holds the GIL can be put aside, and the threads waiting for it then
        take no CPU but are not blocked on I/O."""
        # The first SAMPLED, not a copy of them all: with hundreds of
        # threads running, this look comes every millisecond.
        sampled = list(itertools.islice(self._running.items(), self.SAMPLED))
        running = len(self._running)
        waited = 0.0
        counted = 0
        fresh = False
        for ident, (meter, _, _) in sampled:
            wait = self._waited_since_last_look(ident, meter)
            if wait is None:
                fresh = True
            else:
                waited += wait
                counted += 1
        if counted:
            waited *= running / counted
        # The thread that took the worker's next batch runs outside the
        # jobs, turning it into tasks with the GIL held.
        for other in (self._loop_meter, self._watcher_meter, self._fetcher):
            if other is not None:
                waited += self._waited_since_last_look(*other) or 0.0
        cpu_now = time.process_time()
        now = time.monotonic()
        elapsed = now - self._seen_at
        self._seen_at = now
        cpu_before, self._cpu_seen = self._cpu_seen, cpu_now
        if fresh or not counted or cpu_before is None or elapsed <= 0:
            return None
        return (cpu_now - cpu_before + waited) / elapsed

    def _waited_since_last_look(self, ident: int, meter: _ThreadMeter) -> float | None:
        """The seconds a thread waited for a CPU since its meter was last
        read; None the first time (under the lock)."""
        now = meter.waited()
        before = self._seen_waited.get(ident)
        self._seen_waited[ident] = now
        return None if before is None else now - before

    def _running_are_held_up(self, share: float | None) -> bool:
        """Whether the process wanted a CPU for less than BUSY_SHARE of the
        time since the meters were last read (``share``), or the running
        ones have all run their current job for LONG_JOB or longer (under
        the lock)."""
        now = time.monotonic()
        if all(now - started >= self.LONG_JOB for _, started, _ in self._running.values()):
            return True
        return share is not None and share < self.BUSY_SHARE

    def _fetch_jobs(self) -> list[Any]:
        """This thread waits for new jobs with ``fetch()``, outside the
        lock (under it before and after)."""
        fetch = self._fetch
        assert fetch is not None
        self._fetching = True
        self._lock.release()
        try:
            return fetch()
        except BaseException:  # fetch() hands out what it took; this is a bug
            logger.exception("vtasks task thread: unexpected error waiting for tasks")
            self._fetch = None  # the event loop hands out every batch
            return []
        finally:
            self._lock.acquire()
            self._fetching = False

    def continue_with(self, jobs: list[Any]) -> Any:
        """The next job for the calling thread, which has just finished one
        it was running and took ``jobs`` itself: the oldest waiting job if
        jobs wait (``jobs`` then wait after them), else the first of
        ``jobs`` (the rest wait). None when there is none: the thread then
        goes back to waiting for jobs. The job it returns starts now: a
        thread that runs short jobs one after the other is not one running
        a long job (LONG_JOB)."""
        me = threading.get_ident()
        with self._lock:
            if (self._jobs or jobs) and self._may_retire(me):
                # Narrowing: this thread's jobs wait for the others, and
                # it goes idle (``_take``).
                for job in jobs:
                    self._queue(job)
                return None
            if self._jobs:
                next_job = self._jobs.popleft()
                for job in jobs:
                    self._queue(job)
            elif jobs:
                next_job = jobs[0]
                for job in jobs[1:]:
                    self._queue(job)
            else:
                return None
            now = time.monotonic()
            entry = self._running.get(me)
            if entry is not None:
                self._running[me] = (entry[0], now, next_job)
            self._look_if_late(now)
            return next_job

    @property
    def running(self) -> int:
        """Threads running a job now (read without the lock: a glance)."""
        return len(self._running)

    def takes_parked_batches(self) -> bool:
        """Whether a thread between jobs should take a batch parked for the
        task threads: they take batches (not while tasks have been
        blocking, nor once stopping). Also while jobs wait here: the batch
        would otherwise go through the event loop a millisecond later and
        join them there, and that loop, one more thread wanting the GIL
        among busy ones, got it late enough that a worker running short
        tasks ran dry between batches."""
        return self._fetch is not None and time.monotonic() >= self._wide_until

    def stop_fetching(self) -> None:
        """No thread waits for jobs with ``fetch()`` from now on (one that is
        waiting returns once fetch() does)."""
        with self._lock:
            self._fetch = None

    def take_waiting(self) -> list[Any]:
        """Takes the jobs no thread has started yet."""
        with self._lock:
            jobs = list(self._jobs)
            self._jobs.clear()
        return jobs

    def shutdown(self) -> None:
        """Ends idle threads and the watcher; jobs not started are dropped
        (their tasks were released or are abandoned)."""
        with self._lock:
            self._closed = True
            self._fetch = None
            self._jobs.clear()
            bells, self._idle_bells = self._idle_bells, []
            for bell in bells:
                bell.release()
            self._watcher_wakeup.notify_all()
            self._loop_meter[1].close()
            if self._watcher_meter is not None:
                self._watcher_meter[1].close()


class _SyncPace:
    """Whether a worker's sync tasks are short, judged every WINDOW runs:
    a worker with the default prefetch keeps a backlog as deep as its
    concurrency while they are short and run side by side (they block),
    a quarter of it otherwise.

    Sync tasks that block (I/O, a sleep) run in up to ``concurrency``
    threads, and the tasks of one batch start together, so they end
    together. A wave of them empties a backlog of a quarter of the
    concurrency, and the rest of the wave's threads go idle until the
    next batch comes and the event loop wakes them one by one: some eight
    context switches per task, more than such a task costs otherwise. A
    deeper backlog keeps each thread going from one task to the next. A
    task waits in it about one task's duration at most, so while tasks
    are short the worker keeps little from other workers; long tasks get
    the quarter (DECISIONS: "A deeper backlog while sync tasks are short").

    Task threads call ``add`` without a lock: under the GIL a lost update
    only shifts a judgement by a run."""

    WINDOW = 64
    # Seconds: a window of runs this long on average or shorter is short.
    SHORT = 0.05

    def __init__(self) -> None:
        self._seconds = 0.0
        self._runs = 0

    def add(self, seconds: float) -> bool | None:
        """Records a run's duration; every WINDOW runs, whether they were
        short (None in between)."""
        self._seconds += seconds
        self._runs += 1
        if self._runs < self.WINDOW:
            return None
        short = self._seconds <= self.SHORT * self._runs
        self._seconds, self._runs = 0.0, 0
        return short


class _Run:
    """One task the worker took, from its start to its recorded outcome."""

    __slots__ = ("token", "delivery", "name", "fn", "args", "kwargs", "backoff", "is_async", "future", "started")

    def __init__(
        self, token: int, delivery: Delivery, name: str, fn: Callable[..., Any],
        args: list[Any], kwargs: dict[str, Any], backoff: float, is_async: bool,
    ) -> None:
        self.token, self.delivery, self.name = token, delivery, name
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.backoff, self.is_async = backoff, is_async
        # The asyncio task of an async run that is still running.
        self.future: asyncio.Future[Any] | None = None
        # perf_counter() at its start, when the worker observes its runs.
        self.started = 0.0


def _run_name(run: _Run) -> str:
    """A run's kind, for the task threads: its task's name."""
    return run.name


# Tasks a worker runs at once unless told otherwise (runworker's too).
DEFAULT_CONCURRENCY = 20


class Worker:
    """Fetches tasks from ``queues`` (in order of preference) and runs them.

    At most ``concurrency`` tasks run at once (20 by default, as in
    django-vtasks; a sync task that queries holds a database connection
    while it runs, as a request does); up to ``prefetch`` more
    wait leased in the worker, so a finished task's slot is refilled
    without waiting for a round trip. By default a quarter of
    ``concurrency``, and as many as ``concurrency`` while the sync tasks it
    runs block side by side and take 50 ms or less on average (the tasks a
    batch started end together, and a shallow backlog leaves threads idle
    until the next fetch); never more than ``max_tasks`` allows.
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

    ``health_file``: a path the worker touches every second while its
    event loop runs and it reaches Valkey (for a liveness probe that
    checks the file's age); deleted when the worker stops. The
    ``vtasks.task`` logger gets one DEBUG record per run that ended (id,
    name, queue, attempt, duration, outcome; whether DEBUG is enabled is
    checked once a second); ``telemetry`` (a
    `vtasks.telemetry.WorkerTelemetry`) gathers task durations and batch
    sizes for metrics.
    """

    def __init__(
        self,
        client: Client | str,
        *,
        queues: list[str] | tuple[str, ...] = ("default",),
        concurrency: int = DEFAULT_CONCURRENCY,
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
        health_file: str | None = None,
        telemetry: WorkerTelemetry | None = None,
    ) -> None:
        if not queues:
            raise ValueError("a worker needs at least one queue")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.client = Client(client) if isinstance(client, str) else client
        # A worker holds two connections: the client's and its fetch's. Its
        # client's async enqueues (from tasks, or an app it runs inside)
        # share them rather than open one per event loop (`vtasks._wire`).
        self.client.own_connection = False
        self.queues = list(queues)
        self.concurrency = concurrency
        self.prefetch = max(0, concurrency // 4 if prefetch is None else prefetch)
        # The default prefetch deepens while sync tasks are short (_SyncPace).
        self._pace = _SyncPace() if prefetch is None and max_tasks is None else None
        self._deeper_backlog = False
        # Sync tasks running at once that show they block (a quarter of
        # the slots, at least 4): tasks that keep the interpreter busy run
        # on one or two threads, and a deeper backlog does not help them.
        self._side_by_side = max(4, concurrency // 4)
        self.queue_concurrency = dict(queue_concurrency or {})
        unknown = set(self.queue_concurrency) - set(self.queues)
        if unknown:
            raise ValueError(f"queue_concurrency names queues the worker does not serve: {sorted(unknown)}")
        if any(limit < 1 for limit in self.queue_concurrency.values()):
            raise ValueError("each queue_concurrency limit must be at least 1")
        # Per queue: tasks leased to this worker and not finished.
        self._held: collections.Counter[str] = collections.Counter()
        # A partition's queue, by the partition's name (`_capped`).
        self._queue_of: dict[str, str] = {}
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
        self.health_file = health_file
        self.telemetry = telemetry
        # Whether runs are timed (telemetry, or the per-task DEBUG record),
        # and whether that record is written: set once a second.
        self._observing = False
        self._log_tasks = False
        # The connection as the native core last reported it: "up", "lost"
        # (Valkey unreachable) or "full" (reachable, refusing for memory).
        self.connection = "up"
        # Everything below that task threads touch too is guarded by _lock.
        self._lock = threading.Lock()
        # Runs started and not yet recorded; tasks taken from the backlog
        # and not yet started or refused.
        self._running: set[_Run] = set()
        self._preparing = 0
        # Failures being recorded on the event loop (each reads the task first).
        self._reports: set[asyncio.Task[None]] = set()
        # Tasks taken (started or refused), against max_tasks.
        self._taken = 0
        self._stopping = False
        self._aborting = False
        self._aborted = asyncio.Event()
        # Set (on the loop) when the last run finishes while a stop waits
        # for the running tasks (`_idle_wanted`): only then, since waking
        # the loop from a task thread costs both threads a turn with the GIL.
        self._idle = asyncio.Event()
        self._idle_wanted = False
        self._native: _native.NativeWorker | None = None
        self._pool: _TaskThreads | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Per task callable: whether it is a coroutine function, and whether
        # it wants the Delivery as its first argument.
        self._kinds: dict[Callable[..., Any], tuple[bool, bool]] = {}
        self._signatures: dict[Callable[..., Any], inspect.Signature] = {}
        # Leased, not started yet (`Item`s).
        self._backlog: collections.deque[Item] = collections.deque()
        # `_start_waiting` is running on the loop; asked to run again.
        self._starting = False
        self._start_again = False

    def __repr__(self) -> str:
        return (
            f"<vtasks.Worker {self.consumer} queues={self.queues} running={len(self._running)} "
            f"succeeded={self.succeeded} failed={self.failed} dead={self.dead_lettered}>"
        )

    @property
    def held(self) -> int:
        """Tasks leased to this worker and not yet settled: running, or
        waiting to start (at most ``concurrency`` plus the prefetch)."""
        native = self._native
        return native.running() if native is not None else 0

    @property
    def stats(self) -> dict[str, int]:
        """Counters of the native core (fetched, round_trips, stale, ...)."""
        return self._native.stats() if self._native is not None else {}

    async def run(self) -> None:
        """Runs until stopped (or, in burst mode, until the queues are empty)."""
        loop = self._loop = asyncio.get_running_loop()
        bridge = LoopBridge.current()
        holds = self.concurrency + self.prefetch
        if self.max_tasks is not None:
            holds = max(1, min(holds, self.max_tasks))  # never fetch more than it may run
        self._native = _native.NativeWorker(
            self.client.native, self.queues, self.consumer, holds, self.lease, self.block, self.keep_results,
            self.burst,
        )
        self._pool = _TaskThreads(
            "vtasks-task", self._run_in_thread, self._take_directly, functools.partial(self._native.set_parking, False),
            limit=self.concurrency, kind=_run_name,
        )
        if self.handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal)
        self._native.start()
        logger.info("worker %s serving %s, concurrency %d", self.consumer, self.queues, self.concurrency)
        watcher = asyncio.create_task(self._log_connection(bridge))
        self._check_observing()
        chores = asyncio.create_task(self._chores())
        try:
            await self._loop_batches(bridge)
        finally:
            chores.cancel()
            await self._shutdown(bridge)
            watcher.cancel()
            if self.health_file:
                self._remove_health_file()
            if self.handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            logger.info("worker %s stopped: %r", self.consumer, self)

    async def _loop_batches(self, bridge: LoopBridge) -> None:
        """Runs the native core's worker loop (the one loop every vtasks
        worker runs: fetching, giving back what arrives while stopping,
        ending a burst, waiting out a full server) until it returns; its
        batches arrive on the event loop, those that arrive together as
        one."""
        native = self._native
        assert native is not None
        await bridge.stream(native.run(bridge.native), self._on_batch)

    def _on_batch(self, batch: list[Item]) -> None:
        self._accept(batch)
        self._start_waiting()

    def _accept(self, batch: list[Item], then: Callable[[], None] | None = None) -> None:
        """Adds a batch to the tasks waiting to start, then calls ``then``
        (still under the lock); any thread."""
        telemetry = self.telemetry
        if telemetry is not None:
            telemetry.batches.append(len(batch))
        # A batch that arrives while stopping waits with the others that
        # never started, and goes back with them.
        with self._lock:
            try:
                self._backlog.extend(batch)
                if self.queue_concurrency:
                    for queue, *_ in batch:
                        self._count(queue, +1)
            finally:
                if then is not None:
                    then()

    def _take_directly(self, wait: float = HANDOFF_WAIT) -> list[_Run]:
        """A task thread's wait for work while none waits: the next batch
        of the worker loop, handed to this thread by the native core rather
        than through the event loop (one wake-up instead of two per batch).
        Returns the sync runs it starts; async ones go to the loop. With
        ``wait`` 0, only a batch already parked for the task threads."""
        native = self._native
        assert native is not None
        # Batches that come while this thread runs tasks wait for it: its
        # tasks are short (the task threads stop taking batches themselves
        # while tasks block: the event loop hands them out then, and it
        # never waits behind a task).
        batch = native.take(wait, True)
        if batch is None:
            return []
        # Recorded before the native core hears so: a stop waits for it
        # (`_shutdown`), then gives back what never started.
        self._accept(batch, then=native.accepted)
        runs = []
        for run in self._take_startable():
            if run.is_async:
                self._call_on_loop(functools.partial(self._launch_async, run))
            else:
                runs.append(run)
        return runs

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
        """Logs once when the server becomes unreachable (or refuses the
        worker's fetches for lack of memory) and once when it serves again;
        the native core retries by itself meanwhile."""
        native = self._native
        assert native is not None
        kind, since = "up", time.monotonic()
        while True:
            new, detail = await bridge.wait(native.connection_changed(bridge.native, kind))
            if new == kind:
                return  # closed
            self.connection = new
            if new == "lost":
                logger.warning("worker %s: Valkey is unreachable, retrying: %s", self.consumer, detail)
            elif new == "full":
                logger.warning("worker %s: %s; retrying until it has room", self.consumer, detail)
            elif kind == "full":
                logger.warning(
                    "worker %s: Valkey has room again after %.1f s", self.consumer, time.monotonic() - since
                )
            else:
                logger.warning("worker %s: the connection to Valkey is back", self.consumer)
            kind, since = new, time.monotonic()

    def _check_observing(self) -> None:
        """Whether runs are timed from now on (telemetry, or the per-task
        DEBUG record), and whether that record is written."""
        self._log_tasks = task_logger.isEnabledFor(logging.DEBUG)
        self._observing = self._log_tasks or self.telemetry is not None

    async def _chores(self) -> None:
        """Once a second, not per task: the per-task record checked, the
        telemetry folded (its deques stay small), the health file touched
        while Valkey is reachable (a full server is reachable: it drains)."""
        path = self.health_file
        while True:
            self._check_observing()
            if self.telemetry is not None:
                self.telemetry.fold()
            if path is not None and self.connection != "lost":
                try:
                    with open(path, "a"):
                        pass
                    os.utime(path)
                except OSError as exc:
                    logger.warning("worker %s cannot touch its health file %s: %s", self.consumer, path, exc)
            await asyncio.sleep(CHORES_INTERVAL)

    def _remove_health_file(self) -> None:
        assert self.health_file is not None
        try:
            os.unlink(self.health_file)
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("worker %s cannot remove its health file %s: %s", self.consumer, self.health_file, exc)

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

    # --- starting tasks -----------------------------------------------------------------------

    def _start_waiting(self) -> None:
        """Starts waiting tasks while slots are free (on the event loop).
        Not re-entered: an async task that finishes while being started
        (eagerly) asks for another pass of the loop already running here."""
        if self._starting:
            self._start_again = True
            return
        self._starting = True
        try:
            while True:
                self._start_again = False
                for run in self._take_startable():
                    if run.is_async:
                        self._launch_async(run)
                    else:
                        self._launch_sync(run)
                if not self._start_again:
                    return
        finally:
            self._starting = False

    def _take_startable(self, finished: _Run | None = None, succeeded: bool = False) -> list[_Run]:
        """Takes the waiting tasks that may start now (free slots, queues
        under their caps), each counted as running; any thread. Tasks that
        cannot run are dead-lettered on the way. ``finished``: a run that
        is over (as ``_finish``, with ``succeeded`` counted), its slot freed
        in the same hold of the lock.

        Two holds of the lock in all, however many tasks start: a task
        thread takes it between any two tasks, and with a hundred threads
        waking from sleeps, one that must give up the GIL while holding it
        keeps the others waiting until it gets the GIL back."""
        items: list[Item] = []
        backlog, running, max_tasks = self._backlog, self._running, self.max_tasks
        with self._lock:
            if finished is not None:
                self._end(finished, succeeded)
            quota = False
            if not self._stopping and (max_tasks is None or self._taken < max_tasks):
                free = self.concurrency - len(running) - self._preparing
                if max_tasks is not None:
                    free = min(free, max_tasks - self._taken)
                while backlog and len(items) < free:
                    item = backlog.popleft() if not self.queue_concurrency else self._next_startable()
                    if item is None:
                        break
                    items.append(item)
                # Counted until they run or are refused, so a shutdown
                # waiting for running tasks waits for them too.
                self._taken += len(items)
                self._preparing += len(items)
                quota = bool(items) and self._quota_reached()
            idle = not items and self._all_ended()
        if idle:
            self._call_on_loop(self._idle.set)
        if quota:
            self._call_on_loop(self.stop)
        if not items:
            return []
        runs: list[_Run] = []
        try:
            for item in items:
                run = self._make_run(*item)
                if run is not None:
                    runs.append(run)
        finally:
            with self._lock:
                self._preparing -= len(items)
                self._running.update(runs)
                idle = self._all_ended()
            if idle:
                self._call_on_loop(self._idle.set)
        return runs

    def _next_startable(self) -> Item | None:
        """The oldest waiting task whose queue is under its running cap
        (under the lock)."""
        if not self.queue_concurrency:
            return self._backlog.popleft()
        waiting = collections.Counter(self._capped(q) for q, *_ in self._backlog)
        for index, item in enumerate(self._backlog):
            queue = self._capped(item[0])
            limit = self.queue_concurrency.get(queue)
            if limit is None or self._held[queue] - waiting[queue] < limit:
                del self._backlog[index]
                return item
        return None

    def _capped(self, queue: str) -> str:
        """The queue whose cap a task of ``queue`` counts against: a
        partition's queue (``emails:3`` -> ``emails``), else itself."""
        if not self.client.partitions:
            return queue
        name = self._queue_of.get(queue)
        if name is None:
            name = self._queue_of[queue] = self.client.native.logical_queue(queue)
        return name

    def _count(self, queue: str, delta: int) -> None:
        """Tracks tasks held per queue and holds back fetching at the cap
        (under the lock); a worker with no caps keeps no count."""
        if not self.queue_concurrency:
            return  # nothing to hold back
        queue = self._capped(queue)
        self._held[queue] += delta
        limit = self.queue_concurrency.get(queue)
        if limit is not None and self._native is not None:
            self._native.hold_back(queue, self._held[queue] >= limit)

    def _make_run(self, queue: str, task_id: str, token: int, attempt: int, call: Call | bytes) -> _Run | None:
        delivery = Delivery(queue, task_id, attempt, self.consumer, None, self.client)
        if isinstance(call, bytes):
            # The native layer read no call in it: decoded here, refused
            # with the reason.
            try:
                name, args, kwargs, options = decode_call_with_options(call)
            except ValueError as exc:
                self._refuse(token, delivery, "?", exc)
                return None
        else:
            name, args, kwargs, options = call
        try:
            fn = self.resolver(name)
        except TaskNotRegistered as exc:
            self._refuse(token, delivery, name, exc)
            return None
        except Exception as exc:
            # Importing the task's module failed: every attempt would fail
            # the same way until the code changes.
            error = TaskNotRegistered(f"task {name} cannot be loaded: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            self._refuse(token, delivery, name, error)
            return None
        kind = self._kinds.get(fn)
        if kind is None:
            kind = self._kinds[fn] = (inspect.iscoroutinefunction(fn), getattr(fn, "wants_delivery", False))
        is_async, wants_delivery = kind
        if options:
            backoff = float(options.get("backoff", self.retry_backoff))
            timeout = options.get("timeout")
            delivery.timeout = None if timeout is None else float(timeout)
        else:
            backoff = self.retry_backoff
        if wants_delivery:
            args = [delivery, *args]
        return _Run(token, delivery, name, fn, args, kwargs, backoff, is_async)

    def _on_loop(self) -> bool:
        """Whether this is the worker's event loop thread."""
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _call_on_loop(self, callback: Callable[[], Any]) -> None:
        """Runs ``callback`` on the worker's event loop, now when called
        there."""
        loop = self._loop
        if loop is None:
            return
        if self._on_loop():
            callback()
        else:
            loop.call_soon_threadsafe(callback)

    def _launch_async(self, run: _Run) -> None:
        """Starts an async run on the event loop."""
        try:
            coro = run.fn(*run.args, **run.kwargs)
        except TypeError as exc:
            # Calling a coroutine function runs none of its body: a
            # TypeError here is arguments that do not fit.
            mismatch = self._arguments_mismatch(run.name, run.fn, run.args, run.kwargs)
            self._refuse(run.token, run.delivery, run.name, mismatch or exc, counted=False)
            self._finish(run)
            return
        if self._observing:
            run.started = time.perf_counter()
        if run.delivery.timeout is not None:
            coro = asyncio.wait_for(coro, run.delivery.timeout)
        # Started eagerly: a task that finishes without awaiting anything
        # is recorded at once, without a trip through the event loop.
        future: asyncio.Future[Any] = asyncio.Task(coro, loop=self._loop, eager_start=True)
        if future.done():
            self._finished_async(future, run)
            return
        run.future = future
        future.add_done_callback(lambda f: self._finished_async(f, run))

    def _launch_sync(self, run: _Run) -> None:
        pool = self._pool
        assert pool is not None
        pool.submit(run)

    def _run_in_thread(self, run: _Run | None) -> None:
        """A task thread's job: runs sync tasks and records their outcomes,
        one after the other, as long as sync tasks are waiting."""
        pool = self._pool
        assert pool is not None
        pace = self._pace
        side_by_side = self._side_by_side
        while run is not None:
            observing = self._observing
            # Timed for the prefetch only while tasks run side by side (or
            # the backlog is deeper): one thread's short tasks cost nothing.
            running = pool.running
            paced = pace is not None and (self._deeper_backlog or running >= side_by_side)
            # Timed for the task threads too while more than they keep at
            # least run: they retire the ones the tasks do not need.
            narrowable = running > _TaskThreads.KEEP
            timed = paced or narrowable
            began = time.perf_counter() if observing or timed else 0.0
            if observing:
                run.started = began
            try:
                value, exc = run.fn(*run.args, **run.kwargs), None
            except BaseException as error:
                value, exc = None, error
            if timed:
                seconds = time.perf_counter() - began
                if narrowable:
                    pool.ran(seconds)
            if paced:
                assert pace is not None
                short = pace.add(seconds)
                if short is not None:
                    deeper = short and pool.running >= side_by_side
                    if deeper != self._deeper_backlog:
                        self._deepen_backlog(deeper)
            ok = False
            if not run.delivery.abandoned:
                ok = self._record_outcome(run, value, exc, blocking=True)
                if observing:
                    seconds = time.perf_counter() - run.started
                    telemetry = self.telemetry
                    if telemetry is not None:
                        telemetry.ended.append((run.name, ok, seconds))
                    if self._log_tasks:
                        self._log_task(run, ok, seconds)
            sync_runs = []
            for started in self._take_startable(finished=run, succeeded=ok):
                if started.is_async:
                    self._call_on_loop(functools.partial(self._launch_async, started))
                else:
                    sync_runs.append(started)
            if pool.takes_parked_batches():
                # A batch the worker loop parked while this thread ran its
                # task: taken now, its tasks run here or wait with the
                # others; left, it would go through the event loop in a
                # millisecond (two more threads woken per batch, a cost
                # that shows when tasks release the GIL briefly, as each
                # line a console log handler writes does).
                sync_runs += self._take_directly(0.0)
            # Runs next in this thread: the oldest sync run waiting.
            run = pool.continue_with(sync_runs)

    def _deepen_backlog(self, deeper: bool) -> None:
        """Lets the worker hold up to ``concurrency`` waiting tasks, or back
        to its ``prefetch`` (_SyncPace); any thread."""
        native = self._native
        assert native is not None
        self._deeper_backlog = deeper
        native.set_extra_capacity(max(0, self.concurrency - self.prefetch) if deeper else 0)

    def _finished_async(self, future: asyncio.Future[Any], run: _Run) -> None:
        run.future = None
        if not future.cancelled():
            exc = future.exception()
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                self._finish(run)
                raise exc
            ok = self._record_outcome(run, None if exc is not None else future.result(), exc, blocking=False)
            if run.started:
                seconds = time.perf_counter() - run.started
                telemetry = self.telemetry
                if telemetry is not None:
                    telemetry.ended.append((run.name, ok, seconds))
                if self._log_tasks:
                    self._log_task(run, ok, seconds)
            self._finish(run, ok)
        else:
            # Cancelled: abandoned at shutdown (logged), the lease decides.
            self._finish(run)
        self._start_waiting()

    def _finish(self, run: _Run, succeeded: bool = False) -> None:
        """A run is over (its outcome recorded, or abandoned): its slot is
        free; any thread."""
        with self._lock:
            self._end(run, succeeded)
            idle = self._all_ended()
        if idle:
            self._call_on_loop(self._idle.set)

    def _all_ended(self) -> bool:
        """Whether a stop waits for the running tasks and none runs or is
        being prepared (under the lock): then the loop is told."""
        return self._idle_wanted and not self._running and not self._preparing

    def _end(self, run: _Run, succeeded: bool) -> None:
        """Frees a run's slot, counting it if it ``succeeded`` (under the
        lock)."""
        self._running.discard(run)
        self._count(run.delivery.queue, -1)
        if succeeded:
            self.succeeded += 1

    # --- outcomes -----------------------------------------------------------------------------

    @staticmethod
    def _log_task(run: _Run, ok: bool, seconds: float) -> None:
        """The DEBUG record of a run that ended, with its fields as the
        record's attributes too (for structured log handlers)."""
        d = run.delivery
        outcome = "succeeded" if ok else "failed"
        task_logger.debug(
            "task %s in %s (%s) attempt %d %s in %.6f s", d.id, d.queue, run.name, d.attempt, outcome, seconds,
            extra={
                "task_id": d.id, "task_name": run.name, "queue": d.queue, "attempt": d.attempt,
                "duration": seconds, "outcome": outcome,
            },
        )

    def _record_outcome(self, run: _Run, value: Any, exc: BaseException | None, blocking: bool) -> bool:
        """Records how a run ended with the native core; whether it
        succeeded. ``blocking``: on a task thread, where reading the task for
        a failure's history may block; on the event loop that read is
        awaited in the background."""
        native = self._native
        assert native is not None
        token, delivery, name = run.token, run.delivery, run.name
        if exc is None:
            try:
                result = value.data if isinstance(value, Stored) else dumps(value)
            except (TypeError, ValueError) as err:
                # It ran: retrying would repeat its effects.
                self._refuse(token, delivery, name, result_not_stored(name, err), counted=False, blocking=blocking)
                return False
            try:
                native.succeeded(delivery.queue, delivery.id, token, result)
            except PayloadError as err:
                # Over the size limit once compressed: it ran, and its
                # result cannot be kept.
                error = result_not_stored(name, err, too_large=True)
                self._refuse(token, delivery, name, error, counted=False, blocking=blocking)
                return False
            return True  # counted as its slot is freed (`_end`)
        if isinstance(exc, ResultNotStored):
            self._refuse(token, delivery, name, exc, counted=False, blocking=blocking)
            return False
        if isinstance(exc, TypeError):
            # Arguments that do not fit the task fail the same way on every
            # attempt: dead-lettered at once, with the reason.
            mismatch = self._arguments_mismatch(name, run.fn, run.args, run.kwargs)
            if mismatch is not None:
                self._refuse(token, delivery, name, mismatch, counted=False, blocking=blocking)
                return False
        with self._lock:
            self.failed += 1
        delay = min(run.backoff * 2 ** (delivery.attempt - 1), self.max_backoff)
        delay *= random.uniform(0.5, 1.5)
        self._report(token, delivery, name, exc, delay, blocking)
        return False

    def _refuse(
        self, token: int, delivery: Delivery, name: str, exc: BaseException, counted: bool = True,
        blocking: bool | None = None,
    ) -> None:
        """Dead-letters a task that cannot run (or cannot succeed), at once
        and with the reason (``counted``: it was taken from the backlog
        without starting, so it still holds its place in the per-queue
        count)."""
        with self._lock:
            self.dead_lettered += 1
            if counted:
                self._count(delivery.queue, -1)
        self._report(token, delivery, name, exc, None, blocking)

    def _report(
        self, token: int, delivery: Delivery, name: str, exc: BaseException, retry_in: float | None,
        blocking: bool | None = None,
    ) -> None:
        """Records a failed attempt: retried after ``retry_in`` seconds (the
        server dead-letters it once its attempts are used up), or
        dead-lettered now when None. The error text carries the earlier
        attempts' errors, read from the task first unless the task's
        wrapper did: right here on a task thread (``blocking``; by default
        any thread but the event loop's), in the background on the loop."""
        if blocking is None:
            blocking = not self._on_loop()
        failure = delivery.reported
        if failure is not None:
            self._record(token, delivery, name, failure, retry_in)
            return
        if delivery.attempt == 1 and retry_in is None:
            # No earlier attempt to keep, and nothing to ask: it ends here.
            self._record(token, delivery, name, Failure(exc, 1, None, False), None)
            return
        if blocking:
            self._record(token, delivery, name, delivery.failure(exc, retryable=retry_in is not None), retry_in)
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

    # --- stopping -----------------------------------------------------------------------------

    async def _shutdown(self, bridge: LoopBridge) -> None:
        native = self._native
        if self._pool is not None:
            self._pool.stop_fetching()
        if native is not None:
            # Batches handed to task threads are all in the backlog after this.
            left, recorded = native.close_handoff(HANDOFF_PATIENCE)
            if left:
                self._accept(left)
            if not recorded:
                logger.warning(
                    "worker %s: a batch a task thread took was not recorded within %g s; its tasks stay leased "
                    "until their leases run out", self.consumer, HANDOFF_PATIENCE,
                )
        with self._lock:
            unstarted = [(q, i, t) for q, i, t, _, _ in self._backlog]
            self._backlog.clear()
        if native is not None and unstarted:
            # Fetched but never started: back to the queue, no attempt counted.
            await bridge.wait(native.release(bridge.native, unstarted))
        with self._lock:
            # A task thread may be preparing a task it took as the stop
            # came (the quota reached is one way): waited for as well.
            busy = bool(self._running or self._preparing)
        if busy:
            pending = await self._wait_running()
            # Handed to the task threads but started by none when the
            # waiting ended (a forced stop, or the grace period over while
            # the threads ran longer tasks): given back, not abandoned.
            waiting: list[_Run] = self._pool.take_waiting() if self._pool is not None else []
            for run in waiting:
                self._finish(run)
            pending.difference_update(waiting)
            if native is not None and waiting:
                given_back = [(run.delivery.queue, run.delivery.id, run.token) for run in waiting]
                await self._unless_aborted(bridge.wait(native.release(bridge.native, given_back)))
            self._abandon(pending)
        sent = True
        if self._reports:
            sent = await self._unless_aborted(asyncio.gather(*self._reports, return_exceptions=True))
        if native is not None:
            sent = await self._unless_aborted(bridge.wait(native.close(bridge.native))) and sent
        if not sent:
            logger.warning("worker %s stopped before its last outcomes reached Valkey", self.consumer)
        if self._pool is not None:
            self._pool.shutdown()

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

    async def _wait_running(self) -> set[_Run]:
        """Waits for the running tasks until the grace period ends or a
        forced stop; the ones still running."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace
        aborted = asyncio.ensure_future(self._aborted.wait())
        try:
            while not self._aborting:
                # Cleared before the check: a run finishing after it sets
                # the event again, so no wake-up is lost.
                self._idle.clear()
                with self._lock:
                    self._idle_wanted = True
                    if not self._running and not self._preparing:
                        break
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                idle = asyncio.ensure_future(self._idle.wait())
                try:
                    await asyncio.wait({idle, aborted}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    idle.cancel()
        finally:
            aborted.cancel()
        with self._lock:
            return set(self._running)

    def _abandon(self, pending: set[_Run]) -> None:
        """Gives up on tasks still running, saying what becomes of them."""
        when = "at a forced stop" if self._aborting else f"after the {self.grace:g} s grace period"
        for run in pending:
            delivery = run.delivery
            delivery.abandoned = True
            logger.warning(
                "task %s in %s (%s, attempt %d) is still running %s: the worker stops without its outcome. "
                "Its lease is no longer renewed and runs out within %g s; the server then runs the task again "
                "or, once its budget is spent, dead-letters it with the lease's error%s.",
                delivery.id, delivery.queue, run.name, delivery.attempt, when, self.lease,
                "" if run.is_async else " (a sync task cannot be interrupted: it ends with the process)",
            )
            if run.future is not None:
                run.future.cancel()


class Stored:
    """A task's return value already encoded (a wrapper that had to encode
    it to know it can be stored hands it over this way, so it is encoded
    once)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


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
