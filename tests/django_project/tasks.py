"""Plain Django tasks, as a project would write them."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import vtasks
from django.tasks import task

from tests.sample_tasks import record


@task
def add(a: int, b: int) -> int:
    record("django_add", a)
    return a + b


@task(queue_name="emails", priority=5)
async def send_email(n: int) -> str:
    await asyncio.sleep(0)
    record("django_send", n)
    return f"sent {n}"


@task(takes_context=True)
def attempt_number(context, n: int) -> int:
    record("django_context", context.attempt)
    return context.attempt


@task
def fails(n: int) -> None:
    record("django_fails", n)
    raise ValueError(f"failed {n}")


@task
def ordered(n: int) -> int:
    record("django_ordered", n)
    return n


@task(max_attempts=2, retry_backoff=0.01)
def fails_twice(n: int) -> None:
    record("django_fails_twice", n)
    raise RuntimeError(f"again {n}")


@task(timeout=0.2)
async def too_slow() -> None:
    await asyncio.sleep(10)


@task(unique="mutex")
def refresh_cache(key: str) -> str:
    record("django_refresh", 1)
    return key


@task(unique="throttle", unique_period=3600)
def send_digest(user: int) -> int:
    record("django_digest", user)
    return user


@task
def sleeps_recorded(n: int, seconds: float) -> int:
    """Sleeps ``seconds``, recording its start and end with the worker's pid."""
    record("django_sleeps_start", f"{n} {os.getpid()} {time.time():.3f}")
    time.sleep(seconds)
    record("django_sleeps_done", f"{n} {os.getpid()} {time.time():.3f}")
    return n


@task
async def slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "slow done"


@task
def padded(n: int, pad: str) -> int:
    """A task with a large argument: a few thousand fill a small server."""
    record("django_padded", n)
    return n


@task
def returns_a_set(n: int) -> set[int]:
    record("django_returns_a_set", n)
    return {n}


@task
def fails_in_vtasks(n: int) -> None:
    raise vtasks.QueueFull(f"full {n}")


@task
def sleeps(seconds: float) -> str:
    """Sleeps ``seconds``, or until the file ``<VTASKS_TEST_RUNS>.release`` exists."""
    record("django_sleeps", 1)
    release = os.environ.get("VTASKS_TEST_RUNS", "") + ".release"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not os.path.exists(release):
        time.sleep(0.02)
    return "slept"


@task
def timed(n: int, seconds: float) -> int:
    """Sleeps, then records when it ended (``time.time()``)."""
    time.sleep(seconds)
    record("django_timed", f"{n} {time.time()!r}")
    return n


@task(queue_name="emails")
def newsletter(n: int) -> int:
    time.sleep(0.01)
    record("django_newsletter", n)
    return n


@task
def meets(n: int, seconds: float) -> int:
    """Records its start with the process id (``django_meets_start <n> <pid>``),
    waits until tasks from two processes have started (at most 30 s, then it
    fails), then sleeps ``seconds`` or until ``<VTASKS_TEST_RUNS>.release``
    exists."""
    path = os.environ["VTASKS_TEST_RUNS"]
    record("django_meets_start", f"{n} {os.getpid()}")
    deadline = time.monotonic() + 30
    while len(_pids(path, "django_meets_start")) < 2:
        if time.monotonic() > deadline:
            raise TimeoutError("no task started in a second worker process")
        time.sleep(0.02)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not os.path.exists(path + ".release"):
        time.sleep(0.02)
    record("django_meets", f"{n} {os.getpid()}")
    return n


def _pids(path: str, kind: str) -> set[str]:
    with open(path) as f:
        return {line.split()[2] for line in f if line.startswith(kind + " ")}


@task
def in_context(n: int) -> str:
    from tests.django_project.context import CURRENT

    record("django_in_context", CURRENT.get())
    if n < 0:
        raise ValueError("negative")
    return CURRENT.get()


@task
async def in_context_async(n: int) -> str:
    from tests.django_project.context import CURRENT

    await asyncio.sleep(0)
    record("django_in_context_async", CURRENT.get())
    return CURRENT.get()


@task
def fails_until_released(n: int) -> int:
    """Raises until the file ``<VTASKS_TEST_RUNS>.release`` exists."""
    record("django_fails_until_released", n)
    if not os.path.exists(os.environ.get("VTASKS_TEST_RUNS", "") + ".release"):
        raise RuntimeError(f"not released yet: {n}")
    return n * 10


@task(takes_context=True)
def tick(context) -> str:  # type: ignore[no-untyped-def]
    """A periodic task: records its result id (which names its occurrence)
    and the process that ran it (``django_tick <result id> <pid>``)."""
    record("django_tick", f"{context.task_result.id} {os.getpid()}")
    return context.task_result.id


@task
def database_state(n: int) -> None:
    """Records whether this thread's database connection was open when the
    task started, then runs a query (opening one)."""
    from django.db import connection

    record("django_db", f"{n} {threading.get_ident()} {int(connection.connection is not None)}")
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
