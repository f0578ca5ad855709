"""A worker killed with SIGKILL under the default settings (a 30 s lease,
one attempt allowed to fail, as Django's backend has it): no task fails,
the tasks it was running are finished by its replacement within seconds
(the module cuts a closed connection's leases to a 2 s grace; the scripts
engine's worker leases are at most 5 s), and exactly those tasks, the ones
running at the kill, run twice."""

from __future__ import annotations

import random
import time

import vtasks
from vtasks.payloads import encode_call

from tests.chaos import tasks as chaos_tasks  # noqa: F401  (registers the tasks)
from tests.chaos.harness import Ledger, WorkerProcess, median, scale, wait_until

DEFAULT_LEASE = 30.0
GOAL = 10.0  # seconds from the kill until the replacement finished every held task


def test_a_killed_worker_s_tasks_are_finished_by_its_replacement_within_seconds(valkey, events, report):
    tasks, kills = scale(5_000, 600), scale(8, 2)
    client = vtasks.Client(valkey.url)
    # Tasks long enough that a kill always finds some running.
    rng = random.Random(3)
    durations = [rng.uniform(0.05, 0.5) for _ in range(tasks)]
    # max_attempts 1: a lost lease must not count as a failed attempt.
    items = [(f"t{n}", encode_call("chaos.work", (n, seconds), {}), 0, None, None, 1)
             for n, seconds in enumerate(durations)]
    for start in range(0, tasks, 1000):
        client.native.enqueue(None, "default", items[start:start + 1000])
    ledger = Ledger(events)
    worker = WorkerProcess(valkey.url, events, lease=DEFAULT_LEASE, concurrency=20)
    held_at_kill: dict[int, set[int]] = {}  # killed pid -> tasks it was running
    recovered: list[float] = []  # per kill: until its last held task was done elsewhere
    started = time.monotonic()
    for k in range(kills):
        wait_until(lambda k=k: ledger.completed() >= tasks * (k + 1) // (kills + 1), 300, "progress")
        # Kill while long tasks run, so that some are held.
        wait_until(lambda pid=worker.pid: running_on(ledger, pid), 60, "tasks running on the victim")
        time.sleep(rng.uniform(0, 0.1))
        victim = worker
        killed_at = victim.kill()
        worker = WorkerProcess(valkey.url, events, lease=DEFAULT_LEASE, concurrency=20)
        held = running_on(ledger, victim.pid)
        held_at_kill[victim.pid] = held

        def finished_elsewhere(held: set[int] = held, pid: int = victim.pid) -> bool:
            done = {r.n for r in ledger.runs() if r.kind == "done" and r.pid != pid}
            return held <= done

        wait_until(finished_elsewhere, 120, "the held tasks to be finished elsewhere")
        last = max(r.at for r in ledger.runs() if r.kind == "done" and r.n in held and r.pid != victim.pid)
        recovered.append(last - killed_at)
    wait_until(lambda: ledger.completed() == tasks, 300, "every task to complete")
    elapsed = time.monotonic() - started
    worker.stop()

    runs = ledger.runs()
    starts: dict[int, int] = {}
    for r in runs:
        if r.kind == "start":
            starts[r.n] = starts.get(r.n, 0) + 1
    ran_twice = {n for n, count in starts.items() if count > 1}
    held_any = set().union(*held_at_kill.values())
    # Every task running at a kill ran again. Besides those, a task may run
    # twice only if a killed worker had finished it and died before its
    # acknowledgement left (acknowledgements are sent in batches).
    finished_unacked = {r.n for r in runs if r.kind == "done" and r.pid in held_at_kill} & ran_twice
    assert held_any <= ran_twice, f"running at a kill but not run again: {sorted(held_any - ran_twice)[:20]}"
    assert ran_twice <= held_any | finished_unacked, (
        f"ran twice but neither running at a kill nor finished by a killed worker: "
        f"{sorted(ran_twice - held_any - finished_unacked)[:20]}"
    )
    assert all(count <= 2 for count in starts.values()), "nothing ran three times"
    done_counts = ledger.done_counts()
    assert sorted(done_counts) == list(range(tasks)), "each finished"
    # Finished twice: only a task a killed worker finished without its
    # acknowledgement leaving, which then ran again.
    finished_twice = {n for n, count in done_counts.items() if count > 1}
    assert finished_twice <= finished_unacked, f"finished twice: {sorted(finished_twice - finished_unacked)[:20]}"
    stats = client.stats_sync("default")
    assert (stats["ready"], stats["leased"], stats["dead"], stats["failed"]) == (0, 0, 0, 0), stats
    assert stats["expired"] >= len(held_any), "their leases were lost and counted as lost"
    for n in sorted(held_any)[:50]:
        state = client.get_sync("default", f"t{n}")
        assert state is not None and state.status == "done"
        # One lost lease per killed worker that held it (started or prefetched).
        assert state.failed_attempts == 0 and state.lost_leases >= 1, state
    assert max(recovered) < GOAL, f"held tasks finished {recovered} s after the kills"
    report.append({
        "fault": "worker SIGKILL under the default settings (30 s lease, max_attempts 1), replacement started",
        "runs": f"{kills} kills",
        "tasks": tasks,
        "lost": 0,
        "duplicated": len(ran_twice),
        "recovery": f"every task the killed worker was running finished by its replacement "
                    f"{median(recovered):.1f} s (median), {max(recovered):.1f} s (max) after the kill",
        "notes": f"{elapsed:.0f} s run; the {len(held_any)} tasks running at the kills ran twice, and "
                 f"{len(ran_twice - held_any)} a killed worker had finished without its acknowledgement leaving; "
                 f"no task failed ({stats['leases_cut']} leases cut at the disconnect)",
    })


def running_on(ledger: Ledger, pid: int) -> set[int]:
    """Tasks the worker ``pid`` started and has not finished."""
    runs = ledger.runs()
    return ({r.n for r in runs if r.pid == pid and r.kind == "start"}
            - {r.n for r in runs if r.pid == pid and r.kind == "done"})
