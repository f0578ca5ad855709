"""`manage.py runworker` as a process: stopping with signals, and what the
log says about tasks still running when it stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import vtasks
from django.tasks import TaskResultStatus

from tests.conftest import ROOT
from tests.django_project import tasks
from tests.test_django import point_tasks_at, run_worker_burst


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "runs.txt"
    path.touch()
    monkeypatch.setenv("VTASKS_TEST_RUNS", str(path))
    return path


def wait_for(condition, what: str, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def processes():
    """Worker processes a test starts; any still running at its end is killed."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def start_worker(
    processes: list[subprocess.Popen[bytes]], tmp_path: Path, url: str, *args: str
) -> tuple[subprocess.Popen[bytes], Path]:
    """``runworker`` in its own process, with a 1 s lease; its log goes to a file."""
    (tmp_path / "worker_settings.py").write_text(
        "from tests.django_project.settings import *  # noqa: F403\n"
        "TASKS = {'default': {'BACKEND': 'vtasks.django.ValkeyTaskBackend', 'QUEUES': ['default', 'emails'],\n"
        f"                     'OPTIONS': {{'URL': {url!r}, 'LEASE': 1}}}}}}\n"
    )
    log = tmp_path / "worker.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
           "DJANGO_SETTINGS_MODULE": "worker_settings"}
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "django", "runworker", *args], env=env, cwd=tmp_path,
                                   stdout=out, stderr=subprocess.STDOUT)
    processes.append(process)
    return process, log


def stop_and_check(process: subprocess.Popen[bytes], log: Path, result_id: str, said: str) -> None:
    # Well before the task's 60 s sleep ends (and the 30 s grace).
    process.wait(timeout=20)
    text = log.read_text()
    assert said in text, text
    assert f"task {result_id.split('@')[0]} in default" in text
    assert "lease is no longer renewed" in text
    # Its lease runs out (the scripts engine notices at a fetch: a burst
    # worker makes one, and runs the task at once if it is retried); the
    # server's text is kept in the result's errors.
    Path(os.environ["VTASKS_TEST_RUNS"] + ".release").touch()
    run_worker_burst()
    result = tasks.sleeps.get_result(result_id)
    assert result.status in (TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED)
    lost = [e for e in result.errors if e.exception_class is vtasks.LeaseLost]
    assert lost and lost[0].traceback.startswith("vtasks.LeaseLost: lease "), result.errors


def test_a_second_signal_stops_the_worker_at_once(valkey, settings, runs, tmp_path, processes):
    point_tasks_at(settings, valkey.url, queues=["default"])
    result = tasks.sleeps.enqueue(60)
    process, log = start_worker(processes, tmp_path, valkey.url)
    wait_for(lambda: "django_sleeps" in runs.read_text(), f"the task to start ({log})")
    process.send_signal(signal.SIGINT)
    wait_for(lambda: "stopping: no new tasks" in log.read_text(), "the graceful stop")
    process.send_signal(signal.SIGINT)
    stop_and_check(process, log, result.id, "is still running at a forced stop")


def test_a_sync_task_running_past_the_grace_period_is_reported(valkey, settings, runs, tmp_path, processes):
    point_tasks_at(settings, valkey.url, queues=["default"])
    result = tasks.sleeps.enqueue(60)
    process, log = start_worker(processes, tmp_path, valkey.url, "--grace", "0.5")
    wait_for(lambda: "django_sleeps" in runs.read_text(), "the task to start")
    process.send_signal(signal.SIGTERM)
    stop_and_check(process, log, result.id, "is still running after the 0.5 s grace period")
    assert "a sync task cannot be interrupted" in log.read_text()


def test_a_worker_without_schedules_does_not_load_them(valkey, tmp_path):
    """The schedule classes cost start-up milliseconds: a worker whose
    settings have no SCHEDULES runs without importing them (and one with
    SCHEDULES does)."""
    script = (
        "import sys, django\n"
        "from django.core.management import call_command\n"
        "django.setup()\n"
        "call_command('runworker', '--burst')\n"
        "print('schedules loaded:', 'vtasks.schedules' in sys.modules)\n"
    )
    for schedules, expected in ((None, False), ({}, True)):
        options = {"URL": valkey.url, **({} if schedules is None else {"SCHEDULES": schedules})}
        (tmp_path / "plain_settings.py").write_text(
            "from tests.django_project.settings import *  # noqa: F403\n"
            f"TASKS = {{'default': {{'BACKEND': 'vtasks.django.ValkeyTaskBackend', 'OPTIONS': {options!r}}}}}\n"
        )
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
               "DJANGO_SETTINGS_MODULE": "plain_settings"}
        out = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert f"schedules loaded: {expected}" in out.stdout, (schedules, out.stdout, out.stderr)
