"""The Django Tasks backend and `runworker`, against a real valkey-server."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import os
import re
import subprocess
import sys
import threading
import time
from signal import SIGTERM

import pytest
import vtasks
from django.core.management import call_command
from django.tasks import TaskResultStatus, task_backends
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued, task_finished, task_started
from vtasks.django.checks import reaching_server
from vtasks.django.worker import make_worker

from tests.conftest import ROOT, ValkeyServer
from tests.django_project import tasks
from tests.test_worker import assert_final_as_they_end, ended_at, run_counts, wait_acked


@pytest.fixture
def runs(tmp_path, monkeypatch):
    path = tmp_path / "runs.txt"
    path.touch()
    monkeypatch.setenv("VTASKS_TEST_RUNS", str(path))
    return path


def point_tasks_at(settings, url: str, queues=("default", "emails"), **options) -> None:
    settings.TASKS = {
        "default": {
            "BACKEND": "vtasks.django.ValkeyTaskBackend",
            "QUEUES": list(queues),
            "OPTIONS": {"URL": url, **options},
        }
    }


@pytest.fixture
def django_valkey(valkey, settings):
    point_tasks_at(settings, valkey.url)
    return valkey


def run_worker_burst(**options) -> vtasks.Worker:
    worker = make_worker(task_backends["default"], burst=True, handle_signals=False, **options)
    asyncio.run(worker.run())
    return worker


def run_worker_until(result_id: str, status: TaskResultStatus, timeout: float = 30) -> None:
    """Runs a worker (not in burst mode: retries wait) until the task has `status`."""
    backend = task_backends["default"]
    worker = make_worker(backend, handle_signals=False, block=0.2)

    async def main():
        runner = asyncio.create_task(worker.run())
        while (await backend.aget_result(result_id)).status != status:
            await asyncio.sleep(0.05)
        await worker.close()
        await runner

    asyncio.run(asyncio.wait_for(main(), timeout))


def test_enqueue_and_get_result_through_every_status(django_valkey, runs):
    result = tasks.add.enqueue(2, 3)
    assert result.status == TaskResultStatus.READY
    assert re.fullmatch(r"[0-9a-f]{32}@default", result.id), "a random 128-bit task id, then the queue"
    fetched = tasks.add.get_result(result.id)
    assert (fetched.status, fetched.args, fetched.task.func) == (TaskResultStatus.READY, [2, 3], tasks.add.func)
    worker = run_worker_burst()
    done = tasks.add.get_result(result.id)
    assert done.status == TaskResultStatus.SUCCESSFUL
    assert done.return_value == 5
    assert done.worker_ids == [worker.consumer]
    assert done.attempts == 1
    assert done.enqueued_at <= done.started_at <= done.finished_at
    assert done.last_attempted_at is not None
    with pytest.raises(TaskResultDoesNotExist):
        tasks.add.get_result("no-such-id@default")
    with pytest.raises(TaskResultDoesNotExist):
        tasks.add.get_result("malformed")


def test_async_enqueue_is_native_and_async_tasks_run(django_valkey, runs):
    # A coroutine function, as Django's is, whose call is a coroutine that
    # asyncio can schedule as a task of its own.
    assert inspect.iscoroutinefunction(tasks.send_email.aenqueue)

    async def main():
        result = await tasks.send_email.aenqueue(7)
        assert result.status == TaskResultStatus.READY
        scheduled = await asyncio.create_task(tasks.send_email.aenqueue(8))
        assert scheduled.status == TaskResultStatus.READY
        return result.id

    rid = asyncio.run(main())
    assert rid.endswith("@emails")
    run_worker_burst()

    async def check():
        done = await tasks.send_email.aget_result(rid)
        assert done.return_value == "sent 7"
        await done.arefresh()

    asyncio.run(check())
    assert run_counts(runs, "django_send") == {7: 1, 8: 1}


def test_priority_orders_work_and_run_after_defers_it(django_valkey, runs):
    for n, priority in [(1, -10), (2, 0), (3, 50)]:
        tasks.ordered.using(priority=priority).enqueue(n)
    later = tasks.ordered.using(run_after=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).enqueue(99)
    run_worker_burst(concurrency=1, prefetch=0)
    lines = [line.split()[1] for line in runs.read_text().splitlines() if line.startswith("django_ordered")]
    assert lines == ["3", "2", "1"], "higher priority first"
    assert tasks.ordered.get_result(later.id).status == TaskResultStatus.READY, "not before run_after"


def test_takes_context_gets_the_attempt(django_valkey, runs):
    result = tasks.attempt_number.enqueue(1)
    run_worker_burst()
    assert tasks.attempt_number.get_result(result.id).return_value == 1


def test_signals_are_sent(django_valkey, runs):
    seen: list[tuple[str, str]] = []

    def receiver(name):
        def handle(sender, task_result, **kwargs):
            seen.append((name, task_result.status))

        return handle

    handlers = [receiver("enqueued"), receiver("started"), receiver("finished")]
    for signal, handler in zip((task_enqueued, task_started, task_finished), handlers, strict=True):
        signal.connect(handler)
    try:
        tasks.add.enqueue(1, 1)
        run_worker_burst()
    finally:
        for signal, handler in zip((task_enqueued, task_started, task_finished), handlers, strict=True):
            signal.disconnect(handler)
    assert seen == [
        ("enqueued", TaskResultStatus.READY),
        ("started", TaskResultStatus.RUNNING),
        ("finished", TaskResultStatus.SUCCESSFUL),
    ]


@pytest.mark.parametrize("tasks_logger_level", [None, "WARNING"])
def test_djangos_task_log_reaches_a_root_console_handler(django_valkey, runs, tasks_logger_level):
    # A common setup: a root console handler with no level of its own.
    # Django's receivers log each start and finish at INFO, which such a
    # handler prints, unless the django.tasks logger is set to WARNING.
    import io
    import logging

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root, tasks_logger = logging.getLogger(), logging.getLogger("django.tasks")
    level = tasks_logger.level
    root.addHandler(handler)
    if tasks_logger_level:
        tasks_logger.setLevel(tasks_logger_level)
    try:
        sync_result, async_result = tasks.add.enqueue(1, 2), tasks.send_email.enqueue(3)
        run_worker_burst()
    finally:
        root.removeHandler(handler)
        tasks_logger.setLevel(level)
    printed = stream.getvalue()
    for result in (sync_result, async_result):
        lines = [line for line in printed.splitlines() if result.id in line]
        if tasks_logger_level:
            assert lines == [], printed
        else:
            assert any("state=RUNNING" in line for line in lines), printed
            assert any("state=SUCCESSFUL" in line for line in lines), printed


def test_djangos_enqueue_log_reaches_a_handler_that_shows_debug(django_valkey, runs):
    # Django's receiver of task_enqueued logs at DEBUG; the backend skips
    # the signal only while no handler would show that record.
    import io
    import logging

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    tasks_logger = logging.getLogger("django.tasks")
    level = tasks_logger.level
    tasks_logger.addHandler(handler)
    tasks_logger.setLevel(logging.DEBUG)
    try:
        sync_result = tasks.add.enqueue(1, 2)
        async_result = asyncio.run(tasks.add.aenqueue(3, 4))
    finally:
        tasks_logger.removeHandler(handler)
        tasks_logger.setLevel(level)
    printed = stream.getvalue()
    for result in (sync_result, async_result):
        assert any(result.id in line and "enqueued" in line for line in printed.splitlines()), printed


@pytest.mark.parametrize("max_age", [0, None])
def test_sync_tasks_close_database_connections_as_a_request_does(
    django_valkey, runs, tmp_path, monkeypatch, django_db_blocker, max_age
):
    """Django's connection hygiene around each sync task: with
    ``CONN_MAX_AGE = 0`` the connection a task opened is closed when it
    ends, so the next task on the thread starts without one; a persistent
    connection (``None``) stays open for the next."""
    from django.db import connections

    database = connections.settings["default"]
    monkeypatch.setitem(database, "NAME", str(tmp_path / "db.sqlite3"))
    monkeypatch.setitem(database, "CONN_MAX_AGE", max_age)
    for n in range(3):
        tasks.database_state.enqueue(n)
    with django_db_blocker.unblock():
        assert run_worker_burst(concurrency=1).succeeded == 3
    seen = [line.split()[1:] for line in runs.read_text().splitlines() if line.startswith("django_db ")]
    assert [int(n) for n, _, _ in seen] == [0, 1, 2]
    # A connection belongs to its thread. At concurrency 1 the tasks run one
    # after the other, mostly on one thread; a task thread that waits for
    # the next batch itself may see it handed to another, so what each task
    # finds is judged by the thread it ran on.
    threads = [thread for _, thread, _ in seen]
    assert len(set(threads)) < 3, "each task ran on a thread of its own: no reused connection to judge"
    open_at_start = [int(state) for _, _, state in seen]
    expected = [0 if max_age == 0 or thread not in threads[:i] else 1 for i, thread in enumerate(threads)]
    assert open_at_start == expected


def test_a_failing_task_ends_failed_with_its_exception(django_valkey, runs):
    finished = []

    def receiver(sender, task_result, **kwargs):
        finished.append(task_result)

    task_finished.connect(receiver)
    try:
        result = tasks.fails.enqueue(4)
        vtasks_error = tasks.fails_in_vtasks.enqueue(5)
        worker = run_worker_burst(concurrency=1)
    finally:
        task_finished.disconnect(receiver)
    failed = tasks.fails.get_result(result.id)
    assert failed.status == TaskResultStatus.FAILED
    assert failed.errors[0].exception_class is ValueError
    assert "failed 4" in failed.errors[0].traceback
    with pytest.raises(ValueError, match="Task failed"):
        _ = failed.return_value
    assert worker.failed == 2
    # The worker's own result, as task_finished receivers see it.
    assert finished[0].status == TaskResultStatus.FAILED
    assert 'raise ValueError(f"failed {n}")' in finished[0].errors[0].traceback
    # An exception of the extension names a class that imports.
    assert tasks.fails_in_vtasks.get_result(vtasks_error.id).errors[0].exception_class is vtasks.QueueFull


def test_retries_follow_max_attempts_and_every_error_is_kept(valkey, settings, runs, caplog):
    point_tasks_at(settings, valkey.url, MAX_ATTEMPTS=3, RETRY_BACKOFF=0.01)
    finished: list[tuple[str, int]] = []

    def receiver(sender, task_result, **kwargs):
        finished.append((task_result.status, len(task_result.errors)))

    task_finished.connect(receiver)
    try:
        with caplog.at_level("INFO", logger="django.tasks"):
            result = tasks.fails.enqueue(5)
            run_worker_until(result.id, TaskResultStatus.FAILED)
    finally:
        task_finished.disconnect(receiver)
    assert run_counts(runs, "django_fails") == {5: 3}
    failed = tasks.fails.get_result(result.id)
    assert failed.attempts == 3
    assert [e.exception_class for e in failed.errors] == [ValueError] * 3, "one error per failed attempt"
    assert all('raise ValueError(f"failed {n}")' in e.traceback for e in failed.errors)
    # A retried attempt finishes READY (to run again), the last one FAILED.
    assert finished == [(TaskResultStatus.READY, 1), (TaskResultStatus.READY, 2), (TaskResultStatus.FAILED, 3)]
    states = [r.getMessage().rsplit("state=", 1)[1] for r in caplog.records if "state=" in r.getMessage()]
    assert states == ["RUNNING", "READY", "RUNNING", "READY", "RUNNING", "FAILED"], "a retry is not logged as FAILED"


def test_only_django_task_objects_run(django_valkey, runs):
    client = task_backends["default"].client
    for name in ("os.system", "tests.sample_tasks.record", "no.such.module.thing"):
        client.enqueue_payload_sync("default", vtasks.payloads.dumps({"task": name, "args": ["x"], "kwargs": {}}),
                                    id=name)
    worker = run_worker_burst()
    assert worker.dead_lettered == 3
    for name in ("os.system", "tests.sample_tasks.record", "no.such.module.thing"):
        state = client.get_sync("default", name)
        assert state.status == "dead"
        assert "Task" in state.error["message"] or "cannot import" in state.error["message"]
    assert runs.read_text() == "", "nothing ran"


def test_a_task_whose_module_fails_to_import_is_dead_lettered_and_the_worker_goes_on(django_valkey, runs):
    # Its module raises something other than ImportError while loading.
    client = task_backends["default"].client
    body = {"task": "tests.django_project.broken_tasks.job", "args": [], "kwargs": {}}
    client.enqueue_payload_sync("default", vtasks.payloads.dumps(body), id="broken")
    result = tasks.add.enqueue(1, 2)
    worker = run_worker_burst()
    assert worker.dead_lettered == 1
    state = client.get_sync("default", "broken")
    assert state.status == "dead"
    assert "cannot be loaded: RuntimeError: this module refuses to load" in state.error["message"]
    assert tasks.add.get_result(result.id).status == TaskResultStatus.SUCCESSFUL, "the worker went on"


def test_queue_names_are_validated(django_valkey):
    with pytest.raises(InvalidTask):
        tasks.add.using(queue_name="elsewhere").enqueue(1, 2)


def test_arguments_that_are_not_json_are_named(django_valkey):
    with pytest.raises(TypeError, match=r"argument 0 of task tests.django_project.tasks.add is not JSON: "
                                        r"dict key 1 is an int; JSON object keys are strings"):
        tasks.add.enqueue({1: "a"}, 2)
    with pytest.raises(TypeError, match=r"argument 'b' of task tests.django_project.tasks.add is not JSON at "
                                        r"\['x'\]: a set is not a JSON type \(use a list\)"):
        tasks.add.enqueue(1, b={"x": {1, 2}})
    with pytest.raises(TypeError, match="argument 1 .* is not JSON"):
        asyncio.run(tasks.add.aenqueue(1, {2: 3}))


def test_a_return_value_that_cannot_be_stored_fails_the_task_without_a_retry(valkey, settings, runs):
    point_tasks_at(settings, valkey.url, MAX_ATTEMPTS=3, RETRY_BACKOFF=0.01)
    result = tasks.returns_a_set.enqueue(3)
    worker = run_worker_burst()
    assert run_counts(runs, "django_returns_a_set") == {3: 1}, "ran once: its effects are not repeated"
    failed = tasks.returns_a_set.get_result(result.id)
    assert failed.status == TaskResultStatus.FAILED
    assert failed.errors[-1].exception_class is vtasks.ResultNotStored
    assert "ran, but its return value cannot be stored" in failed.errors[-1].traceback
    assert worker.dead_lettered == 1


def test_get_result_of_a_task_that_is_not_a_django_task(django_valkey):
    client = task_backends["default"].client
    for task_id, body in [("plain", {"task": "os.system", "args": [], "kwargs": {}}),
                          ("gone", {"task": "tests.django_project.tasks.removed", "args": [], "kwargs": {}})]:
        client.enqueue_payload_sync("default", vtasks.payloads.dumps(body), id=task_id)
        with pytest.raises(TaskResultDoesNotExist, match="not a Django task result"):
            tasks.add.get_result(f"{task_id}@default")


@reaching_server()
def test_system_checks_report_an_unreachable_server_and_the_engine(settings):
    point_tasks_at(settings, "valkey://user:secret@127.0.0.1:1", CONNECT_TIMEOUT=0.5)
    messages = task_backends["default"].check()
    assert [m.id for m in messages] == ["vtasks.E001"]
    assert messages[0].hint
    assert "secret" not in messages[0].msg and "user:***@" in messages[0].msg
    with reaching_server(False):
        assert task_backends["default"].check() == [], "the options are fine; the server is not reached"
    point_tasks_at(settings, "valkey://127.0.0.1:1", ENGINE="fast")
    assert [m.id for m in task_backends["default"].check()] == ["vtasks.E003"]
    plain = ValkeyServer(with_module=False)
    try:
        # Without the module: the scripts engine runs, and check says so...
        point_tasks_at(settings, plain.url)
        assert [m.id for m in task_backends["default"].check()] == ["vtasks.I001"]
        point_tasks_at(settings, plain.url, ENGINE="scripts")
        assert task_backends["default"].check() == []
        # ...unless the module is required.
        point_tasks_at(settings, plain.url, ENGINE="module")
        messages = task_backends["default"].check()
        assert [m.id for m in messages] == ["vtasks.E002"]
        assert "loadmodule" in messages[0].hint
    finally:
        plain.close()


def test_runworker_command_in_burst_mode(django_valkey, runs, capsys):
    for n in range(20):
        tasks.add.enqueue(n, n)
    call_command("runworker", "--burst", "--concurrency", "5", "--queue", "default")
    out = capsys.readouterr().out
    assert "20 succeeded" in out
    assert sorted(run_counts(runs, "django_add")) == list(range(20))
    with pytest.raises(Exception, match="not configured"):
        call_command("runworker", "--burst", "--queue", "nowhere")


def test_vtasks_options_on_the_standard_decorator(django_valkey, runs):
    assert tasks.fails_twice.max_attempts == 2
    result = tasks.fails_twice.enqueue(1)
    run_worker_until(result.id, TaskResultStatus.FAILED)
    assert run_counts(runs, "django_fails_twice") == {1: 2}, "max_attempts from @task"
    once = tasks.fails_twice.options(max_attempts=1)
    assert once.max_attempts == 1 and tasks.fails_twice.max_attempts == 2
    with pytest.raises(InvalidTask, match="max_attempts"):
        tasks.fails_twice.options(max_attempts=0).enqueue(1)


def test_a_timeout_fails_a_slow_async_task(django_valkey):
    result = tasks.too_slow.enqueue()
    started = dt.datetime.now(dt.UTC)
    run_worker_burst()
    failed = tasks.too_slow.get_result(result.id)
    assert failed.status == TaskResultStatus.FAILED
    assert failed.errors[0].exception_class is TimeoutError
    assert (dt.datetime.now(dt.UTC) - started).total_seconds() < 5


@pytest.mark.django_db(transaction=True)
def test_enqueue_on_commit_waits_for_the_transaction(valkey, settings, runs):
    from django.db import transaction

    point_tasks_at(settings, valkey.url, ENQUEUE_ON_COMMIT=True)
    client = task_backends["default"].client
    with transaction.atomic():
        kept = tasks.add.enqueue(1, 1)
        with pytest.raises(vtasks.NoSuchQueue):
            client.stats_sync("default")  # nothing sent yet
    assert client.stats_sync("default")["ready"] == 1
    assert tasks.add.get_result(kept.id).status == TaskResultStatus.READY
    with pytest.raises(RuntimeError), transaction.atomic():
        tasks.add.enqueue(2, 2)
        raise RuntimeError("rolled back")
    assert client.stats_sync("default")["ready"] == 1, "a rolled-back enqueue never happens"


def test_a_worker_embedded_in_the_asgi_lifespan(django_valkey, runs):
    from django.core.asgi import get_asgi_application
    from vtasks.django.asgi import with_worker

    app = with_worker(get_asgi_application(), concurrency=5, block=0.2)

    async def main():
        inbox: asyncio.Queue = asyncio.Queue()
        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        lifespan = asyncio.create_task(app({"type": "lifespan"}, inbox.get, send))
        await inbox.put({"type": "lifespan.startup"})
        while not sent:
            await asyncio.sleep(0.01)
        assert sent == [{"type": "lifespan.startup.complete"}]
        results = [await tasks.add.aenqueue(n, n) for n in range(10)]
        for result in results:
            while (await tasks.add.aget_result(result.id)).status != TaskResultStatus.SUCCESSFUL:
                await asyncio.sleep(0.02)
        await inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(lifespan, 10)
        assert sent[-1] == {"type": "lifespan.shutdown.complete"}

    asyncio.run(asyncio.wait_for(main(), 30))
    assert sorted(run_counts(runs, "django_add")) == list(range(10))


def test_arguments_go_as_django_normalizes_them(django_valkey, runs):
    first = tasks.refresh_cache.enqueue(b"home")
    assert first.args == ["home"]
    assert tasks.refresh_cache.enqueue("home").id == first.id, "a unique task's id is of the normalized arguments"
    assert tasks.refresh_cache.get_result(first.id).args == ["home"]
    run_worker_burst()
    assert tasks.refresh_cache.get_result(first.id).return_value == "home"


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((), {}), ((1, "a", 2.5, True, None), {"k": "v"}), ((b"x", (1, 2), [3, {"a": (4,)}]), {"b": b"y", "c": [1]})],
)
def test_enqueue_builds_the_result_djangos_constructor_builds(args, kwargs):
    from django.tasks import TaskResult
    from django.utils import timezone
    from django.utils.json import normalize_json
    from vtasks.django import backend
    from vtasks.django.backend import normalized_args, normalized_kwargs, task_result

    assert backend._BUILD_RESULTS, "Django's TaskResult has the fields task_result sets"
    json_args, json_kwargs = normalized_args(args), normalized_kwargs(kwargs)
    assert (json_args, json_kwargs) == (normalize_json(list(args)), normalize_json(dict(kwargs)))
    now = timezone.now()
    for status, started_at, worker_ids in ((TaskResultStatus.READY, None, []), (TaskResultStatus.RUNNING, now, ["w"])):
        built = task_result(
            tasks.add, "id@default", status, json_args, json_kwargs, "default", started_at=started_at,
            worker_ids=list(worker_ids),
        )
        expected = TaskResult(
            task=tasks.add, id="id@default", status=status, enqueued_at=None, started_at=started_at,
            last_attempted_at=started_at, finished_at=None, args=list(args), kwargs=dict(kwargs), backend="default",
            errors=[], worker_ids=list(worker_ids),
        )
        assert built == expected
        slots = TaskResult.__slots__
        assert [getattr(built, f) for f in slots] == [getattr(expected, f) for f in slots]
    again = task_result(tasks.add, "x@default", TaskResultStatus.READY, [], {}, "default")
    assert built.errors is not again.errors and built.worker_ids is not again.worker_ids, "lists are not shared"


def test_unique_tasks_in_mutex_and_throttle_modes(django_valkey, runs):
    enqueued = []

    def receiver(sender, task_result, **kwargs):
        enqueued.append(task_result.args)

    task_enqueued.connect(receiver)
    try:
        first = tasks.refresh_cache.enqueue("home")
        again = tasks.refresh_cache.enqueue("home")
        other = asyncio.run(tasks.refresh_cache.aenqueue("about"))
        asyncio.run(tasks.refresh_cache.aenqueue("about"))
    finally:
        task_enqueued.disconnect(receiver)
    assert enqueued == [["home"], ["about"]], "task_enqueued only for tasks enqueued"
    assert first.id == again.id != other.id
    assert task_backends["default"].client.stats_sync("default")["ready"] == 2, "the duplicate was not added"
    run_worker_burst()
    assert tasks.refresh_cache.get_result(first.id).return_value == "home"
    after = tasks.refresh_cache.enqueue("home")
    assert after.id == first.id
    assert tasks.refresh_cache.get_result(after.id).status == TaskResultStatus.READY, "a finished one is replaced"

    digest = tasks.send_digest.enqueue(7)
    assert tasks.send_digest.enqueue(7).id == digest.id
    run_worker_burst()
    assert tasks.send_digest.enqueue(7).id == digest.id
    assert tasks.send_digest.get_result(digest.id).status == TaskResultStatus.SUCCESSFUL, "still throttled"
    assert run_counts(runs, "django_digest") == {7: 1}
    with pytest.raises(InvalidTask, match="unique_period"):
        tasks.add.options(unique="throttle").enqueue(1, 1)


def test_get_result_reports_running_while_the_task_runs(django_valkey):
    result = tasks.slow.enqueue(1.0)
    worker = make_worker(task_backends["default"], handle_signals=False, burst=True, block=0.2)

    async def main():
        runner = asyncio.create_task(worker.run())
        seen = set()
        while not runner.done():
            seen.add((await tasks.slow.aget_result(result.id)).status)
            await asyncio.sleep(0.05)
        await runner
        return seen

    seen = asyncio.run(asyncio.wait_for(main(), 30))
    assert TaskResultStatus.RUNNING in seen
    running_then_done = tasks.slow.get_result(result.id)
    assert running_then_done.status == TaskResultStatus.SUCCESSFUL
    assert running_then_done.return_value == "slow done"


def test_runworker_worker_id_and_max_tasks(django_valkey, runs, capsys):
    for n in range(30):
        tasks.add.enqueue(n, n)
    call_command("runworker", "--concurrency", "1", "--max-tasks", "5", "--worker-id", "box-1")
    out = capsys.readouterr().out
    assert "vtasks worker box-1" in out
    assert sum(run_counts(runs, "django_add").values()) == 5
    call_command("runworker", "--max-tasks", "3")  # concurrency 20 and prefetch: still exactly 3
    assert sum(run_counts(runs, "django_add").values()) == 8
    stats = task_backends["default"].client.stats_sync("default")
    assert stats["leased"] == 0, "nothing left leased"
    assert (stats["acked"], stats["ready"]) == (8, 22)


def test_runworker_refuses_what_it_cannot_run(django_valkey):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="no task backend 'other' in settings.TASKS"):
        call_command("runworker", "--backend", "other")
    with pytest.raises(CommandError, match="--max-tasks must be at least 1"):
        call_command("runworker", "--max-tasks", "0")


def test_runworker_help_says_what_burst_waits_for():
    from vtasks.django.management.commands.runworker import Command

    text = " ".join(Command().create_parser("manage.py", "runworker").format_help().split())
    assert "failed tasks waiting for their retry stay queued" in text


def test_queues_are_served_in_the_order_of_the_setting(valkey, settings, runs, capsys):
    point_tasks_at(settings, valkey.url, queues=["high", "default", "low"])
    for n, queue in enumerate(["low", "default", "high"] * 2):
        tasks.ordered.using(queue_name=queue).enqueue(n)
    run_worker_burst(concurrency=1, prefetch=0)
    assert run_order(runs) == [2, 5, 1, 4, 0, 3], "high, then default, then low"
    runs.write_text("")
    for n, queue in enumerate(["low", "default", "high"]):
        tasks.ordered.using(queue_name=queue).enqueue(n)
    call_command("runworker", "--burst", "--concurrency", "1")
    assert "queues ['high', 'default', 'low']" in capsys.readouterr().out
    assert run_order(runs) == [2, 1, 0], "runworker without --queue: the setting's order"


def run_order(runs) -> list[int]:
    return [int(line.split()[1]) for line in runs.read_text().splitlines() if line.startswith("django_ordered")]


def start_runworker(url: str, runs) -> subprocess.Popen[bytes]:
    """`manage.py runworker` in a process of its own, with the test settings
    (the backend's default options) pointed at ``url``."""
    env = {**os.environ, "VTASKS_TEST_URL": url, "VTASKS_TEST_RUNS": str(runs),
           "DJANGO_SETTINGS_MODULE": "tests.django_project.settings"}
    return subprocess.Popen(
        [sys.executable, "-m", "django", "runworker", "--concurrency", "10"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def sleeps_runs(runs, kind: str) -> list[tuple[int, int, float]]:
    """(task number, pid, time) of each `tasks.sleeps_recorded` start or end."""
    out = []
    for line in runs.read_text().splitlines():
        k, _, rest = line.partition(" ")
        if k == f"django_sleeps_{kind}":
            n, pid, at = rest.split()
            out.append((int(n), int(pid), float(at)))
    return out


def test_a_sigkilled_worker_fails_nothing_and_a_replacement_finishes_its_tasks(django_valkey, settings, runs):
    # The defaults a new project gets (MAX_ATTEMPTS 1, a 30 s lease): a
    # worker killed mid-run (a deploy, the OOM killer) is not a task failure.
    results = [tasks.sleeps_recorded.enqueue(n, 1.5) for n in range(10)]
    first = start_runworker(django_valkey.url, runs)
    replacement = None
    try:
        deadline = time.monotonic() + 60
        while len({n for n, pid, _ in sleeps_runs(runs, "start") if pid == first.pid}) < 10:
            assert time.monotonic() < deadline, "the first worker never started all ten"
            time.sleep(0.02)
        # A replacement is up (as a supervisor or a second replica would
        # have it) when the first worker is killed mid-run.
        replacement = start_runworker(django_valkey.url, runs)
        first.kill()
        first.wait()
        killed_at = time.time()
        deadline = time.monotonic() + 60
        while len({n for n, _, _ in sleeps_runs(runs, "done")}) < 10:
            assert time.monotonic() < deadline, f"finished: {sleeps_runs(runs, 'done')}"
            time.sleep(0.05)
        # And acknowledged (the outcomes travel with the worker's next fetch).
        backend = task_backends["default"]
        while any(backend.get_result(r.id).status != TaskResultStatus.SUCCESSFUL for r in results):
            assert time.monotonic() < deadline, [backend.get_result(r.id).status for r in results]
            time.sleep(0.05)
    finally:
        for process in (first, replacement):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    done = sleeps_runs(runs, "done")
    assert all(pid == replacement.pid for _, pid, _ in done), "the killed worker finished none"
    assert sorted(n for n, _, _ in done) == list(range(10)), "each ran to the end once"
    late = max(at for _, _, at in done) - killed_at
    assert late < 10, f"the replacement finished the last one {late:.1f} s after the kill"
    for result in results:
        final = backend.get_result(result.id)
        assert final.status == TaskResultStatus.SUCCESSFUL, (final.status, final.errors)
        assert final.attempts == 2
        state = backend.client.get_sync("default", result.id.split("@")[0])
        assert state is not None
        assert (state.failed_attempts, state.lost_leases, state.max_lost_leases) == (0, 1, 3)

def test_an_async_task_cut_off_at_shutdown_reports_no_outcome(django_valkey, caplog):
    result = tasks.slow.enqueue(30)
    worker = make_worker(task_backends["default"], handle_signals=False, block=0.2, grace=0.2)
    finished = []

    def receiver(sender, task_result, **kwargs):
        finished.append(task_result.status)

    async def main():
        runner = asyncio.create_task(worker.run())
        while (await tasks.slow.aget_result(result.id)).status != TaskResultStatus.RUNNING:
            await asyncio.sleep(0.02)
        await worker.close()
        await runner

    task_finished.connect(receiver)
    try:
        with caplog.at_level("WARNING", logger="vtasks"):
            asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        task_finished.disconnect(receiver)
    assert finished == [], "no outcome: the lease decides"
    assert "still running after the 0.2 s grace period" in caplog.text
    assert tasks.slow.get_result(result.id).status == TaskResultStatus.RUNNING, "still leased, nothing recorded"


def test_delayed_tasks_falling_due_together_are_final_as_they_end(django_valkey, runs):
    """Sync tasks with one run_after falling due together into an idle
    worker on the default options, batch after batch: each result is final
    as its task ends, not when the worker's next fetch returns."""
    backend = task_backends["default"]
    worker = make_worker(backend, handle_signals=False)
    rounds, per_round = 8, 20
    result_ids: dict[int, str] = {}

    async def main():
        runner = asyncio.create_task(worker.run())
        for r in range(rounds):
            run_after = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.5)
            delayed = tasks.timed.using(run_after=run_after)
            for i in range(per_round):
                n = r * per_round + i
                result_ids[n] = (await delayed.aenqueue(n, 0.02 + i * 0.001)).id
            await wait_acked(backend.client, "default", (r + 1) * per_round)
        await worker.close()
        await runner

    asyncio.run(asyncio.wait_for(main(), 100))
    ends = ended_at(runs, "django_timed")
    finished = {n: tasks.timed.get_result(rid).finished_at for n, rid in result_ids.items()}
    assert_final_as_they_end({n: finished[n].timestamp() - ends[n] for n in result_ids})


def capped_span(results: list) -> float:
    """Seconds from the first start to the last finish of these tasks,
    which must all have succeeded."""
    done = [tasks.newsletter.get_result(r.id) for r in results]
    assert {d.status for d in done} == {TaskResultStatus.SUCCESSFUL}
    return (max(d.finished_at for d in done) - min(d.started_at for d in done)).total_seconds()


def test_runworker_serves_a_capped_queue_as_its_cap_frees(valkey, settings, runs):
    """README settings: 100 ten-millisecond tasks on a queue capped at 5,
    `runworker --concurrency 20`. The worker must not wait in a blocking
    fetch on the other queue (5 s) while the capped one has work and room."""
    point_tasks_at(settings, valkey.url, QUEUE_CONCURRENCY={"emails": 5})
    results = [tasks.newsletter.enqueue(n) for n in range(100)]
    client = task_backends["default"].client
    finished = threading.Event()

    def stop_once_done() -> None:
        deadline = time.monotonic() + 60
        while client.stats_sync("emails")["acked"] < 100 and time.monotonic() < deadline:
            time.sleep(0.02)
        if not finished.is_set():
            os.kill(os.getpid(), SIGTERM)  # runworker's graceful stop

    threading.Thread(target=stop_once_done, daemon=True).start()
    try:
        call_command("runworker", "--concurrency", "20")
    finally:
        finished.set()
    assert sorted(run_counts(runs, "django_newsletter")) == list(range(100))
    span = capped_span(results)
    assert span < 3, f"100 tasks took {span:.1f} s: the worker waited out a 5 s fetch"


def test_the_asgi_worker_serves_a_capped_queue_as_its_cap_frees(valkey, settings, runs):
    from django.core.asgi import get_asgi_application
    from vtasks.django.asgi import with_worker

    point_tasks_at(settings, valkey.url, QUEUE_CONCURRENCY={"emails": 5})
    results = [tasks.newsletter.enqueue(n) for n in range(100)]
    client = task_backends["default"].client
    app = with_worker(get_asgi_application(), concurrency=20)

    async def main():
        inbox: asyncio.Queue = asyncio.Queue()
        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        lifespan = asyncio.create_task(app({"type": "lifespan"}, inbox.get, send))
        await inbox.put({"type": "lifespan.startup"})
        await wait_acked(client, "emails", 100)
        await inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(lifespan, 30)
        assert sent == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]

    asyncio.run(asyncio.wait_for(main(), 90))
    assert sorted(run_counts(runs, "django_newsletter")) == list(range(100))
    span = capped_span(results)
    assert span < 3, f"100 tasks took {span:.1f} s: the worker waited out a 5 s fetch"
