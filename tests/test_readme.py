"""What the README tells a project to do for its own tests works as it
says: Django's immediate backend for unit tests, and a database index per
test run on a shared server (on the module and on the scripts engine)."""

from __future__ import annotations

import asyncio
import time

import pytest
import vtasks
from django.core.management import call_command
from django.tasks import TaskResultStatus, task_backends

from tests import sample_tasks
from tests.chaos.harness import command_pipeline
from tests.django_project import tasks
from tests.test_django import point_tasks_at


def test_the_immediate_backend_runs_plain_tasks_at_enqueue(settings, runs):
    settings.TASKS = {"default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"}}
    result = tasks.add.enqueue(2, 3)
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 5
    assert runs.read_text().split() == ["django_add", "2"]


@pytest.fixture
def runs(tmp_path, monkeypatch):
    path = tmp_path / "runs.txt"
    path.touch()
    monkeypatch.setenv("VTASKS_TEST_RUNS", str(path))
    return path


def test_a_database_per_test_run_keeps_runs_apart(valkey, settings, runs):
    # Two concurrent test runs share one server, each with its database.
    first, second = f"{valkey.url}/1", f"{valkey.url}/2"
    point_tasks_at(settings, first)
    result = tasks.add.enqueue(2, 3)
    other = vtasks.Client(second)
    other.enqueue_call_sync(sample_tasks.add, (7, 7), queue="default")
    assert other.stats_sync("default")["ready"] == 1
    call_command("runworker", "--burst")
    assert tasks.add.get_result(result.id).status == TaskResultStatus.SUCCESSFUL
    assert runs.read_text().split() == ["django_add", "2"], "only the first database's task ran"
    assert other.stats_sync("default")["ready"] == 1, "the other run's task is untouched"
    # Emptying one run's database before its next test leaves the other's.
    assert command_pipeline(valkey.port, [("SELECT", 1), ("FLUSHDB",)]) == ["OK", "OK"]
    assert task_backends["default"].client.get_sync("default", result.id.partition("@")[0]) is None
    assert other.stats_sync("default")["ready"] == 1


def test_delayed_tasks_fall_due_in_any_database(valkey, runs):
    client = vtasks.Client(f"{valkey.url}/3")
    task_id = client.enqueue_call_sync(sample_tasks.add, (1, 2), delay=0.3)
    assert client.get_sync("default", task_id).status == "delayed"
    # The worker's fetch blocks for a minute: the task can only run before
    # the deadline if the server (module timer, or the scripts' wake-up)
    # hands it out when it falls due in database 3.
    worker = vtasks.Worker(client, block=60.0, handle_signals=False)

    async def until_done() -> None:
        runner = asyncio.create_task(worker.run())
        deadline = time.monotonic() + 30
        while (await client.get("default", task_id)).status != "done":
            assert time.monotonic() < deadline, "the delayed task never ran"
            await asyncio.sleep(0.02)
        await worker.close()
        await runner

    asyncio.run(until_done())
    assert runs.read_text().split() == ["add", "1"]
