"""``manage.py vtasks``: every subcommand against a real valkey-server."""

from __future__ import annotations

import datetime as dt
import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.tasks import TaskResultStatus, task_backends
from django.tasks.exceptions import TaskResultDoesNotExist

from tests import sample_tasks
from tests.django_project import tasks
from tests.test_django import point_tasks_at, run_worker_burst


@pytest.fixture
def runs(tmp_path, monkeypatch):
    path = tmp_path / "runs.txt"
    path.touch()
    monkeypatch.setenv("VTASKS_TEST_RUNS", str(path))
    return path


@pytest.fixture
def django_valkey(valkey, settings):
    point_tasks_at(settings, valkey.url)
    return valkey


def vtasks_command(*args: str) -> str:
    out = io.StringIO()
    call_command("vtasks", *args, stdout=out)
    return out.getvalue()


def stats_of(queue: str) -> dict[str, int]:
    return task_backends["default"].client.stats_sync(queue)


def dead_letters(n: int) -> list[str]:
    """``n`` tasks of ``fails`` run and dead-lettered, one after the other
    (one attempt each, the default); their result ids."""
    ids = [tasks.fails.enqueue(i).id for i in range(n)]
    run_worker_burst(concurrency=1, prefetch=0)  # they die in order
    assert {tasks.fails.get_result(i).status for i in ids} == {TaskResultStatus.FAILED}
    return ids


def table_rows(output: str) -> dict[str, list[str]]:
    """The rows of a table, by their first cell."""
    return {line.split()[0]: line.split() for line in output.splitlines()[2:] if line.strip()}


def test_stats_is_a_table_of_every_configured_queue(django_valkey, runs):
    tasks.add.enqueue(1, 2)
    tasks.add.enqueue(3, 4)
    dead_letters(1)
    tasks.send_email.enqueue(1)
    output = vtasks_command("stats")
    assert output.splitlines()[1].split()[:5] == ["QUEUE", "READY", "DELAYED", "RUNNING", "DEAD"]
    rows = table_rows(output)
    # The run of `fails` also ran both adds (the burst worker drains `default`).
    s = stats_of("default")
    assert rows["default"][1:6] == [str(s["ready"]), "0", "0", "1", str(s["done"])]
    assert rows["default"][-4:-3] == ["no"] and rows["emails"][1] == "1"
    assert rows["default"][-3:] == [str(s["enqueued"]), str(s["acked"]), str(s["failed"])]


def test_stats_watch_redraws_with_rates(django_valkey):
    output = vtasks_command("stats", "--watch", "--interval", "0.05", "--count", "2")
    frames = [f for f in output.split("vtasks backend") if f.strip()]
    assert len(frames) == 2
    assert "ENQUEUED/S" in frames[0]
    # The first frame has no earlier reading; the second has a rate.
    assert table_rows("x" + frames[0])["default"][-3:] == ["-", "-", "-"]
    assert table_rows("x" + frames[1])["default"][-3:] == ["0.0", "0.0", "0.0"]


def test_pause_and_resume(django_valkey):
    assert "paused default" in vtasks_command("pause", "default")
    assert stats_of("default")["paused"] == 1
    assert table_rows(vtasks_command("stats"))["default"][-4] == "yes"
    assert "resumed default" in vtasks_command("resume", "default")
    assert stats_of("default")["paused"] == 0


def test_dead_list_retry_and_purge(django_valkey, runs):
    ids = dead_letters(3)
    listed = vtasks_command("dead", "list", "default", "--traceback")
    assert "default: 3 dead letters, showing 1-3 (newest first)" in listed
    assert "tests.django_project.tasks.fails" in listed
    assert "builtins.ValueError: failed 2" in listed and "Traceback (most recent call last)" in listed
    # Newest first, paged.
    page = vtasks_command("dead", "list", "default", "--offset", "1", "--limit", "1")
    assert "showing 2-2" in page and "failed 1" in page and "failed 2" not in page

    first = ids[0].split("@")[0]
    assert "1 dead letter of default back in the queue" in vtasks_command("dead", "retry", "default", first)
    assert tasks.fails.get_result(ids[0]).status == TaskResultStatus.READY
    assert "2 dead letters of default back in the queue" in vtasks_command("dead", "retry", "default", "--all")
    assert stats_of("default")["dead"] == 0 and stats_of("default")["ready"] == 3

    run_worker_burst()
    assert "1 dead letter of default purged" in vtasks_command("dead", "purge", "default", first)
    with pytest.raises(CommandError, match="confirm at a terminal, or pass --yes"):
        vtasks_command("dead", "purge", "default", "--all")
    assert stats_of("default")["dead"] == 2
    assert "2 dead letters of default purged" in vtasks_command("dead", "purge", "default", "--all", "--yes")
    assert stats_of("default")["dead"] == 0
    with pytest.raises(CommandError, match="give task ids or --all"):
        vtasks_command("dead", "retry", "default")


def fields(output: str) -> dict[str, str]:
    """The ``name  value`` lines of ``vtasks task``."""
    found = {}
    for line in output.splitlines():
        name, sep, value = line.partition("  ")
        if sep and name and not name.startswith(" "):
            found[name] = value.strip()
    return found


def test_task_shows_a_finished_task_and_a_failed_one(django_valkey, runs):
    done = tasks.add.enqueue(2, 3)
    failed = dead_letters(1)[0]
    shown = fields(vtasks_command("task", done.id))
    assert shown["result id"] == done.id and shown["task"] == "tests.django_project.tasks.add"
    assert (shown["args"], shown["kwargs"], shown["status"], shown["result"]) == ("[2,3]", "{}", "done", "5")
    assert shown["attempts"] == "1 started, 0 of 1 failed, 0 of 3 lost"
    assert shown["workers"] and shown["finished"] != "-"
    output = vtasks_command("task", failed)
    assert fields(output)["status"] == "dead" and "result" not in fields(output)
    assert "attempt 1: builtins.ValueError: failed 0" in output and "Traceback" in output


def test_cancel_a_waiting_task_and_not_a_finished_one(django_valkey, runs):
    waiting = tasks.add.enqueue(1, 1)
    assert f"cancelled {waiting.id}" in vtasks_command("cancel", waiting.id)
    with pytest.raises(CommandError, match="no task"):
        vtasks_command("task", waiting.id)
    done = tasks.add.enqueue(1, 2)
    run_worker_burst()
    with pytest.raises(CommandError, match="is done: only a waiting task can be cancelled"):
        vtasks_command("cancel", done.id)


def test_purge_deletes_waiting_tasks_and_keeps_the_rest(django_valkey, runs):
    dead = dead_letters(1)[0]
    done = tasks.add.enqueue(1, 2)
    run_worker_burst()
    ready = [tasks.add.enqueue(i, i) for i in range(3)]
    later = tasks.add.using(run_after=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).enqueue(9, 9)
    unique = tasks.refresh_cache.enqueue("k")
    with pytest.raises(CommandError, match="not purged: confirm at a terminal, or pass --yes"):
        vtasks_command("purge", "default")
    assert stats_of("default")["ready"] == 4

    assert "5 waiting tasks purged from default" in vtasks_command("purge", "default", "--yes")
    counts = stats_of("default")
    assert (counts["ready"], counts["delayed"], counts["dead"], counts["done"]) == (0, 0, 1, 1)
    assert counts["cancelled"] == 5
    # A purged task answers as a cancelled one: no result any more.
    cancelled = tasks.add.enqueue(5, 5)
    vtasks_command("cancel", cancelled.id)
    for result in [*ready, later, unique, cancelled]:
        with pytest.raises(TaskResultDoesNotExist):
            tasks.add.get_result(result.id)
    assert tasks.add.get_result(done.id).status == TaskResultStatus.SUCCESSFUL
    assert tasks.fails.get_result(dead).status == TaskResultStatus.FAILED
    # A unique task's key is free again, as after a cancel.
    again = tasks.refresh_cache.enqueue("k")
    assert again.id == unique.id and stats_of("default")["ready"] == 1
    assert "emails has no waiting tasks" in vtasks_command("purge", "emails")


def test_purge_asks_at_a_terminal(django_valkey, monkeypatch):
    from vtasks.django.subcommands import purge

    tasks.add.enqueue(1, 1)
    tasks.add.enqueue(2, 2)
    asked: list[str] = []
    answers = iter(["n", "y"])

    def answer(question: str) -> str:
        asked.append(question)
        return next(answers)

    monkeypatch.setattr(purge, "interactive", lambda: True)
    monkeypatch.setattr("vtasks.django.subcommands._table.interactive", lambda: True)
    monkeypatch.setattr("builtins.input", answer)
    assert "not purged" in vtasks_command("purge", "default")
    assert stats_of("default")["ready"] == 2
    assert "2 waiting tasks purged from default" in vtasks_command("purge", "default")
    assert asked == ["Purge 2 waiting tasks from queue 'default'? [y/N] "] * 2
    assert stats_of("default")["ready"] == 0


def test_purge_of_more_than_one_batch(django_valkey):
    client = task_backends["default"].client
    for first in (0, 6_000):
        calls = [((i, i), {}) for i in range(first, first + 6_000)]
        client.enqueue_many_sync(sample_tasks.add, calls, queue="default")
    assert stats_of("default")["ready"] == 12_000
    assert "12000 waiting tasks purged from default" in vtasks_command("purge", "default", "--yes")
    assert stats_of("default")["ready"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("stats", "--backend", "other"), "no vtasks task backend 'other'"),
        (("pause", "nowhere"), "queue 'nowhere' is not configured for backend 'default'"),
        (("dead", "list", "nowhere"), "queue 'nowhere' is not configured"),
        (("task", "not-a-result-id"), "is not a vtasks result id"),
        (("cancel", "abc@default"), "no task abc@default"),
        (("purge", "nowhere", "--yes"), "queue 'nowhere' is not configured for backend 'default'"),
        (("purge",), "the following arguments are required: QUEUE"),
        (("stats", "--watch", "--interval", "0"), "--interval must be positive"),
        (("frobnicate",), "invalid choice"),
        (("dead",), "the following arguments are required"),
    ],
)
def test_mistakes_are_command_errors(django_valkey, args, message):
    with pytest.raises(CommandError, match=message):
        vtasks_command(*args)


def test_an_unreachable_server_is_a_command_error(settings):
    point_tasks_at(settings, "valkey://127.0.0.1:1", CONNECT_TIMEOUT=1)
    with pytest.raises(CommandError, match="127.0.0.1:1"):
        vtasks_command("stats")
