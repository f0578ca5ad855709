"""The benchmark's tasks, as Django tasks (vtasks, django-vtasks, RQ).

Each task marks its completion by appending one byte to the file named by
``BENCH_DONE_FILE`` (opened once per process, ``O_APPEND``): the driver
counts completions by the file's size, which costs every system the same
one system call and no extra network round trip."""

from __future__ import annotations

import asyncio
import time

from django.tasks import task

from benchmarks.peers.tasks_marker import mark_done


@task
async def noop_async() -> None:
    mark_done()


@task
async def sleep_async() -> None:
    await asyncio.sleep(0.01)
    mark_done()


@task
def noop_sync() -> None:
    mark_done()


@task
def sleep_sync() -> None:
    time.sleep(0.01)
    mark_done()
