"""Network faults between one worker and Valkey, through a proxy: the
connection cut for longer than a lease, a partition that holds every byte
for longer than a lease and then heals, and a latency spike. A second
worker has a clean path. The cut-off worker's leases expire and go to the
other worker; when it comes back, its acknowledgements for those tasks are
refused (fencing: the lease token changed), so the result stored is the new
owner's. Nothing is lost. (Redelivered tasks rejoin the back of the queue,
so their second run waits for the backlog ahead of them.)"""

from __future__ import annotations

import time

import vtasks

from tests.chaos import tasks as chaos_tasks  # noqa: F401  (registers the tasks)
from tests.chaos.harness import Ledger, WorkerProcess, duplicates, scale, wait_until
from tests.chaos.proxy import ChaosProxy

LEASE = 1.5
OUTAGE = 3.0  # twice the lease


def test_network_cuts_partitions_and_latency_spikes(valkey, events, report):
    tasks = scale(3_000, 1_000)
    client = vtasks.Client(valkey.url)
    ids: list[str] = []
    for start in range(0, tasks, 500):
        calls = [((n, 0.3), {}) for n in range(start, min(start + 500, tasks))]
        ids += client.enqueue_many_sync("chaos.work", calls)
    ledger = Ledger(events)
    proxy = ChaosProxy(valkey.port).start()
    try:
        behind = WorkerProcess(f"valkey://127.0.0.1:{proxy.port}", events, lease=LEASE, concurrency=10)
        direct = WorkerProcess(valkey.url, events, lease=LEASE, concurrency=10)
        faults: list[tuple[str, float, float]] = []  # (fault, start, end)

        def inject(name: str, once_done: float, begin, end, seconds: float) -> None:  # type: ignore[no-untyped-def]
            """Once ``once_done`` of the tasks are done: ``begin()``, wait, ``end()``."""
            wait_until(lambda: ledger.completed() >= tasks * once_done, 300, f"{once_done:.0%} done")
            at = time.time()
            begin()
            time.sleep(seconds)
            end()
            faults.append((name, at, time.time()))

        inject("cut", 0.2, proxy.cut, proxy.heal, OUTAGE)
        inject("partition", 0.45, proxy.pause, proxy.resume, OUTAGE)
        # 400 ms round trips.
        inject("spike", 0.7, lambda: setattr(proxy, "delay", 0.2), lambda: setattr(proxy, "delay", 0.0), 4)

        wait_until(lambda: ledger.completed() == tasks, 300, "every task to complete")
        behind_stats, _ = behind.stop(), direct.stop()
    finally:
        proxy.stop()

    runs = ledger.runs()
    assert sorted(ledger.done_counts()) == list(range(tasks)), "every task completed"
    # Stored results agree with the last lease: a stale acknowledgement never
    # overwrote the new owner's.
    mismatched = []
    final_attempt: dict[int, int] = {}  # task number -> the attempt whose result was stored
    for task_id in ids:
        state = client.get_sync("default", task_id)
        assert state is not None and state.status == "done", (task_id, state)
        final_attempt[state.result["n"]] = state.attempts
        if state.result["attempt"] != state.attempts:
            mismatched.append((task_id, state.result, state.attempts))
    assert mismatched == [], f"results from stale leases: {mismatched[:10]}"
    assert behind_stats.get("stale", 0) + behind_stats.get("lost_leases", 0) > 0, behind_stats
    for fault, _, end in faults:
        came_back = [r for r in runs if r.pid == behind.pid and r.kind == "done" and r.at > end]
        assert came_back, f"the worker behind the proxy ran nothing after the {fault}"
    stats = client.stats_sync("default")
    assert (stats["ready"], stats["leased"], stats["dead"]) == (0, 0, 0), stats
    recovery = []
    for fault, start, end in faults:
        held = {r.n for r in runs if r.pid == behind.pid and r.kind == "start" and r.at < start} - {
            r.n for r in runs if r.pid == behind.pid and r.kind == "done" and r.at < start}
        # When the run whose result was stored started: redelivered tasks
        # join the back of the queue, so finishing also waits for the backlog.
        accepted = {r.n: r.at for r in runs if r.kind == "start" and r.attempt == final_attempt[r.n]}
        finished = [accepted[n] for n in held]
        redelivered = [at for at in finished if at >= start]
        back = min(r.at for r in runs if r.pid == behind.pid and r.kind == "start" and r.at > end) - end
        recovery.append(
            f"{fault}: worker fetching again {back:.1f} s after, "
            + (f"held tasks restarted within {max(redelivered) - start:.0f} s"
               if redelivered else "no task redelivered")
        )
    report.append({
        "fault": f"network: cut {OUTAGE:g} s, partition {OUTAGE:g} s, +400 ms RTT for 4 s (one of 2 workers)",
        "runs": 1,
        "tasks": tasks,
        "lost": 0,
        "duplicated": len(duplicates(ledger)),
        "recovery": "; ".join(recovery),
        "notes": f"lease {LEASE:g} s; stale acknowledgements refused: {behind_stats.get('stale', 0)}, "
                 f"leases lost: {behind_stats.get('lost_leases', 0)}; every stored result from the last lease",
    })
