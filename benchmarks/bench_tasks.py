"""Tasks of the Python benchmark."""

from __future__ import annotations

import asyncio
import time

import vtasks

first_done: float | None = None
last_done: float | None = None


def _done() -> None:
    global first_done, last_done
    last_done = time.monotonic()
    if first_done is None:
        first_done = last_done


@vtasks.task(name="bench.noop")
async def noop() -> None:
    _done()


@vtasks.task(name="bench.sleep10")
async def sleep10() -> None:
    await asyncio.sleep(0.01)
    _done()
