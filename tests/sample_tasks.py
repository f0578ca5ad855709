"""Tasks the tests register. Each records its run by appending a line to
the file named by VTASKS_TEST_RUNS, so tests (and worker subprocesses) can
check exactly which tasks ran and how often."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import threading
import time
from typing import Any

import vtasks


def record(kind: str, value: object) -> None:
    path = os.environ.get("VTASKS_TEST_RUNS")
    if path:
        with open(path, "a") as f:
            f.write(f"{kind} {value}\n")


@vtasks.task(name="tests.add")
def add(a: int, b: int) -> int:
    record("add", a)
    return a + b


@vtasks.task(name="tests.length")
def length(text: str) -> int:
    record("length", len(text))
    return len(text)


@vtasks.task(name="tests.async_add")
async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    record("async_add", a)
    return a + b


@vtasks.task(name="tests.mark", max_attempts=5)
async def mark(n: int, sleep: float = 0.0) -> int:
    if sleep:
        await asyncio.sleep(sleep)
    record("mark", n)
    return n


@vtasks.task(name="tests.mark_sync", max_attempts=5)
def mark_sync(n: int, spin: float = 0.0) -> int:
    """As ``mark``, a sync task that keeps the interpreter busy for
    ``spin`` seconds (short sync tasks: the task threads take their batches
    from the native core themselves)."""
    end = time.monotonic() + spin
    while time.monotonic() < end:
        pass
    record("mark_sync", n)
    return n


@vtasks.task(name="tests.tracked", max_attempts=5)
async def tracked(n: int, sleep: float = 0.0) -> int:
    """As ``mark``, and also records each start: ``tracked_start <n>
    <pid> <unix time>``, so a test can tell which process ran what, when."""
    record("tracked_start", f"{n} {os.getpid()} {time.time()}")
    if sleep:
        await asyncio.sleep(sleep)
    record("tracked", n)
    return n


@vtasks.task(name="tests.slow_sync")
def slow_sync(n: int, seconds: float) -> int:
    time.sleep(seconds)
    record("slow_sync", n)
    return n


@vtasks.task(name="tests.boom", max_attempts=3)
def boom(n: int) -> None:
    record("boom", n)
    raise ValueError(f"boom {n}")


@vtasks.task(name="tests.random_text")
def random_text(size: int) -> str:
    """``size`` characters of random base64: zstd keeps about 3/4 of it."""
    record("random_text", size)
    return base64.b64encode(os.urandom(size * 3 // 4)).decode()


@vtasks.task(name="tests.huge_error", max_attempts=3)
def huge_error(size: int) -> None:
    """Fails with a message of ``size`` characters, and a deep traceback."""
    record("huge_error", size)

    def deeper(depth: int) -> None:
        if depth == 0:
            raise ValueError("e" * size)
        deeper(depth - 1)

    deeper(300)


@vtasks.task(name="tests.unserializable_result")
def unserializable_result() -> object:
    return object()


gauge_now: dict[str, int] = {}
gauge_peak: dict[str, int] = {}


@vtasks.task(name="tests.gauge")
async def gauge(n: int, group: str) -> int:
    """Tracks how many tasks of `group` run at once in this process."""
    gauge_now[group] = gauge_now.get(group, 0) + 1
    gauge_peak[group] = max(gauge_peak.get(group, 0), gauge_now[group])
    await asyncio.sleep(0.02)
    gauge_now[group] -= 1
    record("gauge", n)
    return n


@vtasks.task(name="tests.timed")
async def timed(n: int, seconds: float) -> int:
    """Sleeps, then records when it ended (``time.time()``)."""
    await asyncio.sleep(seconds)
    record("timed", f"{n} {time.time()!r}")
    return n


@vtasks.task(name="tests.held")
async def held(n: int, seconds: float) -> int:
    """Records its start with the process id (``held_start <n> <pid>``),
    then waits ``seconds`` or until ``<VTASKS_TEST_RUNS>.release`` exists."""
    record("held_start", f"{n} {os.getpid()}")
    release = os.environ.get("VTASKS_TEST_RUNS", "") + ".release"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not os.path.exists(release):
        await asyncio.sleep(0.02)
    record("held", n)
    return n


_meetings: dict[str, threading.Barrier] = {}
_meetings_lock = threading.Lock()


@vtasks.task(name="tests.meet")
def meet(n: int, group: str, parties: int) -> int:
    """A sync task that blocks until ``parties`` tasks of ``group`` wait
    together (at most 20 s, then it fails): they all succeed only if that
    many run at once."""
    with _meetings_lock:
        barrier = _meetings.setdefault(group, threading.Barrier(parties, timeout=20))
    barrier.wait()
    meet_threads.append((threading.current_thread().name, sys.gettrace()))
    record("meet", n)
    return n


# The thread each `meet` ran on, and the trace function it ran under.
meet_threads: list[tuple[str, Any]] = []


@vtasks.task(name="tests.spin")
def spin(n: int, seconds: float) -> int:
    """A sync task that keeps the interpreter busy for ``seconds`` (it
    never waits), then records when it ended (``spin <n> <time.time()>``)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    record("spin", f"{n} {time.time()!r}")
    return n


@vtasks.task(name="tests.quick")
def quick(n: int) -> int:
    """A short sync task that records when it ended (``quick <n> <time.time()>``)."""
    record("quick", f"{n} {time.time()!r}")
    return n


# (n, thread ident) of each run of ``on_thread``, in the order they ended.
on_thread_runs: list[tuple[int, int]] = []


@vtasks.task(name="tests.on_thread")
def on_thread(n: int, spin: float) -> int:
    """A short sync task that keeps the interpreter busy for ``spin``
    seconds and never waits, then records the thread it ran on in
    ``on_thread_runs`` (in memory: writing a file lets other threads take
    the GIL mid-task, which would make it a task that waits)."""
    end = time.monotonic() + spin
    while time.monotonic() < end:
        pass
    on_thread_runs.append((n, threading.get_ident()))
    return n
