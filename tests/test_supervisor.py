"""Several worker processes under one parent (``vtasks.supervisor``,
``runworker --processes N``): real processes against a real server."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import vtasks
from django.tasks import TaskResultStatus, task_backends
from vtasks.supervisor import Supervisor

from tests import test_runworker
from tests.conftest import ROOT
from tests.django_project import tasks
from tests.test_django import point_tasks_at
from tests.test_runworker import start_worker, wait_for

# The fixtures of the runworker tests: each test's runs file, and the
# processes it started (killed at its end).
runs = test_runworker.runs
processes = test_runworker.processes


def records(runs: Path, kind: str) -> list[list[str]]:
    """The fields after ``kind`` of each line the tasks recorded."""
    return [line.split()[1:] for line in runs.read_text().splitlines() if line.split()[0] == kind]


def started_pids(log: Path) -> dict[int, list[int]]:
    """Per process number, the pids the supervisor started there, in order."""
    pids: dict[int, list[int]] = {}
    for number, pid in re.findall(r"worker process (\d+) started \(pid (\d+)\)", log.read_text()):
        pids.setdefault(int(number), []).append(int(pid))
    return pids


def leased(url: str) -> int:
    return vtasks.Client(url).stats_sync("default")["leased"]


def test_processes_share_the_queue_run_each_task_once_and_end_a_burst(valkey, settings, runs, tmp_path, processes):
    point_tasks_at(settings, valkey.url, queues=["default"])
    # Each `meets` task waits until tasks started in two processes: they can
    # only finish if both processes take some (one holds at most a few).
    met = [tasks.meets.enqueue(n, 0) for n in range(8)]
    added = [tasks.add.enqueue(n, 1) for n in range(300)]
    parent, log = start_worker(processes, tmp_path, valkey.url, "--processes", "2", "--concurrency", "2", "--burst")
    assert parent.wait(timeout=90) == 0, log.read_text()
    assert sorted(int(n) for n, in records(runs, "django_add")) == list(range(300))
    assert sorted(int(n) for n, _ in records(runs, "django_meets")) == list(range(8))
    pids = {int(pid) for _, pid in records(runs, "django_meets_start")}
    assert len(pids) == 2 and parent.pid not in pids
    assert pids == {p for started in started_pids(log).values() for p in started}
    backend = task_backends["default"]
    for result in (*met, *added):
        assert backend.get_result(result.id).status == TaskResultStatus.SUCCESSFUL
    stats = vtasks.Client(valkey.url).stats_sync("default")
    assert (stats["ready"], stats["leased"]) == (0, 0)
    assert log.read_text().count("finished") >= 2


def test_a_killed_process_is_replaced_and_a_signal_stops_all_gracefully(valkey, settings, runs, tmp_path, processes):
    # Attempts to spare: the lost leases of the killed process count as attempts.
    point_tasks_at(settings, valkey.url, queues=["default"], MAX_ATTEMPTS=3)
    met = [tasks.meets.enqueue(n, 60) for n in range(4)]
    parent, log = start_worker(processes, tmp_path, valkey.url, "--processes", "2", "--concurrency", "2")
    # All four running, two in each process: a process starts its second
    # sync task a moment after its first (once the first is seen to block),
    # and the victim's tasks must all be known before it is killed.
    wait_for(
        lambda: len(records(runs, "django_meets_start")) == 4
        and len({pid for _, pid in records(runs, "django_meets_start")}) == 2,
        f"four tasks in two processes ({log})",
    )
    first_starts = records(runs, "django_meets_start")
    victim = int(first_starts[0][1])
    victims_tasks = {n for n, pid in first_starts if int(pid) == victim}
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: f"(pid {victim}) died" in log.read_text(), "the death to be noticed")
    assert re.search(rf"\(pid {victim}\) died after [\d.]+ s: killed by SIGKILL; starting another in", log.read_text())
    number = next(n for n, pids in started_pids(log).items() if victim in pids)
    wait_for(lambda: len(started_pids(log)[number]) == 2, "its replacement")
    # Its tasks come back once their 1 s leases run out, and start again elsewhere.
    wait_for(
        lambda: victims_tasks <= {n for n, pid in records(runs, "django_meets_start")[len(first_starts):]
                                  if int(pid) != victim},
        "the killed process's tasks to start again",
    )
    parent.send_signal(signal.SIGTERM)
    wait_for(lambda: log.read_text().count("asked by its supervisor") == 2, "both processes to be told")
    after_stop = tasks.add.enqueue(1, 2)
    Path(str(runs) + ".release").touch()  # the running tasks finish within their grace period
    assert parent.wait(timeout=30) == 0, log.read_text()
    text = log.read_text()
    assert "still running" not in text and "did not stop cleanly" not in text, text
    started = {n for n, _ in records(runs, "django_meets_start")}
    finished = {n for n, _ in records(runs, "django_meets")}
    assert started == finished
    for result in met:
        status = tasks.meets.get_result(result.id).status
        assert status == (TaskResultStatus.SUCCESSFUL if str(met.index(result)) in started else TaskResultStatus.READY)
    assert tasks.add.get_result(after_stop.id).status == TaskResultStatus.READY
    assert leased(valkey.url) == 0


def test_a_second_signal_stops_every_process_at_once(valkey, settings, runs, tmp_path, processes):
    point_tasks_at(settings, valkey.url, queues=["default"], MAX_ATTEMPTS=3)
    for n in range(4):
        tasks.meets.enqueue(n, 60)
    parent, log = start_worker(processes, tmp_path, valkey.url, "--processes", "2", "--concurrency", "2")
    wait_for(lambda: len({pid for _, pid in records(runs, "django_meets_start")}) == 2, f"two processes ({log})")
    parent.send_signal(signal.SIGINT)
    wait_for(lambda: log.read_text().count("asked by its supervisor") == 2, "both processes to be told")
    parent.send_signal(signal.SIGINT)
    # Well before the tasks' 60 s and the 30 s grace period.
    assert parent.wait(timeout=20) == 0, log.read_text()
    text = log.read_text()
    running = len(records(runs, "django_meets_start"))
    assert text.count("is still running at a forced stop") == running, text
    assert records(runs, "django_meets") == []


def test_max_tasks_counts_per_process(valkey, settings, runs, tmp_path, processes):
    point_tasks_at(settings, valkey.url, queues=["default"])
    # One task at a time per process; the first two meet, so each process takes one.
    met = [tasks.meets.enqueue(n, 0) for n in range(2)]
    for n in range(10):
        tasks.add.enqueue(n, 1)
    parent, log = start_worker(
        processes, tmp_path, valkey.url, "--processes", "2", "--concurrency", "1", "--max-tasks", "3",
    )
    assert parent.wait(timeout=60) == 0, log.read_text()
    assert len({pid for _, pid in records(runs, "django_meets_start")}) == 2
    backend = task_backends["default"]
    assert all(backend.get_result(r.id).status == TaskResultStatus.SUCCESSFUL for r in met)
    assert len(records(runs, "django_add")) == 4, log.read_text()
    stats = vtasks.Client(valkey.url).stats_sync("default")
    assert (stats["ready"], stats["leased"]) == (6, 0)
    assert log.read_text().count(") finished") == 2


def test_a_process_that_keeps_dying_is_restarted_with_growing_pauses(caplog):
    supervisor = Supervisor(
        [sys.executable, "-c", "raise SystemExit(3)"], 1, handle_signals=False, backoff=0.05, max_backoff=0.2,
    )
    died = re.compile(r"died after [\d.]+ s: exited with status 3; starting another in ([\d.]+) s")

    def deaths() -> list[logging.LogRecord]:
        return [r for r in caplog.records if died.search(r.getMessage())]

    async def main() -> int:
        run = asyncio.ensure_future(supervisor.arun())
        deadline = time.monotonic() + 30
        while len(deaths()) < 5:
            assert time.monotonic() < deadline and not run.done(), caplog.text
            await asyncio.sleep(0.02)
        supervisor.stop()
        return await asyncio.wait_for(run, 10)

    with caplog.at_level(logging.INFO, logger="vtasks.supervisor"):
        assert asyncio.run(main()) == 0
    pauses = [float(died.search(r.getMessage()).group(1)) for r in deaths()]
    assert pauses[:5] == [0.05, 0.1, 0.2, 0.2, 0.2]
    starts = [r.created for r in caplog.records if "started (pid" in r.getMessage()]
    # Each start came after the pause before it (the stop cancelled the last pause).
    assert len(starts) == len(deaths())
    for death, pause, start in zip(deaths(), pauses, starts[1:], strict=False):
        assert start - death.created >= pause * 0.99


def test_the_parent_fails_when_a_process_does_not_stop_cleanly(caplog):
    # Children that read the stop message, then exit with 0 or 3.
    child = (
        "import os, sys; os.read(int(os.environ['VTASKS_SUPERVISOR_FD']), 1); "
        "sys.exit(3 if os.environ['VTASKS_PROCESS'] == '2' else 0)"
    )
    supervisor = Supervisor([sys.executable, "-c", child], 2, handle_signals=False)

    async def main() -> int:
        run = asyncio.ensure_future(supervisor.arun())
        deadline = time.monotonic() + 30
        while caplog.text.count("started (pid") < 2:
            assert time.monotonic() < deadline and not run.done(), caplog.text
            await asyncio.sleep(0.02)
        supervisor.stop()
        return await asyncio.wait_for(run, 30)

    with caplog.at_level(logging.INFO, logger="vtasks.supervisor"):
        assert asyncio.run(main()) == 1
    assert re.search(r"worker process 1 \(pid \d+\) stopped", caplog.text)
    assert re.search(r"worker process 2 \(pid \d+\) did not stop cleanly: exited with status 3", caplog.text)
    assert "died" not in caplog.text  # not replaced while stopping


PLAIN_WORKER = """
import asyncio, sys
import pytest
import vtasks
from vtasks.supervisor import Supervisor, process_number, serve
from tests import sample_tasks

if process_number() is None:
    sys.exit(Supervisor([sys.executable, __file__], 2).run())
asyncio.run(serve(vtasks.Worker(sys.argv[1] if len(sys.argv) > 1 else {url!r}, concurrency=2, lease=1)))
"""


def test_plain_workers_stop_when_their_parent_is_killed(valkey, runs, tmp_path):
    """The framework-free supervisor with ``vtasks.Worker``; a parent that
    dies without stopping its children still stops them (gracefully)."""
    script = tmp_path / "worker.py"
    script.write_text(PLAIN_WORKER.format(url=valkey.url))
    client = vtasks.Client(valkey.url)
    for n in range(4):
        client.enqueue_sync("tests.held", n, 30)
    log = tmp_path / "parent.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "wb") as out:
        parent = subprocess.Popen([sys.executable, str(script)], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: len(records(runs, "held_start")) == 4, f"the tasks to start ({log})")
        children = {int(pid) for _, pid in records(runs, "held_start")}
        assert len(children) == 2
        parent.kill()
        parent.wait()
        # Told by the end of their pipe, the children stop taking tasks and
        # wait for the running ones (30 s each), which we cut short.
        wait_for(lambda: log.read_text().count("its supervisor is gone") == 2, f"the children to notice ({log})")
        Path(str(runs) + ".release").touch()
        wait_for(lambda: not any(_alive(pid) for pid in children), "the children to exit")
    finally:
        if parent.poll() is None:
            parent.kill()
    assert sorted(int(n) for n, in records(runs, "held")) == [0, 1, 2, 3]
    assert client.stats_sync("default")["leased"] == 0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_bad_process_options_are_refused(valkey, settings):
    from django.core.management import call_command
    from django.core.management.base import CommandError

    point_tasks_at(settings, valkey.url)
    with pytest.raises(CommandError, match="--processes must be at least 1"):
        call_command("runworker", processes=0)
    # Valid for one process, too long once the children's suffix is added.
    with pytest.raises(CommandError, match=r"--worker-id is too long for 10 processes: .*'x{127}\.10'"):
        call_command("runworker", processes=10, worker_id="x" * 127)
