"""Short sync tasks after blocking ones: do the task threads step back?

    .venv/bin/python -m benchmarks.thread_narrowing [--sleeps 400]
        [--noops 50000] [--concurrency 200] [--runs 4]

Each run: a fresh valkey-server with the module (``VTASKS_MODULE``, else
`target/release/libvtasks.so`), ``--sleeps`` sync tasks that sleep 10 ms,
then ``--noops`` sync no-op tasks, one raw `vtasks.Worker` at
``--concurrency`` in burst mode, in this process. A poller reads the
worker's count of succeeded tasks and the task threads running every
10 ms; the no-op rate is taken from the 1,000th no-op done to the last
task, with the threads running on average over that time. Threads kept busy
after the sleeps take turns with the GIL and the rate falls to a fraction
of what the same no-ops reach with ``--sleeps 0``. Prints one line per run;
writes no file (the figures are quoted in docs/DECISIONS.md, "As many task
threads as the tasks need, judged by the scheduler").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time

import vtasks

from benchmarks import report


@vtasks.task(name="benchmarks.narrowing.nap")
def nap(seconds: float) -> None:
    time.sleep(seconds)


@vtasks.task(name="benchmarks.narrowing.noop")
def noop() -> None:
    pass


def one_run(sleeps: int, noops: int, concurrency: int) -> tuple[float, float, int]:
    """(no-op rate, threads running on average meanwhile, threads started)."""
    from tests.conftest import ValkeyServer

    server = ValkeyServer(with_module=True)
    try:
        client = vtasks.Client(f"redis://127.0.0.1:{server.port}/0")
        for done in range(0, sleeps, 5000):
            client.enqueue_many_sync(nap, [((0.01,), {}) for _ in range(min(5000, sleeps - done))])
        for done in range(0, noops, 5000):
            client.enqueue_many_sync(noop, [((), {}) for _ in range(min(5000, noops - done))])
        worker = vtasks.Worker(client, concurrency=concurrency, burst=True, handle_signals=False)
        samples: list[tuple[float, int, int]] = []
        finished = threading.Event()

        def poll() -> None:
            while not finished.is_set():
                pool = worker._pool
                samples.append((time.monotonic(), worker.succeeded, pool.running if pool is not None else 0))
                time.sleep(0.01)

        poller = threading.Thread(target=poll)
        poller.start()
        try:
            asyncio.run(worker.run())
        finally:
            finished.set()
            poller.join()
        pool = worker._pool
        started = pool._threads if pool is not None else 0
        window = [s for s in samples if s[1] >= sleeps + 1000]
        if len(window) < 2 or window[-1][0] <= window[0][0]:
            return float("nan"), float("nan"), started
        rate = (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])
        return rate, sum(s[2] for s in window) / len(window), started
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sleeps", type=int, default=400)
    parser.add_argument("--noops", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--runs", type=int, default=4)
    args = parser.parse_args()
    os.environ.setdefault("VTASKS_MODULE", str(report.ROOT / "target" / "release" / "libvtasks.so"))
    for run in range(args.runs):
        rate, running, started = one_run(args.sleeps, args.noops, args.concurrency)
        print(
            f"run {run + 1}: {args.sleeps} sleeps then {args.noops:,} no-ops at concurrency {args.concurrency}: "
            f"no-ops {rate:,.0f}/s, {running:.1f} threads running on average, {started} started",
            flush=True,
        )


if __name__ == "__main__":
    main()
