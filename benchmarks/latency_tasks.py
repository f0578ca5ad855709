"""Django tasks of the latency benchmark (``benchmarks/latency.py``)."""

from __future__ import annotations

import asyncio
import time

from django.tasks import task


@task
def sync_10ms() -> None:
    time.sleep(0.01)


@task
async def async_10ms() -> None:
    await asyncio.sleep(0.01)
