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
be shared); the cores left idle; and how long the workers' and the
server's threads were ready to run but waited for a core (their run delay
in ``/proc/<pid>/task/*/schedstat``, in cores' worth). Runs alternate between
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

from benchmarks import report, sched_trace
from benchmarks.sched_trace import SchedTrace
from tests.conftest import ROOT, ValkeyServer

RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
MARK_BEGIN = "<!-- processes:begin -->"
MARK_END = "<!-- processes:end -->"
HEADING = "## Worker processes: one and two `runworker` processes"
CONCURRENCY = 200
TICK = os.sysconf("SC_CLK_TCK")
# The scheduler trace: its length, and the tasks of the runs that take it
# (enough to last well past it).
TRACE_SECONDS = 0.5
TRACE_TASKS = 300_000


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process so far, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


def waiting_seconds(pid: int) -> float | None:
    """Seconds the threads of a process have spent ready to run but
    waiting for a core (the scheduler's run delay, from
    ``/proc/<pid>/task/*/schedstat``), summed over the threads it has
    now; None once it is gone."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return None
    total = 0
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass
    return total / 1e9


def machine_idle_seconds() -> float:
    """CPU seconds the machine's cores have spent idle (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return (fields[3] + fields[4]) / TICK


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
class Sample:
    at: float
    acked: int
    worker_cpu: dict[int, float]  # per worker process
    server_cpu: float
    busy: float  # the machine's busy CPU seconds
    idle: float  # the machine's idle CPU seconds
    waiting: dict[int, float]  # per process (workers and server): waiting_seconds


@dataclass
class Sampler:
    """CPU of the worker processes and of the server, sampled with the
    number of finished tasks."""

    parent: int
    children: int  # worker processes under the parent (0: the parent is the worker)
    server: int
    url: str
    samples: list[Sample] = field(default_factory=list)
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
            waits = {pid: waiting_seconds(pid) for pid in [self.parent, *children, self.server]}
            waiting = {pid: wait for pid, wait in waits.items() if wait is not None}
            server = cpu_seconds(self.server) or 0.0
            acked = client.stats_sync("default")["acked"]
            self.samples.append(Sample(time.monotonic(), acked, dict(last), server, machine_busy_seconds(),
                                       machine_idle_seconds(), waiting))
            self.stop.wait(0.05)

    def window(self, total: int) -> Window:
        """From the first sample with a task done to the first with all
        done: per worker process, for the server, and for everything else
        on the machine, the cores used; the cores left idle; and the cores'
        worth of time the workers' and the server's threads spent ready to
        run but waiting for one."""
        start = next(s for s in self.samples if s.acked >= 1)
        end = next((s for s in self.samples if s.acked >= total), self.samples[-1])
        seconds = end.at - start.at
        if seconds <= 0:
            return Window([], 0.0, 0.0, 0.0, 0.0)
        workers = [(end.worker_cpu[pid] - start.worker_cpu[pid]) / seconds
                   for pid in sorted(end.worker_cpu) if pid in start.worker_cpu]
        server = (end.server_cpu - start.server_cpu) / seconds
        waiting = sum(end.waiting[pid] - start.waiting[pid] for pid in end.waiting if pid in start.waiting)
        return Window(workers, server, (end.busy - start.busy) / seconds - sum(workers) - server,
                      (end.idle - start.idle) / seconds, waiting / seconds)


@dataclass
class Window:
    worker_cores: list[float]
    server_cores: float
    other_cores: float
    idle_cores: float
    waiting_cores: float


@dataclass
class Run:
    processes: int
    rate: float
    steady: float
    worker_cores: list[float]
    server_cores: float
    other_cores: float
    idle_cores: float
    waiting_cores: float
    load: float
    sched: SchedTrace | None = None


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


def trace_when_under_way(url: str, tasks: int, found: list[SchedTrace]) -> None:
    """Records the scheduler's events for TRACE_SECONDS once a fifth of
    the tasks are done (the processes are all running by then)."""
    import vtasks

    client = vtasks.Client(url)
    deadline = time.monotonic() + 120
    while client.stats_sync("default")["acked"] < tasks // 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    trace = sched_trace.record(TRACE_SECONDS)
    if trace is not None:
        found.append(trace)


def measure(processes: int, tasks: int, trace: bool = False) -> Run:
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
        traces: list[SchedTrace] = []
        tracer = None
        if trace:
            tracer = threading.Thread(target=trace_when_under_way, args=(server.url, tasks, traces), daemon=True)
            tracer.start()
        try:
            if worker.wait(timeout=600) != 0:
                raise RuntimeError(f"runworker failed:\n{log.read_text()}")
        finally:
            sampler.stop.set()
            thread.join()
            if tracer is not None:
                tracer.join()
        rate, steady = asyncio.run(rates(server.url, ids))
        w = sampler.window(tasks)
        return Run(processes, rate, steady, w.worker_cores, w.server_cores, w.other_cores, w.idle_cores,
                   w.waiting_cores, os.getloadavg()[0], traces[0] if traces else None)
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
                f"everything else {run.other_cores:.2f}, idle {run.idle_cores:.2f}, "
                f"waiting for a core {run.waiting_cores:.2f}, load {run.load:.1f}",
                flush=True,
            )
    # One more run of each, not counted above, with the scheduler's events
    # recorded in its middle (perf adds work of its own while it records).
    traced: dict[int, SchedTrace] = {}
    if sched_trace.available():
        for processes in (1, 2):
            found = measure(processes, TRACE_TASKS, trace=True).sched
            if found is not None:
                traced[processes] = found
                print(f"{processes} process(es), scheduler trace: {found.summary()}", flush=True)
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
            f"| {statistics.median(r.other_cores for r in mine):.2f} "
            f"| {statistics.median(r.idle_cores for r in mine):.2f} "
            f"| {statistics.median(r.waiting_cores for r in mine):.2f} |"
        )
    # What the machine's cores allow at one process's CPU per task (its
    # worker and Valkey together): more processes cannot pass that, only
    # approach it, unless they spend less CPU per task than one does.
    single = [r for r in runs if r.processes == 1]
    cpu_per_task = statistics.median((sum(r.worker_cores) + r.server_cores) / r.rate for r in single)
    cores = os.cpu_count() or 1
    ceiling = cores / cpu_per_task
    waits = "; ".join(
        f"{n} process{'es' if n > 1 else ''}: {statistics.median(r.idle_cores for r in runs if r.processes == n):.2f} "
        f"cores idle while the workers' and Valkey's threads waited "
        f"{statistics.median(r.waiting_cores for r in runs if r.processes == n):.2f} cores' worth for one"
        for n in (1, 2)
    )
    if traced:
        why = (
            f"the kernel's scheduler events (`perf sched record`, {TRACE_SECONDS} s in the middle of one more "
            f"run of each with {TRACE_TASKS:,} tasks) say how much of the idle time had a thread ready at the "
            "same moment: "
            + "; ".join(f"{n} process{'es' if n > 1 else ''}, {t.summary()}" for n, t in sorted(traced.items()))
            + ". A core that has gone idle is slow to come back on this virtual machine, and while it does, "
            "the thread woken onto it waits, or threads queue on the other core."
        )
    else:
        why = "the scheduler's events were not recorded (`perf` missing or not allowed here)."
    loads = [load_before, *(r.load for r in runs)]
    command = f"python -m benchmarks.worker_processes --tasks {args.tasks} --runs {args.runs}"
    build = "release" if "release" in module else "debug"
    text = (
        f"Measured {report.today()} with `{command}` ({build} module and extension): "
        f"1-minute load average {min(loads):.1f}–{max(loads):.1f} during the runs; "
        f"{os.cpu_count()} cores, {platform.platform()}.\n\n"
        f"| Processes | Tasks | Tasks/s after the first | Tasks/s once every process ran one "
        f"| Worker CPU, cores (all processes) "
        f"| Busiest process, cores | Valkey CPU, cores | Everything else on the machine, cores "
        f"| Idle, cores | Ready to run, waiting for a core, cores |\n"
        f"|---|---|---|---|---|---|---|---|---|---|\n"
        + "\n".join(rows)
        + f"\n\nTwo processes: **{medians[2][0] / medians[1][0]:.2f}×** one after the first task, "
        f"{medians[2][1] / medians[1][1]:.2f}× once every process ran one (medians).\n\n"
        f"What {cores} cores allow: one process and Valkey used {cpu_per_task * 1e6:.1f} µs of CPU per task "
        f"together (median of the one-process runs), so {cores} cores hold at most {ceiling:,.0f} tasks/s at "
        f"that cost, {ceiling / medians[1][0]:.2f}× one process, with nothing else running on them.\n\n"
        f"Idle cores beside threads ready to run (medians over the runs): {waits}. A thread that waits for "
        f"a lock, a reply or a batch sleeps and is not counted as ready. Both are averages over a run; {why}\n"
    )
    print(text)
    if not args.no_write:
        write_section(text)


if __name__ == "__main__":
    main()
