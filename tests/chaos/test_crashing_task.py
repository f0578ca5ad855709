"""A task that takes its worker process down (``os._exit``) every time: a
supervisor (as systemd or Kubernetes would) starts a new worker each time;
the task's lease is lost each time, which counts against its lost-lease
budget (3) and not as a failed attempt (it allows one), and once the budget
is used it is dead-lettered with a reason naming the crashes, not handed
out forever. The other tasks all complete."""

from __future__ import annotations

import time

import vtasks

from tests.chaos import tasks as chaos_tasks  # noqa: F401  (registers the tasks)
from tests.chaos.harness import Ledger, WorkerProcess, duplicates, scale, wait_until

LEASE = 1.0


def test_a_task_that_kills_its_worker_ends_dead_lettered(valkey, events, report):
    others, rounds = scale(2_000, 200), scale(3, 1)
    client = vtasks.Client(valkey.url)
    ledger = Ledger(events)
    crash_ids, other_ids, restarts, to_dead = [], [], 0, []
    for round_ in range(rounds):
        enqueued_at = time.time()
        crash_ids.append(client.enqueue_sync(chaos_tasks.crash, round_))
        calls = [((n, 0.01), {}) for n in range(round_ * others, (round_ + 1) * others)]
        other_ids += client.enqueue_many_sync(chaos_tasks.work, calls)
        worker = WorkerProcess(valkey.url, events, lease=LEASE, concurrency=20)

        def crash_is_dead() -> bool:
            nonlocal worker, restarts
            if not worker.alive():
                restarts += 1  # the supervisor's job
                worker = WorkerProcess(valkey.url, events, lease=LEASE, concurrency=20)
            state = client.get_sync("default", crash_ids[-1])
            return state is not None and state.status == "dead"

        wait_until(crash_is_dead, 120, "the crashing task to be dead-lettered")
        to_dead.append(time.time() - enqueued_at)
        wait_until(lambda r=round_: ledger.completed() == (r + 1) * others, 120, "the other tasks")
        worker.stop()

    for task_id in crash_ids:
        state = client.get_sync("default", task_id)
        assert state is not None and state.status == "dead"
        assert state.attempts == 3, "its three attempts, no more"
        assert (state.failed_attempts, state.lost_leases, state.max_lost_leases) == (0, 3, 3), state
        assert state.error["message"].startswith(
            "lease lost 3 times, its budget: the worker running it stopped (crash, kill, or lost connection)"
        ), state.error
    starts = [r for r in ledger.runs() if r.kind == "start" and r.attempt == 0]
    assert len(starts) == 3 * rounds, "the crashing task started once per attempt"
    assert restarts == 3 * rounds, "each attempt took a worker down"
    for task_id in other_ids:
        state = client.get_sync("default", task_id)
        assert state is not None and state.status == "done", (task_id, state)
    stats = client.stats_sync("default")
    assert (stats["ready"], stats["leased"], stats["dead"]) == (0, 0, rounds), stats
    report.append({
        "fault": "a task that kills its worker process (`os._exit`), max_attempts 1, lost-lease budget 3",
        "runs": rounds,
        "tasks": rounds * (others + 1),
        "lost": 0,
        "duplicated": len(duplicates(ledger)),
        "recovery": f"dead-lettered {min(to_dead):.1f}–{max(to_dead):.1f} s after enqueue (lease {LEASE:g} s)",
        "notes": f"{restarts} worker restarts; other tasks held by the crashed workers ran again",
    })
