"""Enqueues tasks as a Django project would, and prints the rate.

    python -m benchmarks.peers.enqueue TASK N sync|sequential|concurrent [--warmup]

``sync``: a plain loop of ``task.enqueue()`` (Celery: ``task.delay()``), as
a sync view or a management command would. ``sequential``: one ``await
task.aenqueue()`` after the other on an event loop, as an async view would
(Celery has no asyncio API: ``await sync_to_async(task.delay)()``; RQ's
backend has no ``aenqueue`` of its own, so Django's default runs its
``enqueue`` through ``sync_to_async``). ``concurrent``: 100 producers on one
event loop, each awaiting its share one after the other. ``--warmup``
enqueues one task first, outside the timing (connections are opened
lazily). Prints one JSON line: {"enqueued": n, "seconds": s}."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable

PRODUCERS = 100


def enqueuers(system: str, task_name: str) -> tuple[Callable[[], object], Callable[[], Awaitable[object]]]:
    """The sync and the async way of enqueueing one task."""
    if system == "celery":
        from asgiref.sync import sync_to_async

        from benchmarks.peers import celery_app

        delay = getattr(celery_app, task_name).delay
        return delay, sync_to_async(delay)
    import django

    django.setup()
    from benchmarks.peers import tasks

    task = getattr(tasks, task_name)
    return task.enqueue, task.aenqueue


async def run_async(enqueue: Callable[[], Awaitable[object]], n: int, shape: str) -> float:
    started = time.perf_counter()
    if shape == "sequential":
        for _ in range(n):
            await enqueue()
    else:

        async def producer(count: int) -> None:
            for _ in range(count):
                await enqueue()

        await asyncio.gather(*(producer(n // PRODUCERS + (i < n % PRODUCERS)) for i in range(PRODUCERS)))
    return time.perf_counter() - started


def run_sync(enqueue: Callable[[], object], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        enqueue()
    return time.perf_counter() - started


def main() -> None:
    task_name, n, shape = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if shape not in ("sync", "sequential", "concurrent"):
        raise SystemExit(f"shape {shape!r}: expected sync, sequential or concurrent")
    enqueue_sync, enqueue_async = enqueuers(os.environ["BENCH_SYSTEM"], task_name)
    if shape == "sync":
        if "--warmup" in sys.argv:
            enqueue_sync()
        seconds = run_sync(enqueue_sync, n)
    else:

        async def timed() -> float:
            if "--warmup" in sys.argv:
                await enqueue_async()
            return await run_async(enqueue_async, n, shape)

        seconds = asyncio.run(timed())
    print(json.dumps({"enqueued": n, "seconds": seconds}))


if __name__ == "__main__":
    main()
