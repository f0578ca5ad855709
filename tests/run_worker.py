"""A worker process for the tests: `python -m tests.run_worker URL [LEASE] [CONCURRENCY]`."""

from __future__ import annotations

import asyncio
import logging
import sys

import vtasks

from tests import sample_tasks  # noqa: F401  (registers the tasks)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    url = sys.argv[1]
    lease = float(sys.argv[2]) if len(sys.argv) > 2 else 30.0
    concurrency = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    worker = vtasks.Worker(url, concurrency=concurrency, lease=lease, block=1.0, retry_backoff=0.05)
    print("ready", flush=True)
    asyncio.run(worker.run())
    print(repr(worker), flush=True)


if __name__ == "__main__":
    main()
