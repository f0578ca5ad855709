"""Periodic schedules kept by the server, from Python and Django: the plain
client API, Django's SCHEDULES applied at worker start and by
``manage.py vtasks schedules``, and three ``runworker`` processes serving a
per-second schedule (every second enqueued once, none missing; a server
restart with AOF in the middle; a schedule edited and removed while they
run; a catch-up after the server was down for three occurrences)."""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import vtasks
from django.core.management import call_command
from django.core.management.base import CommandError
from django.tasks import TaskResultStatus, task_backends
from vtasks.schedules import Schedule, timing

from tests.conftest import ROOT
from tests.test_django import point_tasks_at, run_worker_burst

TICK = "tests.django_project.tasks.tick"
# How long the multi-process scenarios run: short in CI, 10 s in `make chaos`.
SECONDS = int(os.environ.get("VTASKS_SCHEDULE_SECONDS", "4"))


def wait_for(condition, what: str, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "runs.txt"
    path.touch()
    monkeypatch.setenv("VTASKS_TEST_RUNS", str(path))
    return path


def ticks(runs: Path) -> list[tuple[int, str]]:
    """(occurrence ms, pid) of every run of `tick`, in the order they ran."""
    out = []
    for line in runs.read_text().splitlines():
        if line.startswith("django_tick "):
            _, result_id, pid = line.split()
            out.append((int(re.fullmatch(r"schedule:[^:]+:(\d+)@.*", result_id).group(1)), pid))  # type: ignore[union-attr]
    return out


# The plain client --------------------------------------------------------------


def test_a_client_defines_lists_and_removes_schedules(valkey):
    client = vtasks.Client(valkey.url)
    nightly = Schedule("nightly", "reports.nightly", timing(cron="0 3 * * *", timezone="Europe/Berlin"),
                       kwargs={"full": True}, priority=5, max_attempts=2)
    assert client.set_schedule_sync(nightly) == "added"
    assert client.set_schedule_sync(nightly) == "unchanged"
    # A zone's name in another case is the same zone, stored as the database spells it.
    respelled = Schedule("nightly", "reports.nightly", timing(cron="0 3 * * *", timezone="europe/BERLIN"),
                         kwargs={"full": True}, priority=5, max_attempts=2)
    assert client.set_schedule_sync(respelled) == "unchanged"
    beat = Schedule("beat", "app.beat", timing(every=30), queue="default", catch_up="none")
    assert client.set_schedule_sync(beat) == "added"
    listed = client.schedules_sync("default")
    assert [s.name for s in listed] == ["beat", "nightly"]
    info = listed[1]
    assert info.timing == "cron Europe/Berlin 0 3 * * *"
    assert (info.task, info.args, info.kwargs) == ("reports.nightly", [], {"full": True})
    assert (info.priority, info.max_attempts, info.catch_up, info.enabled) == (5, 2, "last", True)
    assert info.next_run is not None and info.next_run > dt.datetime.now(dt.UTC)
    assert info.next_run.astimezone(dt.timezone(dt.timedelta(hours=1))).hour in (3, 4)
    assert info.last_run is None and info.runs == 0
    assert listed[0].next_run is not None and listed[0].next_run.timestamp() % 30 == 0
    changed = Schedule("nightly", "reports.nightly", timing(cron="0 4 * * *", timezone="Europe/Berlin"))
    assert client.set_schedule_sync(changed) == "changed"
    assert client.unschedule_sync("default", "beat", "nosuch") == 1
    assert [s.name for s in client.schedules_sync()] == ["nightly"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cron": "0 3 * *"}, "has 4 fields"),
        ({"cron": "61 * * * *"}, "invalid cron expression"),
        ({"cron": "0 3 * * *", "timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"every": 0}, "every must be between 1"),
        ({"cron": "0 3 * * *", "every": 5}, "exactly one of cron and every"),
        ({"cron": "0 0 30 2 *"}, "never occurs"),
    ],
)
def test_an_invalid_timing_is_refused_with_its_reason(valkey, kwargs, message):
    client = vtasks.Client(valkey.url)
    with pytest.raises((ValueError, vtasks.InvalidArgument), match=message):
        client.set_schedule_sync(Schedule("bad", "app.t", timing(**kwargs)))
    assert client.schedules_sync() == []


# Django ---------------------------------------------------------------------------


SCHEDULES = {
    "nightly-report": {"task": "tests.django_project.tasks.add", "cron": "0 3 * * *", "timezone": "Europe/Berlin",
                       "args": [1, 2]},
    "heartbeat": {"task": "tests.django_project.tasks.newsletter", "every": 30, "args": [7]},
    "fast": {"task": TICK, "cron": "*/5 * * * * *", "catch_up": "none", "priority": 9},
}


def test_django_settings_are_the_truth_when_applied(valkey, settings):
    point_tasks_at(settings, valkey.url, SCHEDULES=SCHEDULES)
    out = io.StringIO()
    call_command("vtasks", "schedules", "apply", stdout=out)
    assert "3 added, 0 changed, 0 unchanged, 0 removed" in out.getvalue()
    client = task_backends["default"].client
    by_name = {s.name: s for s in client.schedules_sync("default", "emails")}
    assert by_name["heartbeat"].queue == "emails", "the task's own queue"
    assert by_name["fast"].priority == 9 and by_name["fast"].catch_up == "none"
    assert by_name["nightly-report"].max_attempts == 1, "the backend's MAX_ATTEMPTS"
    # Changed, removed, and one added by hand on a queue the settings own.
    client.set_schedule_sync(Schedule("by-hand", "x.y", timing(every=60)))
    point_tasks_at(settings, valkey.url, SCHEDULES={
        "nightly-report": {**SCHEDULES["nightly-report"], "cron": "30 3 * * *"},
        "fast": SCHEDULES["fast"],
    })
    out = io.StringIO()
    call_command("vtasks", "schedules", "apply", stdout=out)
    assert "0 added, 1 changed, 1 unchanged, 2 removed" in out.getvalue()
    out = io.StringIO()
    call_command("vtasks", "schedules", "list", stdout=out)
    listing = out.getvalue()
    expected = "nightly-report: tests.django_project.tasks.add on default, cron Europe/Berlin 30 3 * * *, next 20"
    assert expected in listing
    assert "last - (none), runs 0" in listing
    assert "heartbeat" not in listing and "by-hand" not in listing


def test_an_invalid_entry_is_refused_and_the_others_apply(valkey, settings):
    point_tasks_at(settings, valkey.url, SCHEDULES={"fast": SCHEDULES["fast"]})
    call_command("vtasks", "schedules", "apply", stdout=io.StringIO())
    point_tasks_at(settings, valkey.url, SCHEDULES={
        "fast": {**SCHEDULES["fast"], "cron": "70 * * * * *"},
        "ghost": {"task": "tests.django_project.tasks.no_such_task", "every": 5},
        "good": {"task": TICK, "every": 10},
    })
    err = io.StringIO()
    with pytest.raises(CommandError, match=r"2 schedule\(s\) refused: \['fast', 'ghost'\]"):
        call_command("vtasks", "schedules", "apply", stdout=io.StringIO(), stderr=err)
    assert "schedule 'fast': invalid cron expression '70 * * * * *'" in err.getvalue()
    assert "schedule 'ghost': cannot import task 'tests.django_project.tasks.no_such_task'" in err.getvalue()
    listed = {s.name: s for s in task_backends["default"].client.schedules_sync("default", "emails")}
    assert sorted(listed) == ["fast", "good"]
    # Left as it was; cron runs in TIME_ZONE unless the entry names a zone.
    assert listed["fast"].timing == f"cron {settings.TIME_ZONE} */5 * * * * *"


def test_a_run_is_a_task_result_like_any_other(valkey, settings, runs):
    point_tasks_at(settings, valkey.url, SCHEDULES={"tick": {"task": TICK, "every": 1}})
    call_command("vtasks", "schedules", "apply", stdout=io.StringIO())
    backend = task_backends["default"]
    # A burst worker finds the occurrence once it is due (the scripts engine
    # fires it in the fetch itself).
    wait_for(lambda: backend.client.schedules_sync()[0].last_run is not None or (run_worker_burst() and False)
             or bool(ticks(runs)), "a run")
    run_worker_burst()
    info = backend.client.schedules_sync()[0]
    result = backend.get_result(f"{info.last_task_id}@default")
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.task.module_path == TICK
    assert result.return_value == f"{info.last_task_id}@default"


# Worker processes -------------------------------------------------------------------


@pytest.fixture
def processes():
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def start_workers(processes, tmp_path: Path, url: str, schedules: dict, count: int = 3) -> list[Path]:
    (tmp_path / "schedule_settings.py").write_text(
        "from tests.django_project.settings import *  # noqa: F403\n"
        "TASKS = {'default': {'BACKEND': 'vtasks.django.ValkeyTaskBackend', 'QUEUES': ['default', 'emails'],\n"
        f"                     'OPTIONS': {{'URL': {url!r}, 'LEASE': 2, 'SCHEDULES': {schedules!r}}}}}}}\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
           "DJANGO_SETTINGS_MODULE": "schedule_settings"}
    logs = []
    for i in range(count):
        log = tmp_path / f"worker{i}.log"
        with open(log, "wb") as out:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "django", "runworker", "--worker-id", f"w{i}"],
                env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
            ))
        logs.append(log)
    return logs


def stop_workers(processes) -> None:
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        process.wait(timeout=30)


def assert_once_each(runs: Path) -> list[int]:
    """Every occurrence ran exactly once; returns them in order."""
    counts = Counter(at for at, _ in ticks(runs))
    twice = {at: n for at, n in counts.items() if n > 1}
    assert not twice, f"occurrences run more than once: {twice}"
    return sorted(counts)


def test_three_workers_run_every_second_once_none_missing(valkey, tmp_path, runs, processes):
    start_workers(processes, tmp_path, valkey.url, {"tick": {"task": TICK, "cron": "* * * * * *"}})
    wait_for(lambda: len(ticks(runs)) >= SECONDS + 1, f"{SECONDS + 1} runs", timeout=SECONDS + 30)
    stop_workers(processes)
    seconds = assert_once_each(runs)
    assert all(b - a == 1000 for a, b in zip(seconds, seconds[1:], strict=False)), f"a second is missing: {seconds}"
    assert len({pid for _, pid in ticks(runs)}) >= 1
    info = vtasks.Client(valkey.url).schedules_sync()[0]
    assert info.runs == len(seconds) or info.runs == len(seconds) + 1, "each enqueued task ran (one may wait)"


def test_a_server_restart_with_aof_in_the_middle(valkey_aof, tmp_path, runs, processes):
    start_workers(processes, tmp_path, valkey_aof.url, {"tick": {"task": TICK, "cron": "* * * * * *"}})
    half = max(2, SECONDS // 2)
    wait_for(lambda: len(ticks(runs)) >= half, f"{half} runs", timeout=SECONDS + 30)
    before = len(ticks(runs))
    valkey_aof.restart()
    wait_for(lambda: len(ticks(runs)) >= before + half, "runs after the restart", timeout=SECONDS + 60)
    stop_workers(processes)
    seconds = assert_once_each(runs)
    gaps = [b - a for a, b in zip(seconds, seconds[1:], strict=False) if b - a != 1000]
    # The seconds while the server was down make one run (catch-up "last").
    assert len(gaps) <= 1, f"more than the restart's gap: {seconds}"


def test_a_schedule_edited_and_removed_while_workers_run(valkey, tmp_path, runs, processes):
    start_workers(processes, tmp_path, valkey.url, {"tick": {"task": TICK, "cron": "* * * * * *"}})
    wait_for(lambda: len(ticks(runs)) >= 2, "two runs", timeout=SECONDS + 30)
    client = vtasks.Client(valkey.url)
    # Edited: every third second from now on.
    client.set_schedule_sync(Schedule("tick", TICK, timing(cron="*/3 * * * * *"), max_attempts=1))
    edited_at = time.time() * 1000
    wait_for(lambda: sum(at > edited_at + 1000 for at, _ in ticks(runs)) >= 2, "two runs after the edit",
             timeout=30)
    after = [at for at, _ in ticks(runs) if at > edited_at + 1000]
    assert all(at % 3000 == 0 for at in after), after
    client.unschedule_sync("default", "tick")
    removed_at = time.time() * 1000
    enqueued = client.stats_sync("default")["enqueued"]
    # Three occurrences' worth of time: nothing more is enqueued.
    wait_for(lambda: time.time() * 1000 > removed_at + 3500, "3.5 s")
    assert client.stats_sync("default")["enqueued"] == enqueued
    assert client.schedules_sync() == []
    stop_workers(processes)
    assert_once_each(runs)


def test_a_catch_up_after_the_server_was_down_for_three_occurrences(valkey_aof, settings, runs):
    point_tasks_at(settings, valkey_aof.url, queues=("default",), SCHEDULES={"tick": {"task": TICK, "every": 1}})
    call_command("vtasks", "schedules", "apply", stdout=io.StringIO())
    client = task_backends["default"].client
    wait_for(lambda: bool(run_worker_burst() and False) or bool(ticks(runs)), "a first run")
    valkey_aof.stop()
    down_at = time.time() * 1000
    wait_for(lambda: time.time() * 1000 > down_at + 3500, "three occurrences")
    valkey_aof.start()
    up_at = time.time() * 1000
    wait_for(lambda: bool(run_worker_burst() and False) or any(at > down_at for at, _ in ticks(runs)),
             "the catch-up run")
    missed = [at for at, _ in ticks(runs) if down_at < at < up_at - 1000]
    # One run for everything missed: the first missed occurrence's.
    assert len(missed) == 1, (missed, down_at, up_at)
    assert_once_each(runs)
    info = client.schedules_sync()[0]
    assert info.next_run is not None or info.pending_since is not None


def test_the_system_check_warns_of_an_entry_a_worker_would_refuse(valkey, settings):
    point_tasks_at(settings, valkey.url, SCHEDULES={
        "fast": {**SCHEDULES["fast"], "cron": "70 * * * * *"},
        "good": {"task": TICK, "every": 10},
    })
    messages = task_backends["default"].check()
    warnings = [m for m in messages if m.id == "vtasks.W002"]
    assert len(warnings) == 1, messages
    assert "schedule 'fast': invalid cron expression '70 * * * * *'" in warnings[0].msg
