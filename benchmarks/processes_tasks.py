"""Django tasks of ``benchmarks/worker_processes.py``."""

from __future__ import annotations

from django.tasks import task


@task
def sync_noop() -> None:
    pass
