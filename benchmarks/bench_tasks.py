"""The raw ``vtasks.Worker``'s benchmark tasks: the bodies of the Django
tasks in ``benchmarks.peers.tasks``, registered with ``@vtasks.task``.
Each marks its completion (``benchmarks.peers.tasks_marker``)."""

from __future__ import annotations

import asyncio
import time

import vtasks

from benchmarks.peers.tasks_marker import mark_done


@vtasks.task(name="bench.noop_async")
async def noop_async() -> None:
    mark_done()


@vtasks.task(name="bench.sleep_async")
async def sleep_async() -> None:
    await asyncio.sleep(0.01)
    mark_done()


@vtasks.task(name="bench.noop_sync")
def noop_sync() -> None:
    mark_done()


@vtasks.task(name="bench.sleep_sync")
def sleep_sync() -> None:
    time.sleep(0.01)
    mark_done()
