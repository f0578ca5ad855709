"""Failover to a replica: the primary is killed while a producer enqueues
and workers run; the replica is promoted (``REPLICAOF NO ONE``) and the
address clients use moves to it. Without ``wait_replicas`` the enqueues the
replica had not received are lost (measured); with ``wait_replicas=1`` an
enqueue is acknowledged only once a replica holds it, and none is lost.

The replica reads from the primary through a proxy adding 5 ms each way,
so replication lags as it does between machines."""

from __future__ import annotations

import time

import pytest
import vtasks

from tests.chaos import tasks as chaos_tasks  # noqa: F401  (registers the tasks)
from tests.chaos.harness import (
    Ledger,
    WorkerProcess,
    command,
    duplicates,
    info,
    median,
    scale,
    wait_drained,
    wait_until,
)
from tests.chaos.producer import Producer
from tests.chaos.proxy import ChaosProxy
from tests.conftest import ValkeyServer

REPLICATION_DELAY = 0.005


# A primary syncs a new replica at once rather than waiting 5 s for others.
NO_SYNC_DELAY = ["--repl-diskless-sync-delay", "0"]


def replica_of(port: int) -> ValkeyServer:
    replica = ValkeyServer(["--replicaof", "127.0.0.1", str(port), *NO_SYNC_DELAY])
    wait_until(lambda: info(replica.port, "replication").get("master_link_status") == "up", 30, "replica link")
    return replica


@pytest.mark.parametrize("wait_replicas", [0, 1])
def test_failover_to_a_replica(wait_replicas, events, report):
    tasks, runs = scale(10_000, 1_500), scale(3, 1)
    lost_per_run, twice_per_run, recoveries, refused = [], [], [], 0
    for _ in range(runs):
        events.write_text("")
        primary = ValkeyServer(NO_SYNC_DELAY)
        link = ChaosProxy(primary.port).start()
        link.delay = REPLICATION_DELAY
        replica = replica_of(link.port)
        front = ChaosProxy(primary.port).start()  # the address clients know
        url = f"valkey://127.0.0.1:{front.port}"
        servers = [primary, replica]
        try:
            client = vtasks.Client(url, connect_timeout=1.0, response_timeout=5.0,
                                   wait_replicas=wait_replicas, wait_timeout=1.0)
            ledger = Ledger(events)
            workers = [WorkerProcess(url, events, lease=2.0, concurrency=50) for _ in range(2)]
            # Tasks of 50 ms: the workers (2 × 50 slots) fall behind the
            # producer, so a backlog waits in the queue, as in production.
            producer = Producer(client, tasks, seconds=0.05, batch=20, pace=0.005)
            producer.start()
            wait_until(lambda p=producer: len(p.acked) >= tasks // 2, 120, "half the enqueues")
            # The worst moment: just after the primary acknowledged a batch.
            acked = len(producer.acked)
            wait_until(lambda p=producer, a=acked: len(p.acked) > a, 10, "an acknowledgement", interval=0.0002)
            killed_at = time.time()
            # The primary's machine goes: what was on the wire to the replica
            # goes with it.
            link.cut()
            primary.kill()
            command(replica.port, "REPLICAOF", "NO", "ONE")
            front.switch(replica.port)
            # A new replica for the promoted primary (WAIT needs one).
            servers.append(replica_of(replica.port))
            wait_until(lambda p=producer, t=killed_at: p.first_ack_after(t) is not None, 60,
                       "enqueues on the new primary")
            recoveries.append(producer.first_ack_after(killed_at) - killed_at)  # type: ignore[operator]
            producer.join(300)
            assert not producer.is_alive() and len(producer.acked) == tasks
            wait_drained(client)
            for worker in workers:
                worker.stop()
            done = ledger.done_counts()
            lost = [n for n in producer.acked if n not in done]
            lost_per_run.append(len(lost))
            twice_per_run.append(len(duplicates(ledger)))
            refused += sum("NotReplicated" in e for _, e in producer.errors)
            if wait_replicas:
                assert lost == [], f"acknowledged enqueues lost although a replica confirmed them: {lost[:20]}"
        finally:
            front.stop()
            link.stop()
            for server in servers:
                server.close()
    mode = "with `wait_replicas=1` (WAIT)" if wait_replicas else "without WAIT"
    report.append({
        "fault": f"primary SIGKILL, replica promoted, {mode}",
        "runs": runs,
        "tasks": tasks * runs,
        "lost": sum(lost_per_run),
        "duplicated": sum(twice_per_run),
        "recovery": f"first enqueue on the new primary: median {median(recoveries):.2f} s",
        "notes": f"replication lag 2 × {REPLICATION_DELAY * 1000:g} ms; lost per run {lost_per_run}"
                 + (f"; {refused} enqueues refused as NotReplicated until a replica was back" if wait_replicas else ""),
    })
