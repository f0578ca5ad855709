"""A worker process of the fault suite:

    python -m tests.chaos.worker URL [--lease S] [--concurrency N] [--keep-results S]

Prints ``ready`` once started and, on SIGTERM, its counters as JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging

import vtasks

from tests.chaos import tasks  # noqa: F401  (registers the tasks)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--keep-results", type=float, default=None)
    parser.add_argument("--engine", default="auto")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    client = vtasks.Client(args.url, engine=args.engine, connect_timeout=1.0, response_timeout=5.0)
    worker = vtasks.Worker(
        client, concurrency=args.concurrency, lease=args.lease, block=1.0,
        keep_results=args.keep_results, retry_backoff=0.05,
    )
    print("ready", flush=True)
    asyncio.run(worker.run())
    print(json.dumps({"succeeded": worker.succeeded, "failed": worker.failed,
                      "dead_lettered": worker.dead_lettered, **worker.stats}), flush=True)


if __name__ == "__main__":
    main()
