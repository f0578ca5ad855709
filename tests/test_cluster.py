"""Django on Valkey Cluster: real clusters started by the tests (3
primaries, with a replica each where a primary is killed), a producer
enqueueing through the Django backend while ``manage.py runworker``
processes run the tasks, and every acknowledged task checked at the end.

In CI the workloads are small (a few hundred tasks), the failover runs on
the module only and the reshard on the module and the scripts engine on
Valkey, to keep CI short; ``make cluster`` (``VTASKS_CLUSTER=full``, part of
``make chaos``) runs all of them at full size on every target."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import vtasks
from django.tasks import TaskResultStatus, task_backends

from tests.conftest import ROOT, TARGET, ValkeyCluster, key_slot, server_command
from tests.django_project import tasks
from tests.test_django import point_tasks_at

FULL = os.environ.get("VTASKS_CLUSTER") == "full"
QUEUES = ["default", "emails", "reports", "images", "billing", "search"]
PARTITIONED = "bulk"


def scale(full: int, ci: int) -> int:
    return full if FULL else ci


def in_ci_on(*targets: str) -> pytest.MarkDecorator:
    """Runs the test in CI on these targets only; ``make cluster`` runs it
    on every target."""
    return pytest.mark.skipif(
        not FULL and TARGET not in targets,
        reason=f"in CI on {', '.join(targets)} only; `make cluster` runs it on every target",
    )


def cluster_options(**extra: object) -> dict[str, object]:
    return {"CLUSTER": True, "PARTITIONS": {PARTITIONED: 16}, "LEASE": 2, **extra}


class Producer(threading.Thread):
    """Enqueues ``add(n, n)`` through the Django backend, spread over the
    six queues and the partitioned one, one call at a time; a call that
    fails (the cluster failing over) is made again. Remembers the result
    ids the server acknowledged."""

    def __init__(self, count: int, pace: float = 0.0, queues: list[str] = QUEUES) -> None:
        super().__init__(name="producer", daemon=True)
        self.count, self.pace, self.queues = count, pace, queues
        self.acked: dict[str, int] = {}  # result id -> n
        self.errors: list[str] = []
        self.started_at = 0.0

    def run(self) -> None:
        self.started_at = time.monotonic()
        queues = [*self.queues, PARTITIONED, PARTITIONED]  # the partitioned queue gets more
        for n in range(self.count):
            task = tasks.add.using(queue_name=queues[n % len(queues)])
            while True:
                try:
                    result = task.enqueue(n, n)
                except vtasks.VtasksError as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    time.sleep(0.02)
                    continue
                self.acked[result.id] = n
                break
            if self.pace:
                time.sleep(self.pace)


def start_runworker(
    tmp_path: Path, url: str, name: str, queues: list[str] = QUEUES, **options: object
) -> subprocess.Popen[bytes]:
    """``manage.py runworker`` in a process of its own, with the test's
    settings; its log goes to ``<name>.log``."""
    settings = tmp_path / f"{name}_settings.py"
    settings.write_text(
        "from tests.django_project.settings import *  # noqa: F403\n"
        f"TASKS = {{'default': {{'BACKEND': 'vtasks.django.ValkeyTaskBackend', 'QUEUES': {[*queues, PARTITIONED]!r},\n"
        f"                     'OPTIONS': {{'URL': {url!r}, **{options!r}}}}}}}\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
           "DJANGO_SETTINGS_MODULE": settings.stem}
    log = open(tmp_path / f"{name}.log", "wb")
    return subprocess.Popen(
        [sys.executable, "-m", "django", "runworker", "--concurrency", "50", "--worker-id", name],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )


def wait_serving(tmp_path: Path, names: list[str], timeout: float = 60) -> None:
    """Waits until each ``start_runworker`` worker of ``names`` serves its
    queues: a failover before then would test the worker's start-up (a
    system check that cannot reach the server stops it), not its run."""
    deadline = time.monotonic() + timeout
    for name in names:
        log = tmp_path / f"{name}.log"
        while f"worker {name} serving".encode() not in log.read_bytes():
            assert time.monotonic() < deadline, f"worker {name} did not start: {log.read_text()[-2000:]}"
            time.sleep(0.05)


def wait_all_succeeded(acked: dict[str, int], timeout: float) -> dict[str, int]:
    """Waits until every acknowledged task succeeded with its value;
    returns the statuses of the ones that did not."""
    backend = task_backends["default"]
    pending = dict(acked)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for result_id, n in list(pending.items()):
            try:
                result = backend.get_result(result_id)
            except vtasks.VtasksError:
                break  # the cluster is still settling: look again
            if result.status == TaskResultStatus.SUCCESSFUL:
                assert result.return_value == 2 * n, result_id
                del pending[result_id]
        if pending:
            time.sleep(0.2)
    statuses: dict[str, int] = {}
    for result_id in pending:
        status = str(backend.get_result(result_id).status)
        statuses[status] = statuses.get(status, 0) + 1
    return statuses


def wait_for_failover(cluster: ValkeyCluster, dead, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    """Until no slot is served by the dead node any more."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if all(port != dead.port for *_, port in cluster.slot_owners()):
                return
        except (OSError, RuntimeError):
            pass
        assert time.monotonic() < deadline, "no replica took over"
        time.sleep(0.05)


@in_ci_on("module")
def test_a_django_workload_survives_a_primary_killed_mid_run(settings, tmp_path, workers):
    """Six queues and a queue over 16 partitions on 3 primaries with a
    replica each, ``WAIT_REPLICAS: 1``: the primary serving the most
    partitions is killed mid-run, its replica takes over, and every task
    whose enqueue was acknowledged runs and succeeds."""
    cluster = ValkeyCluster(3, 1)
    try:
        options = cluster_options(WAIT_REPLICAS=1, WAIT_TIMEOUT=2)
        point_tasks_at(settings, cluster.url, queues=[*QUEUES, PARTITIONED], **options)
        backend = task_backends["default"]
        partitions = backend.client.native.partitions_of(PARTITIONED)
        assert len({cluster.primary_of(key_slot(p)).port for p in partitions}) == 3
        workers.append(start_runworker(tmp_path, cluster.url, "w1", **options))
        workers.append(start_runworker(tmp_path, cluster.url, "w2", **options))
        wait_serving(tmp_path, ["w1", "w2"])
        count = scale(20_000, 600)
        producer = Producer(count, pace=scale(0.0005, 0.002))
        producer.start()
        while len(producer.acked) < count // 3:
            time.sleep(0.01)
        by_port: dict[int, int] = {}
        for p in partitions:
            port = cluster.primary_of(key_slot(p)).port
            by_port[port] = by_port.get(port, 0) + 1
        victim = next(n for n in cluster.nodes if n.port == max(by_port, key=lambda port: by_port[port]))
        killed_at = time.monotonic()
        victim.kill()
        # Its replica takes over; with WAIT_REPLICAS 1 that shard refuses
        # enqueues (NotReplicated, repeated by the producer) until it has a
        # replica again: the old primary, restarted, rejoins as one.
        wait_for_failover(cluster, victim)
        failover = time.monotonic() - killed_at
        victim.start()
        cluster.wait_ready()
        producer.join(timeout=scale(600, 120))
        assert not producer.is_alive(), "the producer never finished"
        missing = wait_all_succeeded(producer.acked, timeout=scale(300, 60))
        assert not missing, f"acknowledged tasks that did not succeed: {missing}"
        assert len(producer.acked) == count
        for process in workers:
            assert process.poll() is None, "a worker died"
        print(f"{count} tasks, failover {failover:.1f} s, {len(producer.errors)} enqueues repeated")
    finally:
        cluster.close()


@in_ci_on("module", "scripts-valkey")
def test_the_slots_of_a_live_queue_move_to_another_node_mid_run(settings, tmp_path, workers):
    """``valkey-cli --cluster reshard`` moves the slot of a queue (and of
    some of the partitioned queue's partitions) while tasks are enqueued
    to it and run from it: every acknowledged task succeeds."""
    cluster = ValkeyCluster(3, 0)
    try:
        source, target = cluster.primary_of(0), cluster.primary_of(16383)
        first = min(a for a, _, port in cluster.slot_owners() if port == source.port)
        moved = scale(512, 64)
        # A queue whose slot is among the first `moved` slots of its node,
        # the ones the reshard takes.
        live = next(
            f"live{i}" for i in range(100_000) if first <= key_slot(f"live{i}") < first + moved
        )
        queues = [*QUEUES[:-1], live]
        options = cluster_options()
        point_tasks_at(settings, cluster.url, queues=[*queues, PARTITIONED], **options)
        workers.append(start_runworker(tmp_path, cluster.url, "w1", queues, **options))
        count = scale(20_000, 600)
        producer = Producer(count, pace=scale(0.0005, 0.003), queues=queues)
        producer.start()
        while len(producer.acked) < count // 4:
            time.sleep(0.01)
        cluster.reshard(source, target, moved)
        assert cluster.primary_of(key_slot(live)).port == target.port, "the queue's slot moved"
        producer.join(timeout=scale(600, 120))
        assert not producer.is_alive()
        missing = wait_all_succeeded(producer.acked, timeout=scale(300, 60))
        assert not missing, f"acknowledged tasks that did not succeed: {missing}"
        assert workers[0].poll() is None, "the worker died"
        # The queue's data is on its new node only.
        assert server_command(source.port, "CLUSTER", "COUNTKEYSINSLOT", key_slot(live)) == 0
    finally:
        cluster.close()


def test_a_partitioned_queue_spreads_its_tasks_and_reports_as_one(settings):
    """On a cluster without faults: enqueues of the partitioned queue land
    on every node, result ids name the partition, and the queue's counts
    add up its partitions."""
    cluster = ValkeyCluster(3, 0)
    try:
        point_tasks_at(settings, cluster.url, queues=[*QUEUES, PARTITIONED], **cluster_options())
        backend = task_backends["default"]
        results = [tasks.add.using(queue_name=PARTITIONED).enqueue(n, n) for n in range(200)]
        partitions = {r.id.rpartition("@")[2] for r in results}
        assert partitions <= set(backend.client.native.partitions_of(PARTITIONED))
        assert len(partitions) == 16
        ports = {cluster.primary_of(key_slot(p)).port for p in partitions}
        assert len(ports) == 3
        stats = backend.client.stats_sync(PARTITIONED)
        assert stats["ready"] == 200
        # A result id is found again with the id's partition.
        sample = random.choice(results)
        assert backend.get_result(sample.id).status == TaskResultStatus.READY
    finally:
        cluster.close()
