"""The scheduler-trace analysis of `benchmarks.worker_processes`, on
event lines in the form `perf script` prints them."""

from __future__ import annotations

import pytest

from benchmarks.sched_trace import analyse


def switch(core: int, at: float, prev: int, state: str, following: int) -> str:
    return (f"x {prev} [{core:03d}] {at:.6f}: sched:sched_switch: prev_comm=x prev_pid={prev} prev_prio=120 "
            f"prev_state={state} ==> next_comm=y next_pid={following} next_prio=120")


def waking(core: int, at: float, thread: int, target: int) -> str:
    return f"x 9 [{core:03d}] {at:.6f}: sched:sched_waking: comm=t pid={thread} prio=120 target_cpu={target:03d}"


def test_a_thread_woken_onto_an_idle_core_waits_for_it_to_come_back() -> None:
    trace = analyse([
        switch(0, 1.0, 1, "S", 0),  # core 0 goes idle
        switch(1, 1.0, 3, "S", 2),  # core 1 runs thread 2
        waking(1, 1.0001, 1, 0),  # thread 1 woken onto idle core 0 ...
        switch(0, 1.0003, 0, "R", 1),  # ... which runs it 200 µs later
        switch(0, 1.001, 1, "S", 0),
        switch(1, 1.002, 2, "S", 0),  # both idle, nothing ready
    ])
    assert trace is not None
    assert trace.wake_latency_us == [pytest.approx(200, abs=1)]
    assert trace.seconds == pytest.approx(0.002)
    # Idle: core 0 for 0.3 ms + 1 ms, core 1 for none of it.
    assert trace.idle_cores == pytest.approx(0.0013 / 0.002)
    assert trace.idle_while_ready_here == pytest.approx(0.0002 / 0.002)
    assert trace.idle_while_ready_elsewhere == 0


def test_a_thread_queued_on_a_busy_core_while_the_other_idles_counts_as_elsewhere() -> None:
    trace = analyse([
        switch(0, 1.0, 1, "S", 0),  # core 0 idle
        switch(1, 1.0, 3, "S", 2),  # core 1 runs 2
        switch(1, 1.001, 2, "R", 4),  # 2 preempted by 4 on core 1: 2 waits there
        waking(1, 1.0015, 5, 0),  # 5 woken onto idle core 0
        switch(0, 1.0016, 0, "R", 5),
        switch(1, 1.003, 4, "S", 2),  # 2 runs again
    ])
    assert trace is not None
    assert trace.idle_while_ready_elsewhere == pytest.approx(0.0005 / 0.003)
    assert trace.idle_while_ready_here == pytest.approx(0.0001 / 0.003)
    assert trace.wakeups_onto_idle == pytest.approx(1 / 0.003)


def test_a_trace_without_a_wakeup_onto_an_idle_core_is_not_analysed() -> None:
    assert analyse([switch(0, 1.0, 1, "S", 2), switch(1, 1.0, 3, "S", 4), "garbage"]) is None
