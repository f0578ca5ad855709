"""A Valkey at its ``maxmemory``: with ``noeviction`` it refuses new tasks
with ``vtasks.ServerFull`` and still drains; with an evicting policy the
client, ``manage.py check`` and ``runworker`` warn; a task whose record
vanished while its id was queued is counted and dropped, never run or
retried forever. On every target (module, scripts on Valkey and Redis)."""

from __future__ import annotations

import asyncio
import logging

import pytest
import vtasks
from django.core.management import call_command
from django.tasks import TaskResultStatus, task_backends
from vtasks.django import backend as backend_module
from vtasks.django.checks import reaching_server

from tests import sample_tasks
from tests.chaos.harness import command
from tests.conftest import TARGET, ValkeyServer
from tests.django_project import tasks
from tests.test_django import point_tasks_at, run_worker_burst
from tests.test_worker import burst, run_counts

PAD = "x" * 2000  # a few thousand such tasks fill 8 MB


@pytest.fixture
def full_valkey():
    """8 MB and the config's ``noeviction`` policy."""
    server = ValkeyServer(["--maxmemory", "8mb"])
    yield server
    server.close()


@pytest.fixture
def runs(tmp_path, monkeypatch):
    path = tmp_path / "runs.txt"
    path.touch()
    monkeypatch.setenv("VTASKS_TEST_RUNS", str(path))
    return path


def test_django_enqueue_on_a_full_server_raises_server_full_and_a_default_worker_drains_it(
    full_valkey, settings, runs
):
    point_tasks_at(settings, full_valkey.url)
    results = []
    with pytest.raises(vtasks.ServerFull) as refused:
        for n in range(20_000):
            results.append(tasks.padded.enqueue(n, PAD))
    assert len(results) > 1000
    error = refused.value
    assert isinstance(error, vtasks.ServerError) and error.code == "OOM"
    assert "maxmemory" in str(error) and "Retry later" in str(error)
    with pytest.raises(vtasks.ServerFull):
        asyncio.run(tasks.padded.aenqueue(-1, PAD))
    # Results can still be read on a full server.
    assert tasks.padded.get_result(results[0].id).status == TaskResultStatus.READY

    worker = run_worker_burst()
    assert worker.succeeded == len(results)
    assert worker.stats["server_full"] == 0
    assert run_counts(runs, "django_padded") == {n: 1 for n in range(len(results))}
    assert tasks.padded.get_result(results[-1].id).status == TaskResultStatus.SUCCESSFUL
    stats = task_backends["default"].client.stats_sync("default")
    assert (stats["ready"], stats["leased"], stats["acked"]) == (0, 0, len(results))


def test_a_worker_refused_for_lack_of_memory_says_so_once_and_drains_once_there_is_room(valkey, runs, caplog):
    # The scripts engine's library is loaded on first use with FUNCTION
    # LOAD, which a full server refuses: the one way a current worker meets
    # a refusal (a new vtasks version deployed while the server is full).
    client = vtasks.Client(valkey.url, engine="scripts")
    ids = [client.enqueue_sync(sample_tasks.length, str(n)) for n in range(200)]
    command(valkey.port, "FUNCTION", "FLUSH")
    command(valkey.port, "SET", "ballast", "b" * 4_000_000)
    command(valkey.port, "CONFIG", "SET", "maxmemory", "2mb")
    with pytest.raises(vtasks.ServerFull):
        client.enqueue_sync(sample_tasks.length, "refused")

    async def main() -> vtasks.Worker:
        worker = vtasks.Worker(client, handle_signals=False, burst=True)
        running = asyncio.create_task(worker.run())
        async with asyncio.timeout(30):
            while "refused to add work" not in caplog.text:
                assert not running.done(), "the worker ended"
                await asyncio.sleep(0.02)
        # Retrying, not dying: room comes back and it drains the queue.
        command(valkey.port, "CONFIG", "SET", "maxmemory", "0")
        async with asyncio.timeout(60):
            await running
        return worker

    with caplog.at_level(logging.WARNING, logger="vtasks.worker"):
        worker = asyncio.run(main())
    assert worker.succeeded == len(ids)
    assert worker.stats["server_full"] >= 1
    refusals = [r for r in caplog.records if "refused to add work" in r.getMessage()]
    assert len(refusals) == 1, [r.getMessage() for r in refusals]
    assert "maxmemory" in refusals[0].getMessage()
    assert any("has room again" in r.getMessage() for r in caplog.records)
    assert sum(run_counts(runs, "length").values()) == len(ids)


@pytest.mark.parametrize(
    ("policy", "what"),
    [("allkeys-lru", "waiting and running tasks"), ("volatile-ttl", "kept results"), ("noeviction", None)],
)
def test_an_evicting_policy_is_warned_about_on_connect_by_check_and_by_runworker(
    policy, what, settings, caplog, capsys
):
    server = ValkeyServer(["--maxmemory", "64mb", "--maxmemory-policy", policy])
    try:
        with caplog.at_level(logging.WARNING, logger="vtasks"):
            client = vtasks.Client(server.url)
            assert client.engine in ("module", "scripts")  # connects
        warnings = [r.getMessage() for r in caplog.records if "maxmemory-policy" in r.getMessage()]
        warning = client.eviction_warning_sync()
        assert warning == asyncio.run(client.eviction_warning())
        if what is None:
            assert warnings == [] and warning is None
        else:
            assert len(warnings) == 1 and warning is not None
            for text in (warnings[0], warning):
                assert policy in text and what in text and "noeviction" in text

        point_tasks_at(settings, server.url)
        backend = task_backends["default"]
        with reaching_server():
            found = [m for m in backend.check() if m.id == "vtasks.W001"]
        assert len(found) == (0 if what is None else 1)
        if what is not None:
            assert policy in found[0].msg and "noeviction" in found[0].msg

        caplog.clear()
        backend_module._clients.clear()  # runworker starts in a process of its own
        with caplog.at_level(logging.WARNING, logger="vtasks"):
            call_command("runworker", "--burst")
        warned = [r for r in caplog.records if "maxmemory-policy" in r.getMessage()]
        assert len(warned) == (0 if what is None else 1)
    finally:
        server.close()


def test_a_task_whose_record_vanished_is_counted_and_dropped(valkey, runs):
    client = vtasks.Client(valkey.url)
    ids = [client.enqueue_sync(sample_tasks.add, n, 0) for n in range(3)]
    if TARGET == "module":
        # The module holds the whole queue as one value: there is no task
        # key to lose (eviction takes a queue whole or not at all).
        assert command(valkey.port, "DEL", f"{{default}}:t:{ids[1]}") == 0
        assert burst(client).succeeded == 3
        assert client.stats_sync("default")["vanished"] == 0
        return
    # Evicted, or deleted by hand: its id stays in the ready set.
    assert command(valkey.port, "DEL", f"{{default}}:t:{ids[1]}") == 1
    worker = burst(client)
    assert worker.succeeded == 2
    assert run_counts(runs, "add") == {0: 1, 2: 1}
    stats = client.stats_sync("default")
    assert (stats["ready"], stats["leased"], stats["vanished"]) == (0, 0, 1)
