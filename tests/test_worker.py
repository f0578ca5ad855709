"""vtasks.Worker against a real valkey-server with the module."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import vtasks
from vtasks import limits
from vtasks.worker import _TaskThreads, _ThreadMeter

from tests import sample_tasks
from tests.conftest import ROOT


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "runs.txt"
    path.touch()
    monkeypatch.setenv("VTASKS_TEST_RUNS", str(path))
    return path


def run_counts(path: Path, kind: str) -> collections.Counter[int]:
    counts: collections.Counter[int] = collections.Counter()
    for line in path.read_text().splitlines():
        k, value = line.split(" ", 1)
        if k == kind:
            counts[int(value)] += 1
    return counts


def burst(client: vtasks.Client, **options) -> vtasks.Worker:
    worker = vtasks.Worker(client, burst=True, handle_signals=False, **options)
    asyncio.run(worker.run())
    return worker


def test_sync_and_async_tasks_round_trip_with_results(valkey, runs):
    client = vtasks.Client(valkey.url)
    sync_id = client.enqueue_sync(sample_tasks.add, 2, 3)
    async_id = client.enqueue_sync(sample_tasks.async_add, 10, 20)
    worker = burst(client)
    assert (worker.succeeded, worker.failed) == (2, 0)
    sync_state = client.get_sync("default", sync_id)
    async_state = client.get_sync("default", async_id)
    assert (sync_state.status, sync_state.result) == ("done", 5)
    assert (async_state.status, async_state.result) == ("done", 30)
    assert sync_state.workers == [worker.consumer]
    assert sync_state.started_at <= sync_state.finished_at
    assert run_counts(runs, "add") == {2: 1}
    assert run_counts(runs, "async_add") == {10: 1}


def test_ten_thousand_tasks_each_run_exactly_once(valkey, runs):
    client = vtasks.Client(valkey.url)

    async def enqueue_all():
        for start in range(0, 10_000, 1000):
            await client.enqueue_many(sample_tasks.mark, [((n,), {}) for n in range(start, start + 1000)])

    asyncio.run(enqueue_all())
    worker = burst(client, concurrency=50)
    counts = run_counts(runs, "mark")
    assert sorted(counts) == list(range(10_000)), "every task ran"
    assert set(counts.values()) == {1}, "no task ran twice"
    assert worker.succeeded == 10_000
    stats = client.stats_sync("default")
    assert (stats["acked"], stats["ready"], stats["leased"]) == (10_000, 0, 0)
    assert worker.stats["round_trips"] < 2_000, worker.stats


def test_failures_retry_with_backoff_then_dead_letter_with_traceback(valkey, runs):
    client = vtasks.Client(valkey.url)
    task_id = client.enqueue_sync(sample_tasks.boom, 7)
    worker = vtasks.Worker(client, handle_signals=False, retry_backoff=0.05, block=0.2)

    async def run_until_dead():
        runner = asyncio.create_task(worker.run())
        deadline = time.monotonic() + 20
        while (await client.get("default", task_id)).status != "dead":
            assert time.monotonic() < deadline, "never dead-lettered"
            await asyncio.sleep(0.05)
        await worker.close()
        await runner

    asyncio.run(run_until_dead())
    assert run_counts(runs, "boom") == {7: 3}, "three attempts, as max_attempts says"
    state = client.get_sync("default", task_id)
    assert state.attempts == 3
    assert state.error["exception_class"] == "builtins.ValueError"
    assert state.error["message"] == "boom 7"
    assert "raise ValueError" in state.error["traceback"]
    assert state.error["attempt"] == 3
    earlier = state.error["previous"]
    assert [(e["attempt"], e["exception_class"], e["message"]) for e in earlier] == [
        (1, "builtins.ValueError", "boom 7"), (2, "builtins.ValueError", "boom 7"),
    ], "every attempt's error is kept"
    assert all("raise ValueError" in e["traceback"] for e in earlier)
    assert worker.failed == 3
    dead = client.native.dead_letters(None, "default", 0, 10)
    assert [d[0] for d in dead] == [task_id]


def test_retry_delays_double_with_jitter_up_to_the_cap(valkey, runs, monkeypatch):
    """docs/PROTOCOL.md: the delay before attempt n + 1 is
    min(backoff * 2^(n-1), max_backoff) * uniform(0.5, 1.5). The delays the
    worker asks for are read where it hands them to the native layer, and
    the server's schedule (run_at after each failed attempt) is checked
    against them."""
    asked: list[float | None] = []
    real = vtasks.worker._native.NativeWorker

    class Recording:
        def __init__(self, *args: object, **kwargs: object) -> None:
            self._real = real(*args, **kwargs)

        def __getattr__(self, name: str) -> object:
            return getattr(self._real, name)

        def failed(self, queue: str, id: str, token: int, error: str, retry_in: float | None = None) -> None:
            asked.append(retry_in)
            self._real.failed(queue, id, token, error, retry_in)

    monkeypatch.setattr(vtasks.worker._native, "NativeWorker", Recording)
    backoff, cap, attempts = 0.05, 0.3, 6
    client = vtasks.Client(valkey.url)
    task_id = client.enqueue_call_sync(sample_tasks.boom, (1,), max_attempts=attempts)
    worker = vtasks.Worker(client, handle_signals=False, retry_backoff=backoff, max_backoff=cap, block=0.1)
    scheduled: dict[int, float] = {}  # attempt -> run_at - its start, as the server has them

    async def run_until_dead() -> None:
        runner = asyncio.create_task(worker.run())
        deadline = time.monotonic() + 30
        while (state := await client.get("default", task_id)).status != "dead":
            assert time.monotonic() < deadline, f"never dead-lettered: {state}"
            if state.status == "delayed" and state.run_at and state.last_attempted_at:
                scheduled[state.attempts] = (state.run_at - state.last_attempted_at).total_seconds()
            await asyncio.sleep(0.002)
        await worker.close()
        await runner

    asyncio.run(run_until_dead())
    assert run_counts(runs, "boom") == {1: attempts}
    assert len(asked) == attempts and None not in asked, asked
    bases = [min(backoff * 2 ** (n - 1), cap) for n in range(1, attempts + 1)]
    ratios = [delay / base for delay, base in zip(asked, bases, strict=True)]
    assert all(0.5 <= r <= 1.5 for r in ratios), list(zip(asked, bases, strict=True))
    assert len(set(ratios)) == attempts, f"no jitter: {ratios}"
    # Without the doubling the third delay would be at most 0.075 s; without
    # the cap the sixth would be at least 0.8 s.
    assert asked[2] >= 0.1 and asked[5] <= 0.45, asked
    # The server holds each retry back by what the worker asked (ms on the
    # wire): run_at is that long after the failed attempt started, plus the
    # time the attempt and its report took.
    assert len(scheduled) >= 3, scheduled
    for attempt, gap in scheduled.items():
        assert asked[attempt - 1] - 0.001 <= gap <= asked[attempt - 1] + 5.0, (attempt, gap, asked)


def test_an_error_history_longer_than_the_limit_is_cut_to_fit_and_stays_readable(valkey, runs):
    """Each attempt's message is 200,000 characters with a 300-frame
    traceback: three of them are many times the 64 KiB the server keeps.
    The worker cuts the record to fit, so what the server keeps is whole
    JSON that names every attempt's exception (a text cut by the server
    would not parse)."""
    client = vtasks.Client(valkey.url)
    task_id = client.enqueue_sync(sample_tasks.huge_error, 200_000)
    worker = vtasks.Worker(client, handle_signals=False, retry_backoff=0.01, block=0.1)

    async def run_until_dead() -> None:
        runner = asyncio.create_task(worker.run())
        deadline = time.monotonic() + 30
        while (await client.get("default", task_id)).status != "dead":
            assert time.monotonic() < deadline, "never dead-lettered"
            await asyncio.sleep(0.02)
        await worker.close()
        await runner

    asyncio.run(run_until_dead())
    raw = client.native.get(None, "default", task_id)["error"]
    text = raw if isinstance(raw, str) else raw.decode()
    assert len(text.encode()) <= limits.MAX_ERROR_TEXT, len(text.encode())
    assert len(text.encode()) > limits.MAX_ERROR_TEXT // 2, "the room is used"
    error = client.get_sync("default", task_id).error
    assert (error["exception_class"], error["attempt"]) == ("builtins.ValueError", 3)
    message, trace = error["message"], error["traceback"]
    assert message.startswith("eeee") and message.endswith("characters cut]"), message[-60:]
    # A traceback keeps its end, where the exception is raised.
    assert trace.startswith("[") and "characters cut]" in trace[:40] and trace.endswith("eeee\n"), trace[:60]
    kept = [e["attempt"] for e in error.get("previous", [])]
    assert all(e["exception_class"] == "builtins.ValueError" for e in error.get("previous", []))
    assert kept == list(range(1 + error.get("omitted", 0), 3)), "earlier attempts kept in order, or counted"


def test_a_task_longer_than_its_lease_is_renewed_and_runs_once(valkey, runs):
    client = vtasks.Client(valkey.url)
    # Three times its lease; renewed every third of it, so a renewal may be
    # late by most of a lease on a loaded machine before the lease lapses.
    task_id = client.enqueue_sync(sample_tasks.slow_sync, 1, 3.0)
    worker = burst(client, lease=1.0)
    assert run_counts(runs, "slow_sync") == {1: 1}
    state = client.get_sync("default", task_id)
    assert (state.status, state.attempts) == ("done", 1)
    assert worker.stats["lost_leases"] == 0
    assert client.stats_sync("default")["expired"] == 0


def zstd_bomb(inflated: int) -> bytes:
    """A valid zstd frame of a JSON payload that inflates to ``inflated`` bytes."""
    import zstandard

    text = b'{"task":"tests.add","args":["' + b"a" * inflated + b'",1],"kwargs":{}}'
    return zstandard.ZstdCompressor(level=3).compress(text)


HOSTILE_PAYLOADS = [
    # (id, payload, what the dead letter's reason says)
    ("not-registered", b'{"task":"os.system","args":["echo pwned"],"kwargs":{}}',
     "no task is registered as 'os.system'"),
    ("builtin", b'{"task":"builtins.eval","args":["1+1"],"kwargs":{}}', "no task is registered as 'builtins.eval'"),
    ("plain-function", b'{"task":"tests.sample_tasks.record","args":["x",1],"kwargs":{}}',
     "no task is registered as 'tests.sample_tasks.record'"),
    ("class", b'{"task":"vtasks.worker.Worker","args":["valkey://evil"],"kwargs":{}}',
     "no task is registered as 'vtasks.worker.Worker'"),
    ("not-json", b"\x80\x81 not json", "not valid JSON"),
    ("truncated-json", b'{"task":"tests.add","args":[1,', "not valid JSON"),
    ("not-an-object", b'["tests.add",1,2]', "not a JSON object"),
    ("no-name", b'{"args":[1,2]}', "no task name"),
    ("name-not-string", b'{"task":42,"args":[1,2]}', "no task name"),
    ("wrong-shape", b'{"task":"tests.add","args":{"a":1}}', "args must be a list"),
    ("kwargs-list", b'{"task":"tests.add","args":[],"kwargs":[1,2]}', "kwargs an object"),
    ("unknown-field", b'{"task":"tests.add","args":[1,2],"kwargs":{},"run_as":"root"}',
     "unknown fields: ['run_as']"),
    ("unknown-option", b'{"task":"tests.add","args":[1,2],"options":{"priority_boost":1}}',
     "unknown options: ['priority_boost']"),
    ("bad-option", b'{"task":"tests.add","args":[1,2],"options":{"timeout":"soon"}}',
     "option timeout must be a positive number"),
    ("too-many-args", b'{"task":"tests.add","args":[1,2,3],"kwargs":{}}', "arguments do not fit task tests.add"),
    ("unknown-kwarg", b'{"task":"tests.async_add","args":[1],"kwargs":{"c":2}}',
     "arguments do not fit task tests.async_add"),
    ("corrupt-zstd", b"\x28\xb5\x2f\xfd" + b"\x00" * 40, "does not decompress"),
    ("zstd-bomb", zstd_bomb(65 * 1024 * 1024), "does not decompress"),
]


def test_payloads_that_cannot_run_are_dead_lettered_and_the_worker_goes_on(valkey, runs):
    client = vtasks.Client(valkey.url)
    client.native.enqueue(None, "default", [(task_id, body, 0, None, None, 3) for task_id, body, _ in HOSTILE_PAYLOADS])
    good = client.enqueue_sync(sample_tasks.add, 1, 1)
    bad_result = client.enqueue_sync(sample_tasks.unserializable_result)
    # Large but within the limits: it runs.
    big = client.enqueue_sync(sample_tasks.length, "b" * 5_000_000)
    worker = burst(client)
    assert client.get_sync("default", good).result == 2
    assert client.get_sync("default", big).result == 5_000_000
    expected = [(task_id, reason) for task_id, _, reason in HOSTILE_PAYLOADS]
    for task_id, reason in [*expected, (bad_result, "ran, but its return value cannot be stored")]:
        state = client.get_sync("default", task_id)
        assert state.status == "dead", task_id
        assert state.attempts == 1, f"{task_id} never retried"
        assert reason in state.error["message"], (task_id, state.error)
    assert worker.dead_lettered == len(HOSTILE_PAYLOADS) + 1
    assert run_counts(runs, "add") == {1: 1}, "no hostile payload ran a task"
    assert worker.failed == 0


def test_calls_the_native_reader_leaves_to_python_still_run(valkey, runs):
    """The worker reads calls natively, and leaves Python the payloads it
    does not read (deeper than serde_json goes, a negative zero): they run
    as any other."""
    client = vtasks.Client(valkey.url)
    deep = b'{"task":"tests.length","args":[' + b"[" * 300 + b"]" * 300 + b"]}"
    payloads = [
        ("deep", deep),
        ("negative-zero", b'{"task":"tests.add","args":[-0,5]}'),
        ("native", b'{"task":"tests.add","kwargs":{"a":9223372036854775807,"b":1}}'),
    ]
    client.native.enqueue(None, "default", [(task_id, body, 0, None, None, 3) for task_id, body in payloads])
    worker = burst(client)
    assert (worker.succeeded, worker.failed, worker.dead_lettered) == (3, 0, 0)
    results = {task_id: client.get_sync("default", task_id).result for task_id, _ in payloads}
    assert results == {"deep": 1, "negative-zero": 5, "native": 9223372036854775808}
    assert type(results["negative-zero"]) is int


def test_a_payload_over_the_size_limit_is_refused_at_enqueue(valkey):
    client = vtasks.Client(valkey.url)
    # Random hex: it stays above the limit after compression.
    with pytest.raises(vtasks.ServerError, match="exceeds the limit of 16777216 bytes"):
        client.enqueue_sync(sample_tasks.length, os.urandom(20 * 1024 * 1024).hex())
    with pytest.raises(vtasks.NoSuchQueue):
        client.stats_sync("default")  # nothing was written, not even the queue


def test_a_result_over_the_size_limit_is_not_stored_and_the_batch_goes_on(valkey, runs):
    client = vtasks.Client(valkey.url)
    # 3/2 of the limit in base64: still over it once compressed.
    size = limits.MAX_PAYLOAD * 3 // 2
    too_big = client.enqueue_sync(sample_tasks.random_text, size)
    others = [client.enqueue_sync(sample_tasks.add, n, 1) for n in range(20)]
    worker = burst(client, concurrency=25)
    state = client.get_sync("default", too_big)
    assert (state.status, state.attempts) == ("dead", 1), "ran once, never retried"
    assert state.error["exception_class"] == "vtasks.ResultNotStored", state.error
    assert f"exceeds the limit of {limits.MAX_PAYLOAD} bytes" in state.error["message"], state.error
    assert run_counts(runs, "random_text") == {size: 1}
    assert [client.get_sync("default", task_id).result for task_id in others] == [n + 1 for n in range(20)]
    assert (worker.succeeded, worker.dead_lettered) == (20, 1)


def start_worker_process(url: str, lease: float = 30.0, concurrency: int = 10) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.run_worker", url, str(lease), str(concurrency)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    return process


def wait_for_runs(path: Path, kind: str, at_least: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while sum(run_counts(path, kind).values()) < at_least:
        assert time.monotonic() < deadline, f"fewer than {at_least} runs"
        time.sleep(0.02)


@pytest.mark.parametrize(
    ("task", "name", "kwargs", "total"),
    [
        (sample_tasks.mark, "mark", {"sleep": 0.02}, 300),
        # Short sync tasks: batches go straight to the task threads, and
        # the stop must find every one of them.
        (sample_tasks.mark_sync, "mark_sync", {"spin": 0.0005}, 3000),
    ],
    ids=["async", "sync"],
)
def test_sigterm_mid_run_loses_nothing_and_runs_nothing_twice(valkey, runs, task, name, kwargs, total):
    client = vtasks.Client(valkey.url)
    client.enqueue_many_sync(task, [((n,), kwargs) for n in range(total)])
    process = start_worker_process(valkey.url, concurrency=20)
    wait_for_runs(runs, name, total // 6)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    first = run_counts(runs, name)
    assert total // 6 <= sum(first.values()) < total, "stopped part-way"
    stats = client.stats_sync("default")
    assert stats["leased"] == 0, "running tasks finished and unstarted ones went back"
    assert stats["expired"] == 0
    burst(client, concurrency=20)
    counts = run_counts(runs, name)
    assert sorted(counts) == list(range(total))
    assert set(counts.values()) == {1}, "nothing ran twice"


def starts(path: Path) -> list[tuple[int, int, float]]:
    """``(n, pid, unix time)`` of every start of a ``tracked`` task."""
    out = []
    for line in path.read_text().splitlines():
        kind, _, value = line.partition(" ")
        if kind == "tracked_start":
            n, pid, at = value.split()
            out.append((int(n), int(pid), float(at)))
    return out


def test_kill_9_tasks_are_redelivered_after_the_lease_and_all_complete(valkey, runs):
    client = vtasks.Client(valkey.url)
    ids = {n: client.enqueue_call_sync(sample_tasks.tracked, (n,), {"sleep": 0.05}) for n in range(100)}
    process = start_worker_process(valkey.url, lease=1.0, concurrency=10)
    wait_for_runs(runs, "tracked", 20)
    process.kill()
    process.wait()
    # What the killed worker had started and not finished, and when the
    # server ends each of those leases (read before anyone else can take
    # them: the earliest deadline is two thirds of a lease away).
    killed = {n for n, pid, _ in starts(runs) if pid == process.pid}
    running = killed - set(run_counts(runs, "tracked"))
    assert running, "the kill caught tasks running"
    deadline = {}
    for n in running:
        raw = client.native.get(None, "default", ids[n])
        assert raw["status"] == "leased" and raw["deadline"] is not None, raw
        deadline[n] = raw["deadline"] / 1000
    survivor = vtasks.Worker(client, concurrency=10, lease=1.0, block=0.2, handle_signals=False)

    async def run_until_all_done():
        runner = asyncio.create_task(survivor.run())
        deadline = time.monotonic() + 30
        while len(run_counts(runs, "tracked")) < 100:
            assert time.monotonic() < deadline, f"only {len(run_counts(runs, 'tracked'))} of 100 ran"
            await asyncio.sleep(0.05)
        await survivor.close()
        await runner

    asyncio.run(run_until_all_done())
    counts = run_counts(runs, "tracked")
    assert sorted(counts) == list(range(100)), "every task completed"
    twice = {n for n, c in counts.items() if c > 1}
    # Which tasks ran twice, not how many: only ones the killed worker had
    # started (running, or finished with the acknowledgement not yet sent).
    assert twice <= killed, f"tasks the killed worker never started ran twice: {sorted(twice - killed)}"
    # Each task running at the kill started again in this process only once
    # its lease had run out on the server, not while it was still held.
    again = {n: at for n, pid, at in starts(runs) if pid == os.getpid() and n in running}
    assert set(again) == running, (sorted(again), sorted(running))
    early = {n: round(deadline[n] - at, 3) for n, at in again.items() if at < deadline[n] - 0.01}
    assert not early, f"started again before their lease ended (seconds early): {early}"
    stats = client.stats_sync("default")
    assert stats["leased"] == 0
    assert stats["expired"] >= 1, "the killed worker's leases expired"


@pytest.mark.parametrize("how", ["shutdown", "sigkill"])
def test_valkey_restart_mid_run_the_worker_reconnects_and_finishes(valkey_aof, runs, how):
    """Valkey stopped mid-run, gracefully or with SIGKILL (then it comes
    back from its AOF, appendfsync always, with no shutdown save)."""
    client = vtasks.Client(valkey_aof.url)
    for n in range(400):
        client.enqueue_call_sync(sample_tasks.mark, (n,), {"sleep": 0.01})
    process = start_worker_process(valkey_aof.url, lease=2.0, concurrency=10)
    wait_for_runs(runs, "mark", 50)
    if how == "sigkill":
        valkey_aof.kill()
        valkey_aof.start()
    else:
        valkey_aof.restart()
    deadline = time.monotonic() + 60
    while len(run_counts(runs, "mark")) < 400:
        assert time.monotonic() < deadline, f"only {len(run_counts(runs, 'mark'))} of 400 ran"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    counts = run_counts(runs, "mark")
    assert sorted(counts) == list(range(400))
    stats = client.stats_sync("default")
    assert stats["ready"] + stats["leased"] + stats["delayed"] == 0


def test_blocking_sync_tasks_run_side_by_side_up_to_the_concurrency(valkey, runs):
    # Sync tasks start on one thread while they keep the interpreter busy;
    # tasks that wait (here on each other) get a thread each.
    client = vtasks.Client(valkey.url)
    for n in range(60):
        client.enqueue_call_sync(sample_tasks.meet, (n, "sixty", 60))
    sample_tasks.meet_threads.clear()

    def trace(frame, event, arg):  # a tracer that traces no frame
        return None

    # As threading.Thread's threads do, task threads take up what
    # threading.settrace() sets (coverage and profilers use it).
    threading.settrace(trace)
    try:
        worker = burst(client, concurrency=60)
    finally:
        threading.settrace(None)  # type: ignore[arg-type]
    assert (worker.succeeded, worker.failed) == (60, 0)
    assert run_counts(runs, "meet") == {n: 1 for n in range(60)}
    names = [name for name, _ in sample_tasks.meet_threads]
    assert len(set(names)) == 60, names
    assert all(name.startswith("vtasks-task-") for name in names), names
    assert {tracer for _, tracer in sample_tasks.meet_threads} == {trace}


def test_a_task_found_blocking_gets_threads_at_once_the_next_time(valkey, runs, monkeypatch):
    # The first burst of twenty sync tasks that wait for each other gets
    # its threads from the watcher, which finds them blocked. Then the
    # watcher is made unable to widen the pool: the second burst of the
    # same task meets only if each of its tasks got a thread at once.
    monkeypatch.setattr(_TaskThreads, "WIDE_FOR", 0.0)
    client = vtasks.Client(valkey.url)
    worker = vtasks.Worker(client, concurrency=20, handle_signals=False)

    async def until(count: int) -> None:
        deadline = time.monotonic() + 30
        while sum(run_counts(runs, "meet").values()) < count and not worker.failed:
            assert time.monotonic() < deadline, f"{count} tasks did not meet"
            await asyncio.sleep(0.02)

    async def main() -> None:
        running = asyncio.create_task(worker.run())
        try:
            await client.enqueue_many(sample_tasks.meet, [((n, "first burst", 20), {}) for n in range(20)])
            await until(20)
            monkeypatch.setattr(_TaskThreads, "HELD_UP", 10**9)
            monkeypatch.setattr(_TaskThreads, "HELD_UP_AT_KEEP", 10**9)
            monkeypatch.setattr(_TaskThreads, "LONG_JOB", 10**9)
            await client.enqueue_many(sample_tasks.meet, [((n, "second burst", 20), {}) for n in range(20, 40)])
            await until(40)
        finally:
            worker.stop()
            await running

    asyncio.run(main())
    assert (worker.succeeded, worker.failed) == (40, 0)
    assert run_counts(runs, "meet") == {n: 1 for n in range(40)}


def test_threads_started_for_blocking_tasks_step_back_when_short_ones_follow(valkey, runs):
    # Forty sync tasks that wait for each other take forty threads; the
    # short tasks after them (busy, never waiting) need one or two. Kept
    # busy by a backlog this deep (prefetch 100), the forty would take
    # turns with the GIL until the queue ran dry.
    client = vtasks.Client(valkey.url)
    client.enqueue_many_sync(sample_tasks.meet, [((n, "forty", 40), {}) for n in range(40)])
    client.enqueue_many_sync(sample_tasks.on_thread, [((n, 0.0003), {}) for n in range(5000)])
    sample_tasks.on_thread_runs.clear()
    worker = burst(client, concurrency=40, prefetch=100)
    assert (worker.succeeded, worker.failed) == (5040, 0)
    assert run_counts(runs, "meet") == {n: 1 for n in range(40)}
    ran = list(sample_tasks.on_thread_runs)
    assert sorted(n for n, _ in ran) == list(range(5000))
    # By the last 2,000 they have stepped back, and stay back: the watcher
    # must not read threads that take turns with the GIL as held up.
    last = {ident for _, ident in ran[-2000:]}
    windows = [len({ident for _, ident in ran[k:k + 500]}) for k in range(0, len(ran), 500)]
    assert len(last) <= 8, f"the last 2000 short tasks ran on {len(last)} threads; per 500: {windows}"
    stepped_back = next(k for k, threads in enumerate(windows) if threads <= 8)
    assert max(windows[stepped_back:]) <= 8, f"the threads widened again after stepping back; per 500: {windows}"


def test_a_thread_meter_reads_the_time_its_thread_waited_for_a_cpu() -> None:
    # The watcher tells threads blocked on I/O from threads held up by a
    # CPU taken by other work: this thread, on one CPU with a busy process,
    # waits for it about half the time it spins.
    meter = _ThreadMeter()
    cpus = os.sched_getaffinity(0)
    cpu = min(cpus)
    os.sched_setaffinity(0, {cpu})  # 0: this thread only
    busy = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"])
    try:
        time.sleep(0.2)  # the busy process is running
        before = meter.waited()
        end = time.monotonic() + 0.2
        while time.monotonic() < end:
            pass
        waited = meter.waited() - before
    finally:
        busy.kill()
        busy.wait()
        os.sched_setaffinity(0, cpus)
    assert 0.02 < waited < 0.18, f"waited {waited:.3f} s of 0.2"


def test_a_thread_meter_reads_zero_once_its_thread_has_ended() -> None:
    meters: list[_ThreadMeter] = []

    def run() -> None:
        meters.append(_ThreadMeter())
        meters[0].waited()  # opened while the thread runs

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert meters[0].waited() == 0.0
    with pytest.raises(OSError):
        vtasks._native.ThreadSchedstat(2**31 + 12345)


def most_held(worker: vtasks.Worker) -> int:
    """Runs ``worker`` to its end (burst) while another thread polls how
    many tasks it holds; the most seen."""
    most, done = 0, threading.Event()

    def poll() -> None:
        nonlocal most
        while not done.is_set():
            most = max(most, worker.held)
            time.sleep(0.0005)

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        asyncio.run(worker.run())
    finally:
        done.set()
        thread.join()
    return most


@pytest.mark.parametrize(("seconds", "deeper"), [(0.002, True), (0.08, False)])
def test_the_default_prefetch_deepens_while_sync_tasks_are_short(valkey, runs, seconds, deeper):
    # Concurrency 8, default prefetch 2: at most 10 held. Short blocking
    # sync tasks let the worker hold up to 16 (its backlog as deep as its
    # concurrency); 80 ms tasks keep it at 10.
    client = vtasks.Client(valkey.url)
    count = 400 if deeper else 100
    for n in range(count):
        client.enqueue_call_sync(sample_tasks.slow_sync, (n, seconds))
    worker = vtasks.Worker(client, concurrency=8, burst=True, handle_signals=False)
    most = most_held(worker)
    assert (worker.succeeded, worker.failed) == (count, 0)
    assert run_counts(runs, "slow_sync") == {n: 1 for n in range(count)}
    if deeper:
        assert 10 < most <= 16, f"most held at once: {most}"
    else:
        assert 0 < most <= 10, f"most held at once: {most}"
    assert worker.held == 0


def test_an_explicit_prefetch_is_kept_however_short_the_tasks(valkey, runs):
    client = vtasks.Client(valkey.url)
    for n in range(400):
        client.enqueue_call_sync(sample_tasks.slow_sync, (n, 0.002))
    worker = vtasks.Worker(client, concurrency=8, prefetch=2, burst=True, handle_signals=False)
    most = most_held(worker)
    assert worker.succeeded == 400
    assert 0 < most <= 10, f"most held at once: {most}"


def test_a_long_busy_sync_task_does_not_hold_up_short_ones(valkey, runs):
    client = vtasks.Client(valkey.url)
    client.enqueue_call_sync(sample_tasks.spin, (0, 2.0))
    for n in range(20):
        client.enqueue_call_sync(sample_tasks.quick, (n,))
    worker = burst(client)
    assert worker.succeeded == 21
    spin_end = ended_at(runs, "spin")[0]
    quick_ends = ended_at(runs, "quick")
    assert len(quick_ends) == 20
    late = {n: round(end - spin_end, 3) for n, end in quick_ends.items() if end >= spin_end}
    assert not late, f"short tasks that waited for the busy one to end (s after it): {late}"


def test_a_queue_concurrency_cap_limits_running_tasks_of_that_queue(valkey, runs):
    client = vtasks.Client(valkey.url)
    for n in range(12):
        client.enqueue_call_sync(sample_tasks.gauge, (n, "capped"), queue="capped")
    for n in range(100, 130):
        client.enqueue_call_sync(sample_tasks.gauge, (n, "free"), queue="free")
    worker = burst(client, queues=["capped", "free"], concurrency=10, queue_concurrency={"capped": 2})
    assert worker.succeeded == 42
    assert sample_tasks.gauge_peak["capped"] == 2, sample_tasks.gauge_peak
    assert sample_tasks.gauge_peak["free"] > 2, "the other queue still used the free slots"
    with pytest.raises(ValueError, match="does not serve"):
        vtasks.Worker(client, queues=["a"], queue_concurrency={"b": 1})


def ended_at(path: Path, kind: str) -> dict[int, float]:
    """When each task recorded as ``kind <n> <time.time()>`` ended."""
    ends = {}
    for line in path.read_text().splitlines():
        k, rest = line.split(" ", 1)
        if k == kind:
            n, when = rest.split()
            ends[int(n)] = float(when)
    return ends


async def wait_acked(client: vtasks.Client, queue: str, total: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (await client.stats(queue))["acked"] < total:
        assert time.monotonic() < deadline, f"fewer than {total} tasks done"
        await asyncio.sleep(0.02)


def assert_final_as_they_end(lags: dict[int, float]) -> None:
    """Each result was final (the server's ``finished_at``) within 0.5 s
    of its task's end; a result that waits for the worker's next fetch
    waits out its 5 s block."""
    late = {n: round(lag, 3) for n, lag in lags.items() if lag > 0.5}
    assert not late, f"results final more than 0.5 s after their task ended (s): {late}"


def test_tasks_ending_while_the_worker_waits_are_final_as_they_end(valkey, runs):
    client = vtasks.Client(valkey.url)
    worker = vtasks.Worker(client, handle_signals=False)  # defaults: a fetch waits up to 5 s
    rounds, per_round = 10, 6
    ids: dict[int, str] = {}

    async def main():
        runner = asyncio.create_task(worker.run())
        for r in range(rounds):
            # Ending a little apart, more so each round, so that endings
            # fall at every point of the worker's settling.
            for i in range(per_round):
                n = r * per_round + i
                ids[n] = await client.enqueue(sample_tasks.timed, n, 0.02 + i * 0.001 * (r + 1))
            await wait_acked(client, "default", (r + 1) * per_round)
        await worker.close()
        await runner

    asyncio.run(asyncio.wait_for(main(), 100))
    ends = ended_at(runs, "timed")
    finished = {n: client.get_sync("default", task_id).finished_at for n, task_id in ids.items()}
    assert_final_as_they_end({n: finished[n].timestamp() - ends[n] for n in ids})


def test_an_unreachable_server_is_logged_once_when_lost_and_once_when_back(valkey, runs, caplog):
    caplog.set_level(logging.WARNING, logger="vtasks.worker")
    client = vtasks.Client(valkey.url)
    worker = vtasks.Worker(client, handle_signals=False)

    def records(text: str) -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "vtasks.worker" and text in r.getMessage()]

    async def until(condition, what: str) -> None:
        deadline = time.monotonic() + 30
        while not condition():
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.02)

    async def main():
        runner = asyncio.create_task(worker.run())
        await client.enqueue(sample_tasks.add, 1, 1)
        await wait_acked(client, "default", 1)
        valkey.stop()
        await until(lambda: records("unreachable"), "the loss was never logged")
        # The worker keeps retrying (with backoff) and says nothing more.
        retries = worker.stats["reconnects"]
        await until(lambda: worker.stats["reconnects"] >= retries + 3, "the worker stopped retrying")
        valkey.start()
        await until(lambda: records("is back"), "the return was never logged")
        await client.enqueue(sample_tasks.add, 2, 2)
        await wait_acked(client, "default", 1)
        await until(lambda: run_counts(runs, "add").get(2) == 1, "no task ran after the return")
        await worker.close()
        await runner

    asyncio.run(asyncio.wait_for(main(), 100))
    assert [r.levelno for r in records("unreachable")] == [logging.WARNING]
    assert [r.levelno for r in records("is back")] == [logging.WARNING]


def test_a_running_worker_holds_two_connections(valkey):
    worker = vtasks.Worker(valkey.url, handle_signals=False, concurrency=4)

    async def main():
        runner = asyncio.create_task(worker.run())
        for n in range(20):
            await worker.client.enqueue(sample_tasks.add, n, n)
        await wait_acked(worker.client, "default", 20)
        # Everything ran, so the worker waits in a blocking fetch: every
        # connection it opened on the way is still there.
        deadline = time.monotonic() + 30
        while not any("b" in c["flags"] for c in valkey.clients()):
            assert time.monotonic() < deadline, valkey.clients()
            await asyncio.sleep(0.01)
        connections = valkey.clients()
        await worker.close()
        await runner
        return connections

    connections = asyncio.run(asyncio.wait_for(main(), 60))
    assert len(connections) == 2, f"the shared command connection and the fetch connection: {connections}"
