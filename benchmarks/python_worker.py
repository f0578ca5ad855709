"""One benchmark worker process: `python -m benchmarks.python_worker URL CONCURRENCY [ENGINE]`.

Runs in burst mode and prints one JSON line: seconds from start to the first
and to the last task done, tasks done, peak RSS and the core's counters."""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time

import vtasks

from benchmarks import bench_tasks


def main() -> None:
    url, concurrency = sys.argv[1], int(sys.argv[2])
    engine = sys.argv[3] if len(sys.argv) > 3 else "auto"
    client = vtasks.Client(url, engine=engine)
    worker = vtasks.Worker(client, concurrency=concurrency, burst=True, handle_signals=False)
    started = time.monotonic()
    asyncio.run(worker.run())
    first, last = bench_tasks.first_done, bench_tasks.last_done
    print(json.dumps({
        "first_task_s": None if first is None else first - started,
        "elapsed_s": None if last is None else last - started,
        "done": worker.succeeded,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "stats": worker.stats,
    }))


if __name__ == "__main__":
    main()
