"""vtasks side by side with django-vtasks, Celery and RQ, sync and async
tasks, on localhost and with 2 ms added round-trip latency.

    .bench-venv/bin/python -m benchmarks.compare [--runs 3] [--tasks 5000]
        [--rq-tasks 500] [--memory-tasks 100000] [--only SYSTEM] [--no-latency]
        [--print-only]

(`make compare` creates `.bench-venv` from `benchmarks/requirements.txt`,
builds vtasks into it from this checkout and runs this.)

Processing, the method of django-vtasks' published benchmark: for each
system, kind of task (sync ``def``, ``async def``; Celery and RQ run sync
functions only) and task (no-op, 10 ms sleep), a fresh valkey-server from
`module/valkey.conf` (persistence off, the same build for every system),
N tasks enqueued, then one worker process started at concurrency 200 (RQ's
worker is single-threaded) and timed **from the process launch** (the
driver's clock just before it starts the process) to the last task's
completion. Every task appends its completion time to a file
(`benchmarks/peers/tasks_marker.py`), so first and last completions are
exact. Peak RSS is the largest sum of the worker process tree's peak RSS
(`VmHWM`) sampled every 0.1 s, Valkey connections the most the worker held
at once, server CPU the `INFO cpu` delta from the launch to the last task.
The headline scenario (no-op, localhost) runs for vtasks and django-vtasks
under three logging setups (`BENCH_LOGGING` in `benchmarks/peers/settings.py`);
everything else with Django's default LOGGING (no `LOGGING` setting).

Enqueueing (`benchmarks/peers/enqueue.py`): a plain sync loop of
``enqueue()``, sequential ``await aenqueue()``, and 100 concurrent producers,
each after one warm-up enqueue outside the timing; more runs of them than of
the processing scenarios (``--enqueue-runs``), since each is short and this
machine noisy.

At 2 ms: the worker and the producers reach Valkey through
`benchmarks/src/bin/latency_proxy.rs` (1 ms each way); the queue is filled
directly. The round trip through it is measured (PING) at the start.

Django's start-up alone, the floor under every worker started by
`manage.py`: a process that imports Django's management, runs
``django.setup()`` with no app and no ``TASKS`` setting and imports the
tasks' module, timed from its launch to then, with its peak RSS (three runs
a round). The goals table sets each from-launch rate beside the rate of a
worker that ran every task the moment Django was ready, and each peak RSS
beside this process's.

Runs go round-robin (run 1 of every scenario, then run 2, ...), each once the
machine's other work uses less than 0.3 of a core (or after a minute); tables give
medians with min–max. Finally, memory per queued task: `INFO memory` before
and after enqueueing `--memory-tasks` tasks with no worker.

Writes `benchmarks/results/compare.png` and the `compare` section of
`benchmarks/RESULTS.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import report
from benchmarks.latency_proxy import LatencyProxy, describe, ping_rtts_ms

ROOT = report.ROOT
RESULTS = ROOT / "benchmarks" / "results"
CONCURRENCY = 200
TASKS = {"no-op": "noop", "sleep 10 ms": "sleep"}
LOGGINGS = {
    "default": "Django's default (no `LOGGING` setting)",
    "tasks-warning": "`django.tasks` logger at WARNING",
    "root-console": "a console handler on the root logger (root at WARNING)",
}
HEADLINE_SYSTEMS = ("vtasks-module", "django-vtasks")
ALONE_RUNS = 3  # Django's start-up alone, per round: a short run, and its time varies by a third here


@dataclass(frozen=True)
class System:
    name: str
    key: str  # BENCH_SYSTEM
    kinds: tuple[str, ...]  # "sync", "async"
    worker: list[str]
    single_threaded: bool = False


def systems() -> list[System]:
    py = sys.executable
    django = [py, "-m", "django"]
    both = ("sync", "async")
    return [
        System("vtasks (module)", "vtasks-module", both, [*django, "runworker", "--concurrency", str(CONCURRENCY)]),
        System("vtasks (scripts)", "vtasks-scripts", both, [*django, "runworker", "--concurrency", str(CONCURRENCY)]),
        System("django-vtasks", "django-vtasks", both, [*django, "runworker", "--concurrency", str(CONCURRENCY)]),
        System("Celery (threads)", "celery", ("sync",),
               [py, "-m", "celery", "-A", "benchmarks.peers.celery_app", "worker", "-P", "threads",
                "-c", str(CONCURRENCY), "--without-gossip", "--without-mingle", "--without-heartbeat",
                "-l", "WARNING"]),
        System("RQ", "rq", ("sync",), [*django, "rqworker", "--job-class", "django_tasks_rq.Job", "default"],
               single_threaded=True),
    ]


# --- one run ------------------------------------------------------------------------------------

def env_for(
    system: System, url: str, done_file: str, logging: str = "default", concurrency: str = str(CONCURRENCY)
) -> dict[str, str]:
    """The worker's environment; ``concurrency`` "" leaves each system's default."""
    return {
        **os.environ,
        "BENCH_SYSTEM": system.key,
        "BENCH_URL": url,
        "BENCH_DONE_FILE": done_file,
        "BENCH_CONCURRENCY": concurrency,
        "BENCH_LOGGING": logging,
        "DJANGO_SETTINGS_MODULE": "benchmarks.peers.settings",
        "PYTHONPATH": str(ROOT),
    }


def enqueue(env: dict[str, str], task: str, n: int, shape: str, warmup: bool = True) -> float:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.peers.enqueue", task, str(n), shape, *(["--warmup"] if warmup else [])],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800,
    )
    if out.returncode != 0:
        raise RuntimeError(f"enqueue failed:\n{out.stdout}\n{out.stderr}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["enqueued"] / result["seconds"]


@dataclass
class Run:
    process: float  # tasks / (last completion - launch)
    first_task_ms: float  # first completion - launch
    steady: float  # tasks/s from the first completion to the last
    rss_mb: float
    connections: int
    cpu_us_per_task: float
    load: float


def process_run(
    system: System, task: str, n: int, latency_ms: float, logging: str, concurrency: str = str(CONCURRENCY)
) -> Run:
    from tests.conftest import ValkeyServer

    load = report.wait_idle()
    server = ValkeyServer(with_module=True)
    proxy = None
    try:
        direct = f"redis://127.0.0.1:{server.port}/0"
        enqueue(env_for(system, direct, os.devnull, logging), task, n, "concurrent", warmup=False)
        url = direct
        if latency_ms:
            proxy = LatencyProxy("127.0.0.1", server.port, latency_ms / 1000).start()
            url = f"redis://127.0.0.1:{proxy.port}/0"
        with report.done_file() as done:
            env = env_for(system, url, str(done), logging, concurrency)
            w = report.watch(system.worker, env, done, n, server.port, burst=False)
        return Run(
            process=w.rate_from(w.launched, n),
            first_task_ms=(w.first - w.launched) * 1000,
            steady=w.steady(n),
            rss_mb=w.peak_rss_mb,
            connections=w.connections,
            cpu_us_per_task=w.server_cpu_s * 1e6 / n,
            load=load,
        )
    finally:
        if proxy is not None:
            proxy.stop()
        server.close()


@dataclass
class EnqueueRun:
    sync: float
    sequential: float
    concurrent: float
    rtt_ms: float  # median PING round trip to where the producers connect
    load: float


def enqueue_run(system: System, n: int, latency_ms: float) -> EnqueueRun:
    from tests.conftest import ValkeyServer

    load = report.wait_idle()
    server = ValkeyServer(with_module=True)
    proxy = None
    try:
        port = server.port
        if latency_ms:
            proxy = LatencyProxy("127.0.0.1", server.port, latency_ms / 1000).start()
            port = proxy.port
        env = env_for(system, f"redis://127.0.0.1:{port}/0", os.devnull)
        rates = {}
        for shape in ("sync", "sequential", "concurrent"):
            rates[shape] = enqueue(env, "noop_sync", n, shape)
            report.command(server.port, "FLUSHALL")
        rtt = statistics.median(ping_rtts_ms(port, 200))
        return EnqueueRun(rates["sync"], rates["sequential"], rates["concurrent"], rtt, load)
    finally:
        if proxy is not None:
            proxy.stop()
        server.close()


def memory_per_task(system: System, n: int) -> float:
    from tests.conftest import ValkeyServer

    report.wait_idle()
    server = ValkeyServer(with_module=True)
    try:
        env = env_for(system, f"redis://127.0.0.1:{server.port}/0", os.devnull)
        before = int(report.info(server.port, "memory")["used_memory"])
        enqueue(env, "noop_sync", n, "concurrent", warmup=False)
        after = int(report.info(server.port, "memory")["used_memory"])
        return (after - before) / n
    finally:
        server.close()


# What Django's start-up alone costs a worker process here: every Django task
# worker, vtasks or another, imports Django's management, runs django.setup()
# and imports the tasks' module before it can run a task. No system's worker
# code or queue settings take part (the settings of the Celery runs: no app,
# no TASKS), so this bounds what any worker started by `manage.py` can reach.
DJANGO_ALONE = """
import time, django.core.management, django
django.setup()
import benchmarks.peers.tasks
ready = time.monotonic()
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(ready, int(hwm.split()[1]))
"""


@dataclass
class DjangoAlone:
    ready_ms: float  # from the launch to django.setup() done and the tasks' module imported
    rss_mb: float  # the process's peak RSS then
    load: float


def django_alone_run() -> DjangoAlone:
    load = report.wait_idle()
    env = env_for(System("Django alone", "celery", (), []), "redis://127.0.0.1:1/0", os.devnull)
    launched = time.monotonic()
    out = subprocess.run([sys.executable, "-c", DJANGO_ALONE], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True)
    ready, hwm_kb = out.stdout.split()
    return DjangoAlone((float(ready) - launched) * 1000, int(hwm_kb) / 1024, load)


# --- the plan and its results -------------------------------------------------------------------

@dataclass
class Scenario:
    system: System
    kind: str
    task: str  # a key of TASKS
    latency_ms: float
    logging: str
    tasks: int
    runs: list[Run] = field(default_factory=list)

    @property
    def task_name(self) -> str:
        return f"{TASKS[self.task]}_{self.kind}"

    def med(self, attr: str) -> float:
        values = [v for v in (getattr(r, attr) for r in self.runs) if v == v]
        return statistics.median(values) if values else float("nan")

    def spread(self, attr: str) -> str:
        return report.median_range([getattr(r, attr) for r in self.runs])

    def label(self) -> str:
        return f"{self.system.name}, {self.kind}, {self.task}, {'2 ms' if self.latency_ms else 'local'}" + (
            "" if self.logging == "default" else f", logging {self.logging}")


@dataclass
class Enqueues:
    system: System
    latency_ms: float
    tasks: int
    runs: list[EnqueueRun] = field(default_factory=list)

    def med(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.runs)

    def spread(self, attr: str) -> str:
        return report.median_range([getattr(r, attr) for r in self.runs])


class Results:
    def __init__(self, scenarios: list[Scenario]) -> None:
        self.by = {(s.system.key, s.kind, s.task, s.latency_ms, s.logging): s for s in scenarios}

    def get(self, key: str, kind: str, task: str, latency: float = 0.0, logging: str = "default") -> Scenario | None:
        return self.by.get((key, kind, task, latency, logging))

    def fastest(self, key: str, task: str, latency: float = 0.0, logging: str | None = "default") -> Scenario | None:
        """The system's fastest configuration for a task: the kind (and,
        when ``logging`` is None, the logging setup) with the highest
        median processing rate."""
        found = [s for (k, _, t, lat, log), s in self.by.items()
                 if k == key and t == task and lat == latency and (logging is None or log == logging)]
        return max(found, key=lambda s: s.med("process"), default=None)


# --- reporting ----------------------------------------------------------------------------------

def fmt(value: float) -> str:
    return "–" if value != value else f"{value:,.0f}"


def ratio(a: float, b: float, digits: int = 1) -> str:
    return "–" if not (a == a and b == b and b) else f"{a / b:.{digits}f}×"


def headline(res: Results, chosen: list[System]) -> str:
    lines = ["| System | sync no-op | async no-op | fastest kind | sync 10 ms sleep | async 10 ms sleep "
             "| fastest kind |",
             "|---|---|---|---|---|---|---|"]
    for system in chosen:
        cells = [system.name]
        for task in TASKS:
            for kind in ("sync", "async"):
                s = res.get(system.key, kind, task)
                cells.append(s.spread("process") if s else "not measured")
            best = res.fastest(system.key, task)
            cells.append(f"**{best.kind}**" if best else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def against_peer(res: Results, latency: float) -> list[str]:
    """vtasks (module), each kind, against django-vtasks' fastest kind."""
    rows = []
    for task in TASKS:
        peer = res.fastest("django-vtasks", task, latency)
        for kind in ("sync", "async"):
            ours = res.get("vtasks-module", kind, task, latency)
            if ours is None or peer is None:
                continue
            rows.append(f"| {'2 ms RTT' if latency else 'localhost'} | {kind} {task} | {fmt(ours.med('process'))} "
                        f"| {fmt(peer.med('process'))} ({peer.kind}) "
                        f"| {ratio(ours.med('process'), peer.med('process'))} |")
    return rows


def logging_table(res: Results) -> str:
    lines = ["| Logging | vtasks (module) sync | vtasks (module) async | django-vtasks sync | django-vtasks async "
             "| vtasks sync / django-vtasks' fastest |",
             "|---|---|---|---|---|---|"]
    peer_best = res.fastest("django-vtasks", "no-op", 0.0, logging=None)
    for logging, description in LOGGINGS.items():
        cells = [description]
        for key in HEADLINE_SYSTEMS:
            for kind in ("sync", "async"):
                s = res.get(key, kind, "no-op", 0.0, logging)
                cells.append(s.spread("process") if s else "–")
        ours = res.get("vtasks-module", "sync", "no-op", 0.0, logging)
        cells.append(ratio(ours.med("process"), peer_best.med("process")) if ours and peer_best else "–")
        lines.append("| " + " | ".join(cells) + " |")
    if peer_best is not None:
        lines.append("")
        lines.append(f"django-vtasks' fastest of these: {peer_best.kind}, {LOGGINGS[peer_best.logging]}, "
                     f"{fmt(peer_best.med('process'))}/s.")
    return "\n".join(lines) + "\n"


def table(scenarios: list[Scenario]) -> str:
    lines = ["| System | Kind | Task | Tasks | Process/s (from launch) | First task ms (from launch) "
             "| Process/s after the first task | Peak RSS MB | Valkey conns | Server CPU µs/task |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in scenarios:
        lines.append(
            f"| {s.system.name} | {s.kind} | {s.task} | {s.tasks:,} | {s.spread('process')} "
            f"| {s.med('first_task_ms'):.0f} | {s.spread('steady')} | {s.med('rss_mb'):.0f} "
            f"| {max(r.connections for r in s.runs)} | {s.med('cpu_us_per_task'):.1f} |"
        )
    return "\n".join(lines) + "\n"


def enqueue_table(enqueues: list[Enqueues], latency: float) -> str:
    rows = [e for e in enqueues if e.latency_ms == latency]
    head = ("| System | Tasks | sync `enqueue()`, sequential | `await aenqueue()`, sequential "
            "| 100 concurrent producers |")
    sep = "|---|---|---|---|---|"
    if latency:
        head += " PING round trip ms | sequential `aenqueue()` × RTT |"
        sep += "---|---|"
    lines = [head, sep]
    for e in rows:
        line = (f"| {e.system.name} | {e.tasks:,} | {e.spread('sync')} | {e.spread('sequential')} "
                f"| {e.spread('concurrent')} |")
        if latency:
            fractions = [r.sequential * r.rtt_ms / 1000 for r in e.runs]
            line += f" {e.med('rtt_ms'):.2f} | {statistics.median(fractions):.0%} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def goals(res: Results, enqueues: list[Enqueues], alone: list[DjangoAlone], n: int) -> str:
    """The goals of issue 15 that this benchmark measures, each beside the
    most that Django's start-up alone leaves any worker (``alone``)."""
    enq = {(e.system.key, e.latency_ms): e for e in enqueues}
    ready_s = statistics.median(a.ready_ms for a in alone) / 1000 if alone else float("nan")
    alone_rss = statistics.median(a.rss_mb for a in alone) if alone else float("nan")
    rows = []

    def row(goal: str, value: str, bound: str, met: bool | None) -> None:
        verdict = "–" if met is None else ("met" if met else "**not met**")
        rows.append(f"| {goal} | {value} | {bound} | {verdict} |")

    def versus(task: str, kind: str, latency: float, target: float, goal: str, peer_kind: str | None = None) -> None:
        ours = res.get("vtasks-module", kind, task, latency)
        peer = (res.get("django-vtasks", peer_kind, task, latency) if peer_kind
                else res.fastest("django-vtasks", task, latency))
        if ours is None or peer is None:
            return
        r = ours.med("process") / peer.med("process")
        # At best every task runs the moment Django is ready, at the
        # concurrency's ceiling: 200 side by side, 10 ms each for the sleeps.
        ceiling = CONCURRENCY / 0.010 if task == "sleep 10 ms" else float("inf")
        best = n / (ready_s + n / ceiling)
        bound = f"{best / peer.med('process'):.1f}× ({fmt(best)}/s)" if best == best else "–"
        row(goal, f"{r:.1f}× ({fmt(ours.med('process'))} vs {fmt(peer.med('process'))}/s, django-vtasks {peer.kind})",
            bound, r >= target)

    versus("no-op", "sync", 0.0, 4, "sync no-op ≥ 4× django-vtasks' fastest no-op, localhost")
    versus("no-op", "async", 0.0, 4, "async no-op ≥ 4× django-vtasks' fastest no-op, localhost")
    versus("sleep 10 ms", "sync", 0.0, 15, "sync 10 ms sleep ≥ 15× django-vtasks' sync sleep", peer_kind="sync")
    versus("sleep 10 ms", "sync", 0.0, 15, "the same against django-vtasks' fastest sleep kind")
    versus("no-op", "sync", 1.0, 25, "sync no-op at 2 ms RTT ≥ 25× django-vtasks' fastest no-op")
    ours, peer = enq.get(("vtasks-module", 0.0)), enq.get(("django-vtasks", 0.0))
    if ours and peer:
        for attr, what in (("sequential", "sequential `aenqueue()`"), ("sync", "sequential sync `enqueue()`")):
            r = ours.med(attr) / peer.med(attr)
            row(f"{what} ≥ 2× django-vtasks, localhost",
                f"{r:.2f}× ({fmt(ours.med(attr))} vs {fmt(peer.med(attr))}/s)", "–", r >= 2)
        row("100 concurrent producers ≥ 50,000/s", f"{fmt(ours.med('concurrent'))}/s", "–",
            ours.med("concurrent") >= 50_000)
    remote = enq.get(("vtasks-module", 1.0))
    if remote:
        fraction = statistics.median(r.sequential * r.rtt_ms / 1000 for r in remote.runs)
        row("sequential `aenqueue()` at 2 ms ≥ 95% of 1/RTT",
            f"{fraction:.0%} ({fmt(remote.med('sequential'))}/s at a {remote.med('rtt_ms'):.2f} ms PING round trip)",
            "–", fraction >= 0.95)
    for task in TASKS:
        for kind in ("sync", "async"):
            ours_s, peer_s = res.get("vtasks-module", kind, task), res.get("django-vtasks", kind, task)
            if ours_s and peer_s:
                r = ours_s.med("rss_mb") / peer_s.med("rss_mb")
                least = alone_rss / peer_s.med("rss_mb")
                row(f"peak worker RSS ≤ 0.7× django-vtasks' ({kind} {task}, localhost)",
                    f"{r:.2f}× ({ours_s.med('rss_mb'):.0f} vs {peer_s.med('rss_mb'):.0f} MB)",
                    f"at least {least:.2f}× ({alone_rss:.0f} MB)" if least == least else "–", r <= 0.7)
    return ("| Goal (issue 15) | Measured | Django's start-up alone allows | |\n|---|---|---|---|\n"
            + "\n".join(rows) + "\n")


def django_alone_note(alone: list[DjangoAlone]) -> str:
    ready = report.median_range([a.ready_ms for a in alone])
    rss = report.median_range([a.rss_mb for a in alone])
    return (
        "The third column is what Django's own start-up leaves any worker started by `manage.py`, vtasks or "
        "another: a process that imports Django's management, runs `django.setup()` with no app and no "
        f"`TASKS` setting, and imports the benchmark's tasks module ({len(alone)} runs) was ready {ready} ms "
        f"after its launch, with a peak RSS of {rss} MB. A worker that ran every task the moment Django was "
        "ready (no-ops in no time, sleeps 200 at a time) would reach the rate given; no worker's peak RSS "
        "can be below that process's.\n"
    )


def chart(scenarios: list[Scenario], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = [s for s in scenarios if s.logging == "default"]
    groups = sorted({(s.latency_ms, s.task) for s in scenarios})
    bars = list(dict.fromkeys((s.system.name, s.kind) for s in scenarios))
    colours = {name: f"C{i}" for i, name in enumerate(dict.fromkeys(name for name, _ in bars))}
    fig, ax = plt.subplots(figsize=(12, 6))
    width = 0.85 / max(1, len(bars))
    highest = 0.0
    for i, (name, kind) in enumerate(bars):
        values = []
        for latency, task in groups:
            match = [s for s in scenarios
                     if (s.system.name, s.kind, s.task, s.latency_ms) == (name, kind, task, latency)]
            values.append(match[0].med("process") if match else 0)
        highest = max([highest, *values])
        xs = [g + (i - (len(bars) - 1) / 2) * width for g in range(len(groups))]
        drawn = ax.bar(xs, values, width, label=f"{name}, {kind}", color=colours[name],
                       hatch="//" if kind == "async" else None, edgecolor="white" if kind == "async" else None)
        ax.bar_label(drawn, labels=[f"{v:,.0f}" if v else "" for v in values], fontsize=6, rotation=90, padding=2)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{task}\n{'2 ms RTT' if latency else 'localhost'}" for latency, task in groups])
    ax.set_yscale("log")
    if highest > 0:
        ax.set_ylim(top=highest * 3)  # room for the tallest bars' labels
    ax.set_ylabel("tasks/s from the worker's launch to the last task (log scale)")
    ax.set_title("One worker process, concurrency 200 (RQ: single-threaded); hatched: async tasks")
    # Below the bars, where it covers none of their labels.
    ax.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")


def versions() -> str:
    v = report.version
    return (f"vtasks {v('vtasks')}, django-vtasks {v('django-vtasks')}, Celery {v('celery')}, "
            f"django-tasks-rq {v('django-tasks-rq')} (RQ {v('rq')}), Django {v('django')}")


def settings_note() -> str:
    return """Settings that differ from each system's defaults, the same in every run:

- every worker runs at concurrency 200 (vtasks' `runworker` and django-vtasks' default is 20, django-vtasks' set by
  `VTASKS_CONCURRENCY`, Celery's by `-c`; `benchmarks/defaults.py` measures the defaults); RQ's worker runs one
  job at a time, in a forked process;
- vtasks: the backend's `ENGINE` is named (`module` or `scripts`) instead of `auto`; results are kept
  (the default, a day);
- django-vtasks: `VTASKS_RUN_SCHEDULER = False` (no periodic tasks here);
- Celery: `task_ignore_result=True`, `worker_hijack_root_logger=False`, `--without-gossip
  --without-mingle --without-heartbeat`, `-l WARNING`;
- Django: `DEBUG = False`, an in-memory SQLite database (no query runs; django-vtasks' sync `enqueue()`
  needs one for `on_commit`), no `LOGGING` setting except in the logging table.
"""


def main() -> None:
    report.compile_sources()
    report.stop_on_sigterm()
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--rq-tasks", type=int, default=500)
    parser.add_argument("--enqueue-tasks", type=int, default=20_000,
                        help="tasks per enqueue run on localhost (RQ: a tenth)")
    parser.add_argument("--enqueue-runs", type=int, default=5,
                        help="enqueue runs per system (a run is short and the machine noisy: more than --runs)")
    parser.add_argument("--remote-enqueue-tasks", type=int, default=2000,
                        help="tasks per enqueue run at 2 ms (RQ: a tenth)")
    parser.add_argument("--memory-tasks", type=int, default=100_000)
    parser.add_argument("--only", help="run only systems whose name contains this")
    parser.add_argument("--no-latency", action="store_true", help="skip the 2 ms RTT runs")
    parser.add_argument("--print-only", action="store_true", help="write no files (a quick check of the setup)")
    args = parser.parse_args()
    os.environ.setdefault("VTASKS_MODULE", str(ROOT / "target" / "release" / "libvtasks.so"))

    chosen = [s for s in systems() if not args.only or args.only.lower() in s.name.lower()]
    latencies = [0.0] if args.no_latency else [0.0, 1.0]

    scenarios: list[Scenario] = []
    enqueues: list[Enqueues] = []
    alone: list[DjangoAlone] = []
    for latency in latencies:
        for system in chosen:
            n = args.rq_tasks if system.single_threaded else args.tasks
            e = args.remote_enqueue_tasks if latency else args.enqueue_tasks
            if system.single_threaded:
                e //= 10
            enqueues.append(Enqueues(system, latency, e))
            for kind in system.kinds:
                for task in TASKS:
                    scenarios.append(Scenario(system, kind, task, latency, "default", n))
    for system in chosen:
        if system.key in HEADLINE_SYSTEMS:
            for logging in LOGGINGS:
                if logging != "default":
                    for kind in system.kinds:
                        scenarios.append(Scenario(system, kind, "no-op", 0.0, logging, args.tasks))

    rtt_lines = []
    if not args.no_latency:
        from tests.conftest import ValkeyServer

        report.wait_idle()
        probe = ValkeyServer(with_module=True)
        proxy = LatencyProxy("127.0.0.1", probe.port, 0.001).start()
        direct_rtts, proxy_rtts = ping_rtts_ms(probe.port, 2000), proxy.rtts_ms(2000)
        proxy.stop()
        probe.close()
        rtt_lines = [f"PING round trips, 2,000 one after the other from Python: directly {describe(direct_rtts)}; "
                     f"through the proxy {describe(proxy_rtts)}."]
        print(rtt_lines[0], flush=True)

    for run in range(max(args.runs, args.enqueue_runs)):
        for en in enqueues if run < args.enqueue_runs else []:
            r = report.retrying(f"enqueue {en.system.name}", enqueue_run, en.system, en.tasks, en.latency_ms)
            en.runs.append(r)
            print(f"  enqueue {en.system.name}, {'2 ms' if en.latency_ms else 'local'}, run {run + 1}: "
                  f"sync {r.sync:,.0f}/s, sequential {r.sequential:,.0f}/s, concurrent {r.concurrent:,.0f}/s, "
                  f"RTT {r.rtt_ms:.2f} ms, load {r.load:.2f}", flush=True)
        for _ in range(ALONE_RUNS) if run < args.runs else []:
            a = django_alone_run()
            alone.append(a)
            print(f"  Django alone, round {run + 1}: ready {a.ready_ms:.0f} ms from launch, RSS {a.rss_mb:.0f} MB, "
                  f"load {a.load:.2f}", flush=True)
        for s in scenarios if run < args.runs else []:
            r = report.retrying(s.label(), process_run, s.system, s.task_name, s.tasks, s.latency_ms, s.logging)
            s.runs.append(r)
            print(f"  {s.label()}, run {run + 1}: {r.process:,.0f}/s, first task {r.first_task_ms:.0f} ms, "
                  f"{r.steady:,.0f}/s after it, RSS {r.rss_mb:.0f} MB, {r.connections} conns, "
                  f"{r.cpu_us_per_task:.1f} µs CPU/task, load {r.load:.2f}", flush=True)

    memory = {}
    for system in chosen:
        # RQ enqueues a few hundred tasks/s here: 20,000 give its per-task figure.
        n = min(args.memory_tasks, 20_000) if system.single_threaded else args.memory_tasks
        memory[system.name] = memory_per_task(system, n)
        print(f"  {system.name}: {memory[system.name]:.0f} bytes per queued task", flush=True)

    res = Results(scenarios)
    local = [s for s in scenarios if not s.latency_ms and s.logging == "default"]
    remote = [s for s in scenarios if s.latency_ms]
    loads = [r.load for s in scenarios for r in s.runs] + [r.load for e in enqueues for r in e.runs]
    text = [
        report.header("compare", loads, versions()),
        f"{args.runs} runs per scenario, round-robin; medians with min–max. Processing: {args.tasks:,} tasks per run "
        f"(RQ {args.rq_tasks:,}), rates from the worker process's launch to its last task's completion "
        "(the published benchmark's method) unless a column says otherwise. Enqueueing: "
        f"{args.enqueue_runs} runs per system, {args.enqueue_tasks:,} tasks per run on localhost "
        f"and {args.remote_enqueue_tasks:,} at 2 ms (RQ a tenth).",
        "",
        settings_note(),
        "### Headline: processing rate, localhost, Django's default logging",
        "",
        "Tasks/s from the worker's launch to the last of the tasks done; each system's fastest kind in bold. "
        "Celery and RQ are measured with sync functions only: Celery has no `async def` tasks, and RQ runs "
        "an `async def` job with `asyncio.run` in the process it forks for each job, one job at a time.",
        "",
        headline(res, chosen),
        "vtasks (module), each kind, against django-vtasks' fastest kind of the same task:",
        "",
        "| Latency | vtasks task | vtasks /s | django-vtasks /s (its fastest kind) | ratio |",
        "|---|---|---|---|---|",
        *against_peer(res, 0.0),
        *against_peer(res, 1.0),
        "",
        "### Against the goals",
        "",
        goals(res, enqueues, alone, args.tasks),
        django_alone_note(alone),
        "### Logging",
        "",
        "No-op tasks, localhost, with three logging setups. Django's own receivers of `task_started` and "
        "`task_finished` log at INFO on `django.tasks`; Django's default logging builds those records and "
        "drops them (`DEBUG = False`), a root console handler prints them (two lines per task, to the "
        "worker's output, a file here), and the `django.tasks` logger at WARNING skips them. django-vtasks "
        "sends its own signals.",
        "",
        logging_table(res),
        "### Localhost, every scenario",
        "",
        table(local),
    ]
    if remote:
        text += [
            "### 2 ms round trip (1 ms each way through `benchmarks/src/bin/latency_proxy.rs`)",
            "",
            *rtt_lines,
            "",
            table(remote),
        ]
    text += [
        "### Enqueue",
        "",
        "Localhost, one sync no-op task per call, each shape in its own process after one warm-up call:",
        "",
        enqueue_table(enqueues, 0.0),
    ]
    if remote:
        text += [
            "At 2 ms; the last column is the sequential `aenqueue()` rate as a fraction of 1/RTT, with the PING "
            "round trip measured through the proxy after the run:",
            "",
            enqueue_table(enqueues, 1.0),
        ]
    text += [
        "### Memory per queued task",
        "",
        f"`INFO memory` `used_memory` growth per task with {args.memory_tasks:,} no-op tasks waiting "
        "(RQ: at most 20,000):",
        "",
        "| System | Bytes per queued task |",
        "|---|---|",
        *[f"| {name} | {value:,.0f} |" for name, value in memory.items()],
        "",
        "![Processing rate per system, kind and scenario](results/compare.png)",
    ]
    body = "\n".join(text) + "\n"
    print(body)
    if args.print_only:
        return
    chart(scenarios, RESULTS / "compare.png")
    report.write_section("compare", body)


if __name__ == "__main__":
    main()
