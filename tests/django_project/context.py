"""A TASK_CONTEXT factory for the tests: it records each run's entry and
exit (with the exception seen, if any) and sets a context variable the
tasks read."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from tests.sample_tasks import record

CURRENT: contextvars.ContextVar[str] = contextvars.ContextVar("vtasks_test_run", default="none")


@contextlib.contextmanager
def task_scope(run) -> Iterator[None]:  # type: ignore[no-untyped-def]
    record("context_enter", f"{run.id} {run.task_id} {run.name} {run.queue} {run.attempt} {run.worker}")
    token = CURRENT.set(run.id)
    try:
        yield
    except BaseException as exc:
        record("context_exit", type(exc).__name__)
        raise
    else:
        record("context_exit", "ok")
    finally:
        CURRENT.reset(token)


class AsyncScope:
    """An async context manager, for async tasks."""

    def __init__(self, run) -> None:  # type: ignore[no-untyped-def]
        self.run = run

    async def __aenter__(self) -> None:
        record("context_aenter", self.run.id)
        self.token = CURRENT.set(f"async {self.run.id}")

    async def __aexit__(self, *exc: object) -> None:
        CURRENT.reset(self.token)
        record("context_aexit", "ok" if exc[0] is None else exc[0].__name__)  # type: ignore[union-attr]


def async_scope(run) -> AsyncScope:  # type: ignore[no-untyped-def]
    return AsyncScope(run)
