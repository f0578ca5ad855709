"""A Valkey at its memory limit, measured: the figures of the "Memory
limits" section of docs/RELIABILITY.md.

Run once per target (``make memory-limits`` runs all three):

    VTASKS_TARGET=module|scripts-valkey|scripts-redis .venv/bin/python scripts/memory_limits.py

1. ``noeviction`` (what vtasks needs), 8 MB: 2 KB tasks are enqueued one per
   call until the server refuses; then a worker with default settings
   (burst, to end) runs the backlog.
2. ``allkeys-lru``, 8 MB, as when one Valkey also serves a cache: 5,000 such
   tasks are enqueued (every one acknowledged), then the same worker runs
   what is left.

Prints one Markdown row per scenario.
"""

from __future__ import annotations

import asyncio
import collections
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import vtasks  # noqa: E402

from tests import sample_tasks  # noqa: E402
from tests.chaos.harness import command  # noqa: E402
from tests.conftest import TARGET, ValkeyServer  # noqa: E402

PAD = "x" * 2000


@vtasks.task(name="memory_limits.padded")
def padded(n: int, pad: str) -> int:
    sample_tasks.record("padded", n)
    return n


def runs(path: Path) -> collections.Counter[int]:
    counts: collections.Counter[int] = collections.Counter()
    for line in path.read_text().splitlines():
        kind, value = line.split(" ", 1)
        if kind == "padded":
            counts[int(value)] += 1
    return counts


def info(port: int, field: str) -> str:
    text = str(command(port, "INFO", "all"))
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    return "?"


def drain(client: vtasks.Client) -> tuple[vtasks.Worker, float]:
    worker = vtasks.Worker(client, handle_signals=False, burst=True)
    started = time.monotonic()
    asyncio.run(worker.run())
    return worker, time.monotonic() - started


def full_server(ledger: Path) -> str:
    server = ValkeyServer(["--maxmemory", "8mb"])
    try:
        client = vtasks.Client(server.url)
        accepted = 0
        refusal = ""
        while True:
            try:
                client.enqueue_sync(padded, accepted, PAD)
            except vtasks.ServerFull as exc:
                refusal = type(exc).__name__
                break
            accepted += 1
        used = info(server.port, "used_memory_human")
        worker, seconds = drain(client)
        ran = sum(runs(ledger).values())
        stats = client.stats_sync("default")
        return (
            f"| {TARGET} | noeviction, 8 MB | {accepted:,} accepted, then `{refusal}` "
            f"(used memory {used}) | {ran:,} ran, each once: {ran == accepted} | "
            f"{seconds:.1f} s, {worker.stats['server_full']} refusals met by the worker | "
            f"ready {stats['ready']}, leased {stats['leased']}, vanished {stats['vanished']} |"
        )
    finally:
        server.close()


def evicting_server(ledger: Path) -> str:
    server = ValkeyServer(["--maxmemory", "8mb", "--maxmemory-policy", "allkeys-lru"])
    try:
        client = vtasks.Client(server.url)
        warning = client.eviction_warning_sync()
        for n in range(5000):
            client.enqueue_sync(padded, n, PAD)
        evicted = info(server.port, "evicted_keys")
        worker, seconds = drain(client)
        counts = runs(ledger)
        ran = sum(counts.values())
        twice = sum(1 for c in counts.values() if c > 1)
        try:
            stats = client.stats_sync("default")
            left = f"enqueued counter {stats['enqueued']:,}, vanished {stats['vanished']:,}"
        except vtasks.NoSuchQueue:
            left = "queue hash evicted"
        return (
            f"| {TARGET} | allkeys-lru, 8 MB | 5,000 accepted, {evicted} keys evicted; "
            f"warned on connect: {warning is not None} | {ran:,} ran ({twice} twice), "
            f"{5000 - ran:,} lost | {seconds:.1f} s | {left} |"
        )
    finally:
        server.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for scenario in (full_server, evicting_server):
            ledger = Path(tmp) / f"{scenario.__name__}.txt"
            ledger.touch()
            os.environ["VTASKS_TEST_RUNS"] = str(ledger)
            print(scenario(ledger), flush=True)


if __name__ == "__main__":
    main()
