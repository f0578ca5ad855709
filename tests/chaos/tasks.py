"""Tasks of the fault suite. Each run appends ``start``/``done`` lines to the
file named by ``VTASKS_CHAOS_EVENTS`` (one short line per write, with
O_APPEND, so lines of concurrent worker processes never interleave), which
the tests read to find what ran, where, how often and when."""

from __future__ import annotations

import asyncio
import os
import time

import vtasks

_events: int | None = None


def record(kind: str, n: int, attempt: int) -> None:
    global _events
    if _events is None:
        path = os.environ.get("VTASKS_CHAOS_EVENTS")
        if not path:
            return
        _events = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_events, f"{kind} {n} {os.getpid()} {attempt} {time.time():.6f}\n".encode())


# Generous budgets: the suite kills workers, and a task running beside one
# that kills its worker loses its lease with it each time.
@vtasks.task(name="chaos.work", max_attempts=100, max_lost_leases=100)
async def work(delivery: vtasks.worker.Delivery, n: int, seconds: float) -> dict[str, int]:
    """Sleeps ``seconds``; returns which attempt and process finished it."""
    record("start", n, delivery.attempt)
    await asyncio.sleep(seconds)
    record("done", n, delivery.attempt)
    return {"n": n, "attempt": delivery.attempt, "pid": os.getpid()}


work.wants_delivery = True  # type: ignore[attr-defined]


@vtasks.task(name="chaos.crash", max_attempts=1)
def crash(n: int) -> None:
    """Takes its whole worker process down, every time: the lost-lease
    budget (3), not ``max_attempts``, ends it."""
    record("start", n, 0)
    os._exit(17)


@vtasks.task(name="chaos.noop", max_attempts=3)
async def noop(n: int) -> int:
    return n
