"""The Celery side of the comparison: the broker is ``BENCH_URL``, results
are not stored, and the worker runs the threads pool."""

from __future__ import annotations

import os
import time

from celery import Celery

from benchmarks.peers.tasks_marker import mark_done

app = Celery("bench", broker=os.environ.get("BENCH_URL", "redis://127.0.0.1:6379/0").replace("valkey://", "redis://"))
app.conf.update(task_ignore_result=True, worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)


@app.task
def noop_sync() -> None:
    mark_done()


@app.task
def sleep_sync() -> None:
    time.sleep(0.01)
    mark_done()
