"""The Django worker's speed on no-op tasks, optionally profiled:

    .venv/bin/python -m benchmarks.profile_django_worker [N] [--sync] [--profile] [--quiet-task-logs] [--metrics]

Enqueues N no-op tasks (default 20,000; async ones, sync ones with
``--sync``) through Django's ``aenqueue`` on a
fresh valkey-server with the release module, runs a burst worker in this
process and prints the rate; ``--profile`` prints the top of a cProfile
listing, ``--quiet-task-logs`` sets the ``django.tasks`` logger to WARNING
first (see the README's note on Django's task log receivers), ``--metrics``
runs the worker with its Prometheus metrics on, as ``runworker
--metrics-port`` does (nothing scrapes them)."""

from __future__ import annotations

import asyncio
import cProfile
import logging
import os
import pstats
import sys
import time

from tests.conftest import ROOT, ValkeyServer


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = int(args[0]) if args else 20_000
    os.environ.setdefault("VTASKS_MODULE", str(ROOT / "target" / "release" / "libvtasks.so"))
    server = ValkeyServer(with_module=True)
    os.environ.update(BENCH_SYSTEM="vtasks-module", BENCH_URL=server.url,
                      DJANGO_SETTINGS_MODULE="benchmarks.peers.settings")
    try:
        import django

        django.setup()
        from django.tasks import task_backends
        from vtasks.django.worker import make_worker

        from benchmarks.peers import tasks

        async def enqueue() -> None:
            noop = tasks.noop_sync if "--sync" in sys.argv else tasks.noop_async
            await asyncio.gather(*(noop.aenqueue() for _ in range(n)))

        asyncio.run(enqueue())
        if "--quiet-task-logs" in sys.argv:
            logging.getLogger("django.tasks").setLevel(logging.WARNING)
        worker = make_worker(task_backends["default"], concurrency=200, burst=True, handle_signals=False)
        if "--metrics" in sys.argv:
            from vtasks.metrics import WorkerCollector

            WorkerCollector(worker)
        profile = cProfile.Profile() if "--profile" in sys.argv else None
        started, cpu = time.perf_counter(), time.process_time()
        if profile:
            profile.enable()
        asyncio.run(worker.run())
        if profile:
            profile.disable()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        print(
            f"{worker.succeeded} no-op tasks in {elapsed:.2f} s: {worker.succeeded / elapsed:,.0f}/s, "
            f"{cpu / max(1, worker.succeeded) * 1e6:.1f} µs of this process's CPU per task"
        )
        if profile:
            pstats.Stats(profile).sort_stats("tottime").print_stats(int(os.environ.get("PROFILE_LINES", "25")))
    finally:
        server.close()


if __name__ == "__main__":
    main()
