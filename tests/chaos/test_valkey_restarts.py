"""Valkey killed (SIGKILL) and started again on its AOF while a producer
enqueues and workers run: with ``appendfsync always`` no acknowledged
enqueue is lost; with ``everysec`` the loss is measured."""

from __future__ import annotations

import random
import time

import pytest
import vtasks

from tests.chaos import tasks as chaos_tasks  # noqa: F401  (registers the tasks)
from tests.chaos.harness import FULL, Ledger, WorkerProcess, duplicates, median, scale, wait_until
from tests.chaos.producer import Producer
from tests.conftest import ValkeyServer


@pytest.mark.parametrize("fsync", ["always", "everysec"] if FULL else ["always"])
def test_valkey_killed_and_restarted_on_its_aof(fsync, events, report):
    tasks, kills = scale(20_000, 3_000), scale(5, 2)
    server = ValkeyServer(["--appendonly", "yes", "--appendfsync", fsync])
    try:
        client = vtasks.Client(server.url, connect_timeout=1.0, response_timeout=5.0)
        ledger = Ledger(events)
        workers = [WorkerProcess(server.url, events, lease=2.0, concurrency=50) for _ in range(2)]
        producer = Producer(client, tasks)
        producer.start()
        rng = random.Random(5)
        recoveries, downtimes = [], []
        for k in range(kills):
            wait_until(lambda k=k: len(producer.acked) >= tasks * (k + 1) // (kills + 1), 300, "enqueues")
            time.sleep(rng.uniform(0, 0.2))
            killed_at = time.time()
            server.kill()
            server.start()
            downtimes.append(time.time() - killed_at)
            wait_until(lambda t=killed_at: producer.first_ack_after(t + downtimes[-1]) is not None, 60,
                       "enqueues again")
            # From the kill to the first enqueue acknowledged by the new process.
            back_at = killed_at + downtimes[-1]
            recoveries.append(producer.first_ack_after(back_at) - killed_at)  # type: ignore[operator]
        producer.join(300)
        assert not producer.is_alive()

        def settled() -> bool:
            stats = client.stats_sync("default")
            return stats["ready"] + stats["leased"] + stats["delayed"] == 0

        wait_until(settled, 120, "the queue to drain")
        for worker in workers:
            worker.stop()
        done = ledger.done_counts()
        lost = sorted(n for n in producer.acked if n not in done)
        if fsync == "always":
            assert lost == [], f"acknowledged enqueues lost with appendfsync always: {lost[:20]}"
        twice = duplicates(ledger)
        assert len(producer.acked) == tasks
        report.append({
            "fault": f"Valkey SIGKILL + restart, AOF appendfsync {fsync}",
            "runs": f"{kills} kills",
            "tasks": tasks,
            "lost": len(lost),
            "duplicated": len(twice),
            "recovery": f"first enqueue after kill: median {median(recoveries):.2f} s, "
                        f"max {max(recoveries):.2f} s (restart {median(downtimes):.2f} s)",
            "notes": f"{len(producer.errors)} enqueue calls failed and were repeated",
        })
    finally:
        server.close()
