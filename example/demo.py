"""`make demo`: the example Django project end to end.

1. Starts Valkey with the vtasks module on a free port (or uses VTASKS_URL).
2. Enqueues TASKS tasks through the Django Tasks API, from concurrent
   requests to an async view (Django's ASGI request path, in process).
3. Runs `manage.py runworker` and shows its progress live.
4. Prints a summary: enqueue rate, processing rate, delay from enqueue to
   start (p50/p99), failures and retries; checks every task's result.
5. Shuts everything down. Exits non-zero if any task is missing or wrong.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TASKS = int(os.environ.get("DEMO_TASKS", "20000"))
REQUESTS = 100
CONCURRENCY = int(os.environ.get("DEMO_CONCURRENCY", "200"))


def start_valkey() -> tuple[str, object | None]:
    url = os.environ.get("VTASKS_URL")
    if url:
        return url, None
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("VTASKS_MODULE", str(ROOT / "target" / "release" / "libvtasks.so"))
    from tests.conftest import ValkeyServer

    server = ValkeyServer()
    print(f"valkey-server with the vtasks module on port {server.port}")
    return server.url, server


def bar(done: int, total: int, width: int = 40) -> str:
    filled = int(width * done / max(total, 1))
    return "[" + "#" * filled + "." * (width - filled) + f"] {done:>6}/{total}"


async def enqueue_through_views() -> tuple[list[str], float]:
    from django.test import AsyncClient

    client = AsyncClient()
    per_request = TASKS // REQUESTS

    async def one(first: int) -> list[str]:
        response = await client.post(
            "/orders/", json.dumps({"first": first, "count": per_request}), content_type="application/json"
        )
        assert response.status_code == 200, response.content
        return json.loads(response.content)["ids"]

    started = time.perf_counter()
    batches = await asyncio.gather(*(one(i * per_request) for i in range(REQUESTS)))
    return [rid for ids in batches for rid in ids], time.perf_counter() - started


def main() -> int:
    url, server = start_valkey()
    os.environ["VTASKS_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_project.settings")
    sys.path.insert(0, str(HERE))
    import django

    django.setup()
    from django.tasks import task_backends

    backend = task_backends["default"]
    client = backend.client
    try:
        # Without the module (managed Valkey/Redis) the scripts engine runs.
        print(f"engine    {client.engine}")
        ids, enqueue_time = asyncio.run(enqueue_through_views())
        print(f"enqueued  {len(ids)} tasks from {REQUESTS} concurrent async requests "
              f"in {enqueue_time:.2f} s: {len(ids) / enqueue_time:,.0f} tasks/s")

        worker = subprocess.Popen(
            [sys.executable, "manage.py", "runworker", "--burst", "--concurrency", str(CONCURRENCY)],
            cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        started = time.perf_counter()
        live = sys.stdout.isatty()  # a redrawn bar on a terminal; a few lines in a log
        reported = 0
        while worker.poll() is None:
            acked = client.stats_sync("default")["acked"]
            if live:
                print("\rprocessing " + bar(acked, len(ids)), end="", flush=True)
            elif acked >= reported + len(ids) // 4:
                reported = acked
                print("processing " + bar(acked, len(ids)), flush=True)
            time.sleep(0.1)
        elapsed = time.perf_counter() - started
        stats = client.stats_sync("default")
        print(("\r" if live else "") + "processing " + bar(stats["acked"], len(ids)))
        output = worker.stdout.read() if worker.stdout else ""
        if worker.returncode != 0:
            print(output, file=sys.stderr)
            return 1
        print(f"processed {stats['acked']} tasks with one worker (concurrency {CONCURRENCY}) "
              f"in {elapsed:.2f} s: {stats['acked'] / elapsed:,.0f} tasks/s (including start-up)")

        results = asyncio.run(gather_results(backend, ids))
        delays = sorted(
            (r.started_at - r.enqueued_at).total_seconds() * 1000 for r in results if r.started_at and r.enqueued_at
        )
        wrong = [
            r.id for r in results
            if r.status != "SUCCESSFUL" or r.return_value != {"order": r.args[0], "total": r.args[1] * 2}
        ]
        print(f"delay from enqueue to start: p50 {statistics.median(delays):.0f} ms, "
              f"p99 {delays[int(len(delays) * 0.99) - 1]:.0f} ms")
        print(f"failures {stats['failed']}, retries {stats['retried']}, dead {stats['dead']}")
        if wrong or len(results) != TASKS // REQUESTS * REQUESTS:
            print(f"{len(wrong)} tasks missing or wrong, e.g. {wrong[:3]}", file=sys.stderr)
            return 1
        print(f"checked every result: all {len(results)} tasks succeeded with the right return value")
        return 0
    finally:
        if server is not None:
            server.close()  # type: ignore[attr-defined]
            print("valkey-server stopped")


async def gather_results(backend, ids: list[str]) -> list:
    results = []
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        results.extend(await asyncio.gather(*(backend.aget_result(rid) for rid in chunk)))
    return results


if __name__ == "__main__":
    sys.exit(main())
