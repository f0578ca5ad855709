"""The raw ``vtasks.Worker`` as the benchmarks run it, in a process of its
own: ``python -m benchmarks.python_worker URL CONCURRENCY [ENGINE]``.

Burst mode, the worker's defaults otherwise. Its tasks mark their
completions (``benchmarks.bench_tasks``). Prints one JSON line: when it was
ready (``time.monotonic()`` after its imports, the connection to Valkey and
the worker's construction; the driver knows when it launched the process),
the tasks it ran and its peak RSS."""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time

import vtasks

from benchmarks import bench_tasks  # noqa: F401  (registers the tasks)


def main() -> None:
    url, concurrency = sys.argv[1], int(sys.argv[2])
    engine = sys.argv[3] if len(sys.argv) > 3 else "auto"
    client = vtasks.Client(url, engine=engine)
    client.native  # noqa: B018  (connects)
    worker = vtasks.Worker(client, concurrency=concurrency, burst=True, handle_signals=False)
    ready = time.monotonic()
    asyncio.run(worker.run())
    print(json.dumps({
        "ready": ready,
        "done": worker.succeeded,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()
