"""Enqueues tasks the way a Django async view would, and prints the rate.

    python -m benchmarks.peers.enqueue TASK N sequential|concurrent

``await task.aenqueue()`` for vtasks and django-vtasks, ``await
sync_to_async(task.delay)()`` for Celery, ``await
sync_to_async(backend.enqueue)(task, (), {})`` for RQ. ``sequential`` awaits
one enqueue after the other; ``concurrent`` runs 100 producers at once.
Prints one JSON line: {"enqueued": n, "seconds": s}."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable

PRODUCERS = 100


def enqueuer(system: str, task_name: str) -> Callable[[], Awaitable[object]]:
    from asgiref.sync import sync_to_async

    if system == "celery":
        from benchmarks.peers import celery_app

        delay = getattr(celery_app, task_name).delay
        return lambda: sync_to_async(delay)()
    import django

    django.setup()
    from benchmarks.peers import tasks

    task = getattr(tasks, task_name)
    if system == "rq":
        backend = task.get_backend()
        return lambda: sync_to_async(backend.enqueue)(task, (), {})
    return task.aenqueue


async def run(enqueue: Callable[[], Awaitable[object]], n: int, shape: str) -> float:
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


def main() -> None:
    task_name, n, shape = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    enqueue = enqueuer(os.environ["BENCH_SYSTEM"], task_name)
    seconds = asyncio.run(run(enqueue, n, shape))
    print(json.dumps({"enqueued": n, "seconds": seconds}))


if __name__ == "__main__":
    main()
