"""Workers killed with SIGKILL at random moments during a run of short and
long tasks: every task completes, and only tasks a killed worker held run
twice."""

from __future__ import annotations

import random
import time

import vtasks

from tests.chaos import tasks as chaos_tasks  # noqa: F401  (registers the tasks)
from tests.chaos.harness import Ledger, WorkerProcess, duplicates, median, mixed_durations, scale, wait_until

LEASE = 2.0


def test_sigkilled_workers_lose_nothing_and_repeat_only_what_they_held(valkey, events, report):
    tasks, kills = scale(20_000, 2_000), scale(20, 3)
    client = vtasks.Client(valkey.url)
    durations = mixed_durations(tasks, seed=7)
    calls = [((n, seconds), {}) for n, seconds in enumerate(durations)]
    for start in range(0, tasks, 1000):
        client.enqueue_many_sync("chaos.work", calls[start:start + 1000])
    ledger = Ledger(events)
    workers = [WorkerProcess(valkey.url, events, lease=LEASE, concurrency=50) for _ in range(2)]
    rng = random.Random(11)
    killed: dict[int, float] = {}  # pid -> when
    started = time.monotonic()
    for k in range(kills):
        # Spread the kills over the run: the k-th once (k+1)/(kills+1) of the tasks are done.
        wait_until(lambda k=k: ledger.completed() >= tasks * (k + 1) // (kills + 1), 300, "progress")
        time.sleep(rng.uniform(0, 0.3))
        index = rng.randrange(len(workers))
        victim = workers[index]
        killed[victim.pid] = victim.kill()
        workers[index] = WorkerProcess(valkey.url, events, lease=LEASE, concurrency=50)
    wait_until(lambda: ledger.completed() == tasks, 300, "every task to complete")
    elapsed = time.monotonic() - started
    for worker in workers:
        worker.stop()

    runs = ledger.runs()
    done = ledger.done_counts()
    assert sorted(done) == list(range(tasks)), "every task completed"
    twice = duplicates(ledger)
    for n, finishing in twice.items():
        # Every finish but the last was by a worker killed before it could
        # acknowledge; a live worker's acknowledged task never runs again.
        assert all(r.pid in killed for r in finishing[:-1]), (n, finishing)
    # Recovery, per kill: until the first task the killed worker held
    # started again elsewhere (its lease expired), and until the last did
    # (redelivered tasks keep their place, ahead of the tasks enqueued after them).
    first_back, all_back = [], []
    for pid, at in killed.items():
        held = {r.n for r in runs if r.pid == pid and r.kind == "start"} - {
            r.n for r in runs if r.pid == pid and r.kind == "done"}
        restarted = [r.at for r in runs if r.kind == "start" and r.n in held and r.pid != pid and r.at > at]
        if restarted:
            first_back.append(min(restarted) - at)
            all_back.append(max(restarted) - at)
    stats = client.stats_sync("default")
    assert (stats["ready"], stats["leased"], stats["delayed"], stats["dead"]) == (0, 0, 0, 0), stats
    assert stats["expired"] >= 1, "the killed workers' leases expired and were handed out again"
    report.append({
        "fault": "worker SIGKILL at random moments (2 workers × 50 slots)",
        "runs": f"{kills} kills",
        "tasks": tasks,
        "lost": 0,
        "duplicated": len(twice),
        "recovery": f"held tasks start again after {median(first_back):.1f} s "
                    f"(median; a lease of {LEASE:g} s renewed every third of it), "
                    f"all of them within {median(all_back):.1f} s (median), {max(all_back, default=0):.1f} s (max)",
        "notes": f"{elapsed:.0f} s run; duplicates only among tasks held by killed workers",
    })
