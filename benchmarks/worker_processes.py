"""Worker processes: how the rate grows from one ``runworker`` process to
two (``--processes 2``) on sync no-op Django tasks.

    make build-release python-release
    .venv/bin/python -m benchmarks.worker_processes [--tasks 100000] [--runs 3]

Each run starts a fresh valkey-server (``module/valkey.conf``, the release
module), enqueues ``--tasks`` sync no-op Django tasks, then runs
``python -m django runworker --processes N --concurrency 200 --burst`` with a
new project's settings (no ``LOGGING``, ``DEBUG`` off; the backend with only
its URL) until the queue is drained. The rate is the rate after the first
task: (tasks - 1) / (last ``finished_at`` - first ``finished_at``), read
from the server's task records, so neither the processes' start-up nor
the drain check at the end is in it. The processes do not start at the
same instant (each sets Django up), so the table also gives the rate once
every process has finished a task (the records name the consumer). CPU is sampled from ``/proc`` every
50 ms over the same window, in cores (CPU seconds per second): the worker
processes' (parent and children), the server's, and the rest of the
machine's (this script's sampling and whatever else runs: the machine may
be shared). Runs alternate between
one and two processes; the table gives medians with min-max. Writes its
section of ``benchmarks/RESULTS.md`` between the ``processes`` markers
(``--no-write``: print only).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from benchmarks import report
from tests.conftest import ROOT, ValkeyServer

RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
MARK_BEGIN = "<!-- processes:begin -->"
MARK_END = "<!-- processes:end -->"
HEADING = "## Worker processes: one and two `runworker` processes"
CONCURRENCY = 200
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process so far, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user)
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICK


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                pass
    return found


@dataclass
class Sampler:
    """CPU of the worker processes and of the server, sampled with the
    number of finished tasks."""

    parent: int
    children: int  # worker processes under the parent (0: the parent is the worker)
    server: int
    url: str
    samples: list[tuple[float, int, dict[int, float], float, float]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        import vtasks

        client = vtasks.Client(self.url)
        last: dict[int, float] = {}
        children: list[int] = []
        while not self.stop.is_set():
            if len(children) < self.children:
                # Scanning /proc costs CPU: only until every child is there.
                children = children_of(self.parent)
            for pid in [self.parent, *children]:
                cpu = cpu_seconds(pid)
                if cpu is not None:
                    last[pid] = cpu
            server = cpu_seconds(self.server) or 0.0
            acked = client.stats_sync("default")["acked"]
            self.samples.append((time.monotonic(), acked, dict(last), server, machine_busy_seconds()))
            self.stop.wait(0.05)

    def window(self, total: int) -> tuple[list[float], float, float]:
        """Per worker process, for the server, and for everything else on
        the machine, the cores used from the first sample with a task done
        to the first with all done."""
        start = next(s for s in self.samples if s[1] >= 1)
        end = next((s for s in self.samples if s[1] >= total), self.samples[-1])
        seconds = end[0] - start[0]
        if seconds <= 0:
            return [], 0.0, 0.0
        workers = [(end[2][pid] - start[2][pid]) / seconds for pid in sorted(end[2]) if pid in start[2]]
        server = (end[3] - start[3]) / seconds
        return workers, server, (end[4] - start[4]) / seconds - sum(workers) - server


@dataclass
class Run:
    processes: int
    rate: float
    steady: float
    worker_cores: list[float]
    server_cores: float
    other_cores: float
    load: float


async def enqueue(count: int) -> list[str]:
    from benchmarks.processes_tasks import sync_noop

    ids: list[str] = []
    for start in range(0, count, 500):
        results = await asyncio.gather(*(sync_noop.aenqueue() for _ in range(min(500, count - start))))
        ids.extend(r.id for r in results)
    return ids


async def rates(url: str, ids: list[str]) -> tuple[float, float]:
    """From the tasks' records: the rate after the first task, (tasks - 1)
    / (last finished_at - first finished_at); and the rate once every
    process had finished a task (the processes do not start at the same
    instant): tasks finished after that / the time since."""
    import vtasks

    client = vtasks.Client(url)
    finished: list[tuple[float, str]] = []
    for start in range(0, len(ids), 1000):
        states = await asyncio.gather(*(client.get("default", i.split("@")[0]) for i in ids[start:start + 1000]))
        for state in states:
            assert state is not None and state.status == "done" and state.finished_at is not None, state
            finished.append((state.finished_at.timestamp(), state.workers[-1]))
    finished.sort()
    first, last = finished[0][0], finished[-1][0]
    firsts: dict[str, float] = {}
    for when, worker in finished:
        firsts.setdefault(worker, when)
    all_running = max(firsts.values())
    after = sum(1 for when, _ in finished if when > all_running)
    return (len(finished) - 1) / (last - first), after / (last - all_running)


def measure(processes: int, tasks: int) -> Run:
    from django.test import override_settings

    server = ValkeyServer()
    try:
        with override_settings(TASKS={"default": {
            "BACKEND": "vtasks.django.ValkeyTaskBackend", "OPTIONS": {"URL": server.url},
        }}):
            ids = asyncio.run(enqueue(tasks))
        env = {
            **os.environ, "DJANGO_SETTINGS_MODULE": "benchmarks.processes_settings", "VTASKS_BENCH_URL": server.url,
        }
        log = server.dir / "worker.log"
        with open(log, "w") as out:
            worker = subprocess.Popen(
                [sys.executable, "-m", "django", "runworker", "--processes", str(processes),
                 "--concurrency", str(CONCURRENCY), "--burst"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            )
        assert server.process is not None
        sampler = Sampler(worker.pid, 0 if processes == 1 else processes, server.process.pid, server.url)
        thread = threading.Thread(target=sampler.run, daemon=True)
        thread.start()
        try:
            if worker.wait(timeout=600) != 0:
                raise RuntimeError(f"runworker failed:\n{log.read_text()}")
        finally:
            sampler.stop.set()
            thread.join()
        rate, steady = asyncio.run(rates(server.url, ids))
        workers, server_cores, other = sampler.window(tasks)
        return Run(processes, rate, steady, workers, server_cores, other, os.getloadavg()[0])
    finally:
        server.close()


def median_range(values: list[float], digits: int = 0) -> str:
    return f"{statistics.median(values):,.{digits}f} ({min(values):,.{digits}f}–{max(values):,.{digits}f})"


def write_section(text: str) -> None:
    current = RESULTS_MD.read_text()
    if MARK_BEGIN in current and MARK_END in current:
        head, rest = current.split(MARK_BEGIN, 1)
        _, tail = rest.split(MARK_END, 1)
    else:
        head, tail = current.rstrip("\n") + f"\n\n{HEADING}\n\n", "\n"
    RESULTS_MD.write_text(f"{head}{MARK_BEGIN}\n{text}\n{MARK_END}{tail}")


def main() -> None:
    report.compile_sources()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args()
    # The build users run: the release module (the tests use debug).
    module = os.environ.setdefault("VTASKS_MODULE", str(ROOT / "target" / "release" / "libvtasks.so"))
    os.environ["DJANGO_SETTINGS_MODULE"] = "benchmarks.processes_settings"
    import django

    django.setup()
    load_before = os.getloadavg()[0]
    runs: list[Run] = []
    for _ in range(args.runs):
        for processes in (1, 2):
            run = measure(processes, args.tasks)
            runs.append(run)
            print(
                f"{processes} process(es): {run.rate:,.0f} tasks/s ({run.steady:,.0f} once all ran), worker cores "
                f"{[round(c, 2) for c in run.worker_cores]}, server {run.server_cores:.2f}, "
                f"everything else {run.other_cores:.2f}, load {run.load:.1f}",
                flush=True,
            )
    rows = []
    medians: dict[int, tuple[float, float]] = {}
    for processes in (1, 2):
        mine = [r for r in runs if r.processes == processes]
        medians[processes] = (statistics.median(r.rate for r in mine), statistics.median(r.steady for r in mine))
        busiest = [max(r.worker_cores) for r in mine]
        rows.append(
            f"| {processes} | {args.tasks:,} | {median_range([r.rate for r in mine])} "
            f"| {median_range([r.steady for r in mine])} "
            f"| {statistics.median(sum(r.worker_cores) for r in mine):.2f} "
            f"| {statistics.median(busiest):.2f} | {statistics.median(r.server_cores for r in mine):.2f} "
            f"| {statistics.median(r.other_cores for r in mine):.2f} |"
        )
    # What the machine's cores allow at one process's CPU per task (its
    # worker and Valkey together): more processes cannot pass that, only
    # approach it, unless they spend less CPU per task than one does.
    single = [r for r in runs if r.processes == 1]
    cpu_per_task = statistics.median((sum(r.worker_cores) + r.server_cores) / r.rate for r in single)
    cores = os.cpu_count() or 1
    ceiling = cores / cpu_per_task
    loads = [load_before, *(r.load for r in runs)]
    command = f"python -m benchmarks.worker_processes --tasks {args.tasks} --runs {args.runs}"
    build = "release" if "release" in module else "debug"
    text = (
        f"Measured {report.today()} with `{command}` ({build} module and extension): "
        f"1-minute load average {min(loads):.1f}–{max(loads):.1f} during the runs; "
        f"{os.cpu_count()} cores, {platform.platform()}.\n\n"
        f"| Processes | Tasks | Tasks/s after the first | Tasks/s once every process ran one "
        f"| Worker CPU, cores (all processes) "
        f"| Busiest process, cores | Valkey CPU, cores | Everything else on the machine, cores |\n"
        f"|---|---|---|---|---|---|---|---|\n"
        + "\n".join(rows)
        + f"\n\nTwo processes: **{medians[2][0] / medians[1][0]:.2f}×** one after the first task, "
        f"{medians[2][1] / medians[1][1]:.2f}× once every process ran one (medians).\n\n"
        f"What {cores} cores allow: one process and Valkey used {cpu_per_task * 1e6:.1f} µs of CPU per task "
        f"together (median of the one-process runs), so {cores} cores hold at most {ceiling:,.0f} tasks/s at "
        f"that cost, {ceiling / medians[1][0]:.2f}× one process, with nothing else running on them.\n"
    )
    print(text)
    if not args.no_write:
        write_section(text)


if __name__ == "__main__":
    main()
