"""Valkey killed (SIGKILL) and started again on its AOF while a producer
enqueues and workers run: with ``appendfsync always`` no acknowledged
enqueue is lost; with ``everysec`` the loss is measured.

A SIGKILL alone leaves what the server wrote in the kernel's page cache,
so it cannot show ``everysec``'s window. With ``power_loss`` the server
runs with ``power_loss.c`` preloaded, which holds AOF writes in memory
until they are fsynced: the kill then also takes what a power cut would."""

from __future__ import annotations

import random
import subprocess
import time
from pathlib import Path

import pytest
import vtasks

from tests.chaos import tasks as chaos_tasks  # noqa: F401  (registers the tasks)
from tests.chaos.harness import (
    FULL,
    Ledger,
    WorkerProcess,
    command_pipeline,
    duplicates,
    median,
    scale,
    wait_drained,
    wait_until,
)
from tests.chaos.producer import Producer
from tests.conftest import TARGET, ValkeyServer


@pytest.fixture(scope="session")
def power_loss_library(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("power-loss") / "power_loss.so"
    source = Path(__file__).with_name("power_loss.c")
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", str(out), str(source), "-ldl", "-lpthread"], check=True)
    return out


def preloaded(server: ValkeyServer, library: Path) -> bool:
    """Whether the running server process has ``library`` mapped."""
    assert server.process is not None
    return str(library) in Path(f"/proc/{server.process.pid}/maps").read_text()


def test_the_power_loss_library_holds_unsynced_aof_writes(power_loss_library):
    """The emulation the power-loss rows rely on: with the library preloaded
    and an AOF that is never fsynced, SIGKILL takes every write with it;
    with fsync on every write, or without the library (the kernel's page
    cache survives a killed process), none."""
    keys = 1_000
    outcomes = {}
    for fsync, preload in [("no", True), ("always", True), ("no", False)]:
        env = {"LD_PRELOAD": str(power_loss_library)} if preload else None
        server = ValkeyServer(["--appendonly", "yes", "--appendfsync", fsync], env=env)
        try:
            assert preloaded(server, power_loss_library) == preload
            replies = command_pipeline(server.port, [("SET", f"k{n}", "v") for n in range(keys)])
            assert replies == ["OK"] * keys
            server.kill()
            server.start()
            outcomes[(fsync, preload)] = command_pipeline(server.port, [("DBSIZE",)])[0]
        finally:
            server.close()
    assert outcomes == {("no", True): 0, ("always", True): keys, ("no", False): keys}, outcomes


MODES = [("always", False), ("everysec", False), ("always", True), ("everysec", True)] if FULL else [("always", True)]


def missing_tasks(port: int, numbers: list[int]) -> list[int]:
    """The numbers whose task the server does not have."""
    if TARGET == "module":
        # The module holds the queue as one value: ask it for each task.
        replies = command_pipeline(port, [("VTASKS.GET", "{default}", f"t{n}") for n in numbers])
        return [n for n, task in zip(numbers, replies, strict=True) if task is None]
    replies = command_pipeline(port, [("EXISTS", f"{{default}}:t:t{n}") for n in numbers])
    return [n for n, exists in zip(numbers, replies, strict=True) if exists == 0]


@pytest.mark.parametrize(("fsync", "power_loss"), MODES)
def test_valkey_killed_and_restarted_on_its_aof(fsync, power_loss, power_loss_library, events, report):
    tasks, kills = scale(20_000, 3_000), scale(5, 2)
    env = {"LD_PRELOAD": str(power_loss_library)} if power_loss else None
    server = ValkeyServer(["--appendonly", "yes", "--appendfsync", fsync], env=env)
    try:
        client = vtasks.Client(server.url, connect_timeout=1.0, response_timeout=5.0)
        ledger = Ledger(events)
        workers = [WorkerProcess(server.url, events, lease=2.0, concurrency=50) for _ in range(2)]
        assert preloaded(server, power_loss_library) == power_loss
        producer = Producer(client, tasks)
        producer.start()
        rng = random.Random(5)
        recoveries, downtimes, writes_lost, windows = [], [], [], []
        previous_kill = 0.0
        for k in range(kills):
            # At a random point of the k-th sixth of the enqueues, watched
            # closely: the producer (thousands of enqueues a second) must
            # still have work after the last restart, since the recovery is
            # the first enqueue the new process acknowledges.
            at = int(tasks * (k + rng.uniform(0.5, 1.0)) / (kills + 1))
            wait_until(lambda at=at: len(producer.acked) >= at, 300, "enqueues", interval=0.001)
            assert len(producer.acked) < tasks, "the producer finished before the kill"
            killed_at = time.time()
            server.kill()
            since_last_kill = {n: at for n, at in list(producer.acked.items()) if previous_kill < at <= killed_at}
            previous_kill = killed_at
            server.start()
            # The new process answers from here; what the producer gets
            # acknowledged after this, it acknowledged.
            restarted_at = time.time()
            downtimes.append(restarted_at - killed_at)
            assert preloaded(server, power_loss_library) == power_loss, "restarted with the library"
            # Enqueues acknowledged since the previous kill that the
            # restarted server does not have, and how long before the kill
            # the earliest of them was acknowledged.
            gone = missing_tasks(server.port, sorted(since_last_kill))
            writes_lost.append(len(gone))
            if gone:
                windows.append(killed_at - min(since_last_kill[n] for n in gone))
            # Measured from the restart, not from the end of that check: the
            # producer can finish its work while the check reads thousands
            # of tasks, and then nothing is acknowledged after it.
            wait_until(lambda t=restarted_at: producer.first_ack_after(t) is not None, 60, "enqueues again")
            # From the kill to the first enqueue acknowledged by the new process.
            recoveries.append(producer.first_ack_after(restarted_at) - killed_at)  # type: ignore[operator]
        producer.join(300)
        assert not producer.is_alive()
        wait_drained(client)
        for worker in workers:
            worker.stop()
        done = ledger.done_counts()
        lost = sorted(n for n in producer.acked if n not in done)
        if fsync == "always":
            assert lost == [], f"acknowledged enqueues lost with appendfsync always: {lost[:20]}"
            assert sum(writes_lost) == 0, f"acknowledged enqueues missing after restarts: {writes_lost}"
        elif power_loss:
            # everysec under emulated power loss: each kill lands within a
            # second of the last fsync, so the emulation must have dropped
            # acknowledged writes (else the row would show nothing).
            assert sum(writes_lost) > 0, f"the power-loss emulation dropped nothing: {writes_lost}"
        twice = duplicates(ledger)
        assert len(producer.acked) == tasks
        how = "power loss (unsynced AOF writes dropped)" if power_loss else "SIGKILL"
        report.append({
            "fault": f"{'Redis' if TARGET == 'scripts-redis' else 'Valkey'} {how} + restart, "
                     f"AOF appendfsync {fsync}",
            "runs": f"{kills} kills",
            "tasks": tasks,
            "lost": len(lost),
            "duplicated": len(twice),
            "recovery": f"first enqueue after kill: median {median(recoveries):.2f} s, "
                        f"max {max(recoveries):.2f} s (restart {median(downtimes):.2f} s)",
            "notes": f"{len(producer.errors)} enqueue calls failed and were repeated; acknowledged enqueues "
                     f"missing after each restart: {writes_lost}"
                     + (f", acknowledged at most {max(windows) * 1000:.0f} ms before the kill "
                        f"(median {median(windows) * 1000:.0f} ms)" if windows else ""),
        })
    finally:
        server.close()
