"""Prometheus metrics (``vtasks.metrics``, ``vtasks/metrics``, ``runworker
--metrics-port``), the readiness view, the health file, the per-task DEBUG
record and ``TASK_CONTEXT``, against a real valkey-server. Expositions are
read with prometheus-client's own parser."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from django.core.management import call_command
from django.tasks import TaskResultStatus, task_backends
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from vtasks.metrics import QUEUE_COUNTERS, QUEUE_GAUGES, QueueCollector, registry

from tests.conftest import free_port
from tests.django_project import tasks
from tests.test_django import point_tasks_at, run_worker_burst
from tests.test_runworker import processes, start_worker, wait_for  # noqa: F401


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


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition: (name, sorted labels) -> value."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def consecutive_free_ports(n: int) -> int:
    """The first of ``n`` consecutive ports free now."""
    import random
    import socket

    while True:
        first = random.randrange(20000, 60000)
        sockets = []
        try:
            for port in range(first, first + n):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def assert_queue_samples_are_the_stats(text: str, queues: list[str]) -> None:
    client = task_backends["default"].client
    found = samples(text)
    assert found[("vtasks_server_up", ())] == 1
    for queue in queues:
        stats = client.stats_sync(queue)
        label = (("queue", queue),)
        for field, name, _, scale in QUEUE_GAUGES:
            if field == "oldest_ready_age_ms":
                # It grows while the test reads it: at most the later reading.
                assert 0 <= found[(name, label)] <= stats[field] / 1000
            else:
                assert found[(name, label)] == stats[field] * scale, name
        for field, name, _ in QUEUE_COUNTERS:
            assert found[(f"{name}_total", label)] == stats[field], name


def fill_queues(runs: Path) -> None:
    """Tasks in every state the gauges count: done, dead, ready, delayed,
    and a paused queue."""
    for i in range(3):
        tasks.add.enqueue(i, i)
    tasks.fails.enqueue(1)
    run_worker_burst()
    tasks.add.enqueue(9, 9)
    tasks.add.using(run_after=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).enqueue(8, 8)
    tasks.send_email.enqueue(1)
    task_backends["default"].client.pause_sync("emails")


def test_queue_metrics_are_the_servers_stats(django_valkey, runs):
    fill_queues(runs)
    client = task_backends["default"].client
    text = generate_latest(registry(QueueCollector([(client, "default"), (client, "emails")]), process=False))
    text = text.decode()
    found = samples(text)
    assert found[("vtasks_queue_ready", (("queue", "default"),))] == 1
    assert found[("vtasks_queue_dead", (("queue", "default"),))] == 1
    assert found[("vtasks_queue_acked_total", (("queue", "default"),))] == 3
    assert found[("vtasks_queue_paused", (("queue", "emails"),))] == 1
    assert_queue_samples_are_the_stats(text, ["default", "emails"])


def test_an_unreachable_server_scrapes_as_down():
    from vtasks import Client

    text = generate_latest(registry(QueueCollector([(Client("valkey://127.0.0.1:1", connect_timeout=1), "q")]),
                                    process=False)).decode()
    assert samples(text)[("vtasks_server_up", ())] == 0


def test_the_metrics_view(django_valkey, runs, client):
    fill_queues(runs)
    response = client.get("/vtasks/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    assert_queue_samples_are_the_stats(response.content.decode(), ["default", "emails"])
    assert client.post("/vtasks/metrics").status_code == 405


def test_the_readiness_view(django_valkey, settings, client):
    response = client.get("/vtasks/ready")
    assert response.status_code == 200
    assert response.json() == {
        "ready": True, "backends": {"default": {"ready": True, "engine": task_backends["default"].client.engine}},
    }
    point_tasks_at(settings, "valkey://127.0.0.1:1", CONNECT_TIMEOUT=1)
    response = client.get("/vtasks/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["ready"] is False and body["backends"]["default"]["ready"] is False
    assert body["backends"]["default"]["error"].startswith("ConnectionFailed")


def test_runworker_serves_its_own_metrics_and_touches_its_health_file(django_valkey, runs, tmp_path):
    for i in range(3):
        tasks.add.enqueue(i, i)
    tasks.fails.enqueue(1)
    blocker = tasks.sleeps.enqueue(60)
    port = free_port()
    health = tmp_path / "health"
    seen: dict[str, object] = {}

    def watch() -> None:
        """While the last task runs: one scrape, the health file's state;
        then the task is released."""
        try:
            def running() -> bool:
                try:
                    text = scrape(port)
                except OSError:
                    return False
                found = samples(text)
                if found.get(("vtasks_worker_running_tasks", ())) == 1 and "django_sleeps" in runs.read_text():
                    seen["text"] = text
                    return True
                return False

            wait_for(running, "the worker to run its last task")
            seen["health"] = health.exists() and time.time() - health.stat().st_mtime < 30
        finally:
            Path(f"{runs}.release").touch()

    watcher = threading.Thread(target=watch)
    watcher.start()
    call_command(
        "runworker", "--metrics-port", str(port), "--metrics-addr", "127.0.0.1", "--health-file", str(health),
        "--concurrency", "1", "--max-tasks", "5",
    )
    watcher.join()
    assert tasks.sleeps.get_result(blocker.id).status == TaskResultStatus.SUCCESSFUL
    assert seen["health"] is True
    assert not health.exists()  # deleted when the worker stopped
    with pytest.raises(OSError):
        scrape(port)  # the metrics server stopped with the worker

    found = samples(str(seen["text"]))
    add = (("outcome", "succeeded"), ("task", "tests.django_project.tasks.add"))
    fails = (("outcome", "failed"), ("task", "tests.django_project.tasks.fails"))
    assert found[("vtasks_worker_task_duration_seconds_count", add)] == 3
    assert found[("vtasks_worker_task_duration_seconds_bucket", (("le", "+Inf"), *add))] == 3
    assert found[("vtasks_worker_task_duration_seconds_count", fails)] == 1
    assert 0 < found[("vtasks_worker_task_duration_seconds_sum", add)] < 30
    # Every task fetched so far came in a batch.
    fetched = found[("vtasks_worker_fetched_tasks_total", ())]
    assert fetched == 5 and found[("vtasks_worker_fetch_batch_size_sum", ())] == fetched
    assert found[("vtasks_worker_round_trips_total", ())] >= 1
    assert found[("vtasks_worker_connected", ())] == 1
    # The worker's queues, as the server counts them.
    assert found[("vtasks_queue_leased", (("queue", "default"),))] == 1
    assert found[("vtasks_queue_acked_total", (("queue", "default"),))] == 3
    assert ("process_cpu_seconds_total", ()) in found


def test_runworker_metrics_options_are_checked(django_valkey):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="is not a port"):
        call_command("runworker", "--metrics-port", "70000")
    port = free_port()
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        with pytest.raises(CommandError, match=f"--metrics-port {port}"):
            call_command("runworker", "--metrics-port", str(port), "--metrics-addr", "127.0.0.1", "--burst")


def test_each_process_serves_metrics_on_its_own_port_and_touches_its_own_health_file(
    valkey, settings, runs, tmp_path, processes  # noqa: F811
):
    point_tasks_at(settings, valkey.url, queues=["default"])
    for _ in range(2):
        tasks.sleeps.enqueue(60)
    port = consecutive_free_ports(2)
    health = tmp_path / "health"
    parent, log = start_worker(
        processes, tmp_path, valkey.url, "--processes", "2", "--concurrency", "1", "--burst",
        "--metrics-port", str(port), "--metrics-addr", "127.0.0.1", "--health-file", str(health),
    )

    def both_running() -> bool:
        try:
            return all(samples(scrape(p)).get(("vtasks_worker_running_tasks", ())) == 1 for p in (port, port + 1))
        except OSError:
            return False

    try:
        wait_for(both_running, f"both processes to run a task ({log})")
        assert Path(f"{health}.1").exists() and Path(f"{health}.2").exists() and not health.exists()
    finally:
        Path(f"{runs}.release").touch()
    assert parent.wait(timeout=30) == 0, log.read_text()
    assert not Path(f"{health}.1").exists() and not Path(f"{health}.2").exists()


def test_one_debug_record_per_task(django_valkey, runs, caplog):
    ok = tasks.add.enqueue(1, 2)
    failed = tasks.fails.enqueue(3)
    done = tasks.send_email.enqueue(4)
    with caplog.at_level(logging.DEBUG, logger="vtasks.task"):
        run_worker_burst()
    records = {r.task_id: r for r in caplog.records if r.name == "vtasks.task"}
    assert len(records) == 3
    first = records[ok.id.split("@")[0]]
    assert (first.task_name, first.queue, first.attempt, first.outcome) == (
        "tests.django_project.tasks.add", "default", 1, "succeeded",
    )
    assert first.levelno == logging.DEBUG and 0 < first.duration < 30
    assert f"attempt 1 succeeded in {first.duration:.6f} s" in first.getMessage()
    assert records[failed.id.split("@")[0]].outcome == "failed"
    assert records[done.id.split("@")[0]].queue == "emails"  # an async task

    caplog.clear()
    tasks.add.enqueue(1, 2)
    with caplog.at_level(logging.INFO, logger="vtasks.task"):
        run_worker_burst()
    assert not [r for r in caplog.records if r.name == "vtasks.task"]


def test_task_context_is_entered_around_sync_and_async_tasks(valkey, settings, runs):
    point_tasks_at(settings, valkey.url, TASK_CONTEXT="tests.django_project.context.task_scope")
    sync = tasks.in_context.enqueue(1)
    failing = tasks.in_context.enqueue(-1)
    run_worker_burst(concurrency=1, prefetch=0)
    assert tasks.in_context.get_result(sync.id).return_value == sync.id
    lines = runs.read_text().splitlines()
    entered = [line.split()[1:] for line in lines if line.startswith("context_enter ")]
    assert [e[:5] for e in entered] == [
        [r.id, r.id.split("@")[0], "tests.django_project.tasks.in_context", "default", "1"] for r in (sync, failing)
    ]
    assert [line for line in lines if line.startswith("context_exit")] == ["context_exit ok", "context_exit ValueError"]

    # An async task: a plain context manager, or an async one.
    asynchronous = tasks.in_context_async.enqueue(2)
    run_worker_burst()
    assert tasks.in_context_async.get_result(asynchronous.id).return_value == asynchronous.id
    point_tasks_at(settings, valkey.url, TASK_CONTEXT="tests.django_project.context.async_scope")
    asynchronous = tasks.in_context_async.enqueue(3)
    run_worker_burst()
    assert tasks.in_context_async.get_result(asynchronous.id).return_value == f"async {asynchronous.id}"
    assert "context_aexit ok" in runs.read_text()


def test_a_task_context_that_does_not_import_is_a_configuration_error(valkey, settings):
    from django.core.exceptions import ImproperlyConfigured
    from vtasks.django.worker import make_worker

    point_tasks_at(settings, valkey.url, TASK_CONTEXT="tests.django_project.context.nowhere")
    with pytest.raises(ImproperlyConfigured, match="TASK_CONTEXT"):
        make_worker(task_backends["default"])
