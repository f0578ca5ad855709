"""The Python package with one worker process: the raw `vtasks.Worker` and
Django's `manage.py runworker` on the same tasks, sync and async, with the
module engine and the scripts engine, on localhost and at 2 ms round trip;
and the raw client's enqueue rates.

    .venv/bin/python -m benchmarks.python_bench [--tasks 50000] [--runs 3]
        [--engines module,scripts] [--latencies 0,1] [--workers raw,django]
        [--enqueue-tasks 5000] [--print-only]

Processing: for each engine, latency, worker, kind of task (sync ``def``,
``async def``) and task (no-op, 10 ms sleep), a fresh valkey-server (from
`module/valkey.conf`, with the release module; the scripts engine is
chosen by the client's ``engine`` option on the same server) is filled
with ``--tasks`` tasks, then one worker process at concurrency 200 in burst
mode drains it: `benchmarks/python_worker.py` (``vtasks.Worker`` with its
defaults) or `python -m django runworker --burst --concurrency 200` with
`benchmarks/peers/settings.py` (Django's default logging, the backend's
defaults but its ``ENGINE``). Every task appends its completion time to a
file, so the rates are exact:

- **after the first task**: from the first completion to the last, the
  steady state;
- **from launch**: from the driver's clock just before it starts the
  worker process (Python's start, imports, ``django.setup()``, the
  connection and the first fetch included);
- **from ready** (raw worker only): from the moment the worker process had
  imported everything, connected to Valkey and built its ``Worker``.

Peak RSS is the worker process's ``VmHWM``; server CPU the ``INFO cpu``
delta per task from the launch to the last task. At 2 ms the worker reaches
Valkey through `benchmarks/src/bin/latency_proxy.rs` (1 ms each way); the
queue is filled directly.

Enqueue: the raw ``vtasks.Client`` in this process, one no-op task per call:
a plain loop of ``enqueue_sync()``, sequential ``await enqueue()``, 100
concurrent producers, each after one warm-up call.

Runs go round-robin, each once the machine's other work uses less than
0.3 of a core (or after a minute). Writes the `python` section of
`benchmarks/RESULTS.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

import vtasks

from benchmarks import bench_tasks, report
from benchmarks.latency_proxy import LatencyProxy, ping_rtts_ms
from tests.conftest import ValkeyServer

ROOT = report.ROOT
CONCURRENCY = 200
TASKS = {"no-op": "noop", "sleep 10 ms": "sleep"}
KINDS = ("sync", "async")
CEILING = CONCURRENCY / 0.01  # 10 ms tasks at concurrency 200: 20,000/s


# --- processing ---------------------------------------------------------------------------------

@dataclass
class Run:
    steady: float
    from_launch: float
    from_ready: float  # NaN for the Django worker
    first_task_ms: float
    rss_mb: float
    connections: int
    cpu_us_per_task: float
    load: float


def worker_command(worker: str, url: str, engine: str) -> list[str]:
    if worker == "raw":
        return [sys.executable, "-m", "benchmarks.python_worker", url, str(CONCURRENCY), engine]
    return [sys.executable, "-m", "django", "runworker", "--burst", "--concurrency", str(CONCURRENCY)]


def django_env(engine: str, url: str, done: str) -> dict[str, str]:
    return {
        **os.environ,
        "BENCH_SYSTEM": f"vtasks-{engine}",
        "BENCH_URL": url,
        "BENCH_DONE_FILE": done,
        "DJANGO_SETTINGS_MODULE": "benchmarks.peers.settings",
        "PYTHONPATH": str(ROOT),
    }


def fill(worker: str, engine: str, task_name: str, n: int, server: ValkeyServer) -> None:
    if worker == "raw":
        client = vtasks.Client(server.url, engine=engine)
        task = getattr(bench_tasks, task_name)
        for start in range(0, n, 1000):
            client.enqueue_many_sync(task, [((), {})] * min(1000, n - start))
        return
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.peers.enqueue", task_name, str(n), "concurrent"],
        env=django_env(engine, server.url, os.devnull), cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    if out.returncode != 0:
        raise RuntimeError(f"filling the queue failed:\n{out.stdout}\n{out.stderr}")


def process_run(worker: str, engine: str, latency_ms: float, kind: str, task: str, n: int) -> Run:
    load = report.wait_idle()
    server = ValkeyServer(with_module=True)
    proxy = None
    try:
        task_name = f"{TASKS[task]}_{kind}"
        fill(worker, engine, task_name, n, server)
        url = server.url
        if latency_ms:
            proxy = LatencyProxy("127.0.0.1", server.port, latency_ms / 1000).start()
            url = f"valkey://127.0.0.1:{proxy.port}"
        with report.done_file() as done:
            env = django_env(engine, url, str(done))
            w = report.watch(worker_command(worker, url, engine), env, done, n, server.port, burst=True)
        ready = json.loads(w.output.strip().splitlines()[-1])["ready"] if worker == "raw" else float("nan")
        return Run(
            steady=w.steady(n),
            from_launch=w.rate_from(w.launched, n),
            from_ready=w.rate_from(ready, n),
            first_task_ms=(w.first - w.launched) * 1000,
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
class Scenario:
    engine: str
    latency_ms: float
    worker: str
    kind: str
    task: str
    runs: list[Run] = field(default_factory=list)

    def med(self, attr: str) -> float:
        values = [v for v in (getattr(r, attr) for r in self.runs) if v == v]
        return statistics.median(values) if values else float("nan")

    def spread(self, attr: str) -> str:
        return report.median_range([getattr(r, attr) for r in self.runs])

    def label(self) -> str:
        return (f"{self.engine}, {'2 ms' if self.latency_ms else 'local'}, {self.worker}, {self.kind}, "
                f"{self.task}")


# --- enqueue ------------------------------------------------------------------------------------

@dataclass
class EnqueueRun:
    sync: float
    sequential: float
    concurrent: float
    rtt_ms: float
    load: float


async def _sequential(client: vtasks.Client, n: int) -> float:
    await client.enqueue(bench_tasks.noop_sync)  # warm-up
    started = time.perf_counter()
    for _ in range(n):
        await client.enqueue(bench_tasks.noop_sync)
    return n / (time.perf_counter() - started)


async def _concurrent(client: vtasks.Client, n: int, producers: int = 100) -> float:
    async def producer(count: int) -> None:
        for _ in range(count):
            await client.enqueue(bench_tasks.noop_sync)

    await client.enqueue(bench_tasks.noop_sync)  # warm-up
    started = time.perf_counter()
    await asyncio.gather(*(producer(n // producers + (i < n % producers)) for i in range(producers)))
    return n / (time.perf_counter() - started)


def _sync(client: vtasks.Client, n: int) -> float:
    client.enqueue_sync(bench_tasks.noop_sync)  # warm-up
    started = time.perf_counter()
    for _ in range(n):
        client.enqueue_sync(bench_tasks.noop_sync)
    return n / (time.perf_counter() - started)


def enqueue_run(engine: str, latency_ms: float, n: int) -> EnqueueRun:
    load = report.wait_idle()
    server = ValkeyServer(with_module=True)
    proxy = None
    try:
        port = server.port
        if latency_ms:
            proxy = LatencyProxy("127.0.0.1", server.port, latency_ms / 1000).start()
            port = proxy.port
        url = f"valkey://127.0.0.1:{port}"
        # A fresh client for each shape: each opens its connection in its warm-up.
        sync = _sync(vtasks.Client(url, engine=engine), n)
        report.command(server.port, "FLUSHALL")
        sequential = asyncio.run(_sequential(vtasks.Client(url, engine=engine), n))
        report.command(server.port, "FLUSHALL")
        concurrent = asyncio.run(_concurrent(vtasks.Client(url, engine=engine), n))
        rtt = statistics.median(ping_rtts_ms(port, 200))
        return EnqueueRun(sync, sequential, concurrent, rtt, load)
    finally:
        if proxy is not None:
            proxy.stop()
        server.close()


@dataclass
class Enqueues:
    engine: str
    latency_ms: float
    tasks: int
    runs: list[EnqueueRun] = field(default_factory=list)

    def med(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.runs)

    def spread(self, attr: str) -> str:
        return report.median_range([getattr(r, attr) for r in self.runs])


# --- reporting ----------------------------------------------------------------------------------

def fmt(value: float) -> str:
    return "–" if value != value else f"{value:,.0f}"


def processing_table(scenarios: list[Scenario]) -> str:
    lines = ["| Engine | Latency | Worker | Kind | Task | Process/s after the first task | Process/s from launch "
             "| Process/s from ready | First task ms from launch | Peak RSS MB | Valkey conns | Server CPU µs/task |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in scenarios:
        lines.append(
            f"| {s.engine} | {'2 ms' if s.latency_ms else 'localhost'} "
            f"| {'`vtasks.Worker`' if s.worker == 'raw' else '`runworker`'} | {s.kind} | {s.task} "
            f"| {s.spread('steady')} | {s.spread('from_launch')} | {s.spread('from_ready')} "
            f"| {s.med('first_task_ms'):.0f} | {s.med('rss_mb'):.0f} | {max(r.connections for r in s.runs)} "
            f"| {s.med('cpu_us_per_task'):.1f} |"
        )
    return "\n".join(lines) + "\n"


def enqueue_table(enqueues: list[Enqueues]) -> str:
    lines = ["| Engine | Latency | Tasks | `enqueue_sync()`, sequential | `await enqueue()`, sequential "
             "| 100 concurrent producers | PING round trip ms | sequential `enqueue()` × RTT |",
             "|---|---|---|---|---|---|---|---|"]
    for e in enqueues:
        fraction = statistics.median(r.sequential * r.rtt_ms / 1000 for r in e.runs)
        lines.append(
            f"| {e.engine} | {'2 ms' if e.latency_ms else 'localhost'} | {e.tasks:,} | {e.spread('sync')} "
            f"| {e.spread('sequential')} | {e.spread('concurrent')} | {e.med('rtt_ms'):.2f} "
            f"| {f'{fraction:.0%}' if e.latency_ms else '–'} |"
        )
    return "\n".join(lines) + "\n"


def goals(scenarios: list[Scenario]) -> str:
    """The steady-state goals of issue 15, on localhost with the module."""
    by = {(s.engine, s.latency_ms, s.worker, s.kind, s.task): s for s in scenarios}
    rows = []

    def row(goal: str, value: str, met: bool) -> None:
        rows.append(f"| {goal} | {value} | {'met' if met else '**not met**'} |")

    for task in TASKS:
        for kind in KINDS:
            raw, dj = by.get(("module", 0.0, "raw", kind, task)), by.get(("module", 0.0, "django", kind, task))
            if raw and dj:
                r = dj.med("steady") / raw.med("steady")
                row(f"`runworker` ≥ 80% of the raw `vtasks.Worker`, {kind} {task}",
                    f"{r:.0%} ({fmt(dj.med('steady'))} vs {fmt(raw.med('steady'))}/s)", r >= 0.8)
    for kind in KINDS:
        raw = by.get(("module", 0.0, "raw", kind, "no-op"))
        if raw:
            row(f"raw `vtasks.Worker` ≥ 60,000 no-op tasks/s, {kind}", f"{fmt(raw.med('steady'))}/s",
                raw.med("steady") >= 60_000)
    for worker in ("django", "raw"):
        for kind in KINDS:
            s = by.get(("module", 0.0, worker, kind, "sleep 10 ms"))
            if s:
                r = s.med("steady") / CEILING
                row(f"10 ms sleeps ≥ 75% of the {CEILING:,.0f}/s ceiling, "
                    f"{'`runworker`' if worker == 'django' else 'raw `vtasks.Worker`'}, {kind}",
                    f"{r:.0%} ({fmt(s.med('steady'))}/s)", r >= 0.75)
    if not rows:
        return ""
    return ("Rates after the first task, localhost, module engine:\n\n"
            "| Goal (issue 15) | Measured | |\n|---|---|---|\n" + "\n".join(rows) + "\n")


def engines_cpu(scenarios: list[Scenario]) -> str:
    """Server CPU per task, scripts engine against module engine."""
    by = {(s.engine, s.latency_ms, s.worker, s.kind, s.task): s for s in scenarios}
    lines = ["| Latency | Worker | Kind | Task | module µs/task | scripts µs/task | scripts / module |",
             "|---|---|---|---|---|---|---|"]
    for (engine, latency, worker, kind, task), s in by.items():
        other = by.get(("scripts", latency, worker, kind, task))
        if engine != "module" or other is None:
            continue
        m, sc = s.med("cpu_us_per_task"), other.med("cpu_us_per_task")
        lines.append(f"| {'2 ms' if latency else 'localhost'} "
                     f"| {'`vtasks.Worker`' if worker == 'raw' else '`runworker`'} | {kind} | {task} "
                     f"| {m:.1f} | {sc:.1f} | {sc / m:.2f}× |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def main() -> None:
    report.compile_sources()
    report.stop_on_sigterm()
    # Measure the build users run: the release module (tests use debug).
    os.environ.setdefault("VTASKS_MODULE", str(ROOT / "target" / "release" / "libvtasks.so"))
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--engines", default="module,scripts")
    parser.add_argument("--latencies", default="0,1", help="ms added to each direction, comma-separated")
    parser.add_argument("--workers", default="raw,django")
    parser.add_argument("--enqueue-tasks", type=int, default=5000, help="per enqueue run (at 2 ms: 2,000)")
    parser.add_argument("--print-only", action="store_true", help="write nothing")
    args = parser.parse_args()
    engines = args.engines.split(",")
    latencies = [float(x) for x in args.latencies.split(",")]
    workers = args.workers.split(",")

    scenarios = [Scenario(e, lat, w, k, t) for lat in latencies for e in engines for w in workers
                 for k in KINDS for t in TASKS]
    enqueues = [Enqueues(e, lat, min(args.enqueue_tasks, 2000) if lat else args.enqueue_tasks)
                for lat in latencies for e in engines]
    for run in range(args.runs):
        for en in enqueues:
            r = report.retrying(f"enqueue {en.engine}", enqueue_run, en.engine, en.latency_ms, en.tasks)
            en.runs.append(r)
            print(f"  enqueue {en.engine}, {'2 ms' if en.latency_ms else 'local'}, run {run + 1}: "
                  f"sync {r.sync:,.0f}/s, sequential {r.sequential:,.0f}/s, concurrent {r.concurrent:,.0f}/s, "
                  f"RTT {r.rtt_ms:.2f} ms, load {r.load:.2f}", flush=True)
        for s in scenarios:
            r = report.retrying(s.label(), process_run, s.worker, s.engine, s.latency_ms, s.kind, s.task,
                                args.tasks)
            s.runs.append(r)
            print(f"  {s.label()}, run {run + 1}: {r.steady:,.0f}/s after the first task, "
                  f"{r.from_launch:,.0f}/s from launch, {r.from_ready:,.0f}/s from ready, first task "
                  f"{r.first_task_ms:.0f} ms, RSS {r.rss_mb:.0f} MB, {r.connections} conns, "
                  f"{r.cpu_us_per_task:.1f} µs CPU/task, load {r.load:.2f}", flush=True)

    loads = [r.load for s in scenarios for r in s.runs] + [r.load for e in enqueues for r in e.runs]
    text = [
        report.header("python_bench", loads, f"vtasks {report.version('vtasks')}, Django {report.version('django')}"),
        f"{args.runs} runs per scenario, round-robin; medians with min–max. {args.tasks:,} tasks per run, one worker "
        f"process at concurrency {CONCURRENCY} in burst mode. `vtasks.Worker`: its defaults otherwise; "
        "`runworker`: Django's default logging (no `LOGGING` setting), the backend's defaults but `ENGINE`. "
        "Both keep results (the default, a day).",
        "",
        goals(scenarios),
        "### Processing",
        "",
        "Three clocks: after the first task (first completion to last: the steady state); from launch (the "
        "driver's clock just before it starts the worker process); from ready (the raw worker's own clock once "
        "it has imported everything, connected and built its `Worker`; `runworker` has no such point).",
        "",
        processing_table(scenarios),
    ]
    cpu = engines_cpu(scenarios)
    if cpu:
        text += ["### Server CPU per task, scripts engine against module engine", "", cpu]
    text += ["### Enqueue (the raw client)", "", enqueue_table(enqueues)]
    body = "\n".join(text) + "\n"
    print(body)
    if not args.print_only:
        report.write_section("python", body)


if __name__ == "__main__":
    main()
