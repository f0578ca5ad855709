"""vtasks side by side with django-vtasks, Celery and RQ, on localhost and
with 2 ms added round-trip latency.

    .bench-venv/bin/python -m benchmarks.compare [--runs 3] [--tasks 5000]
        [--rq-tasks 500] [--memory-tasks 100000] [--only SYSTEM] [--no-latency]

(`make compare` creates `.bench-venv` from `benchmarks/requirements.txt` and
runs this.) For each system and task (no-op, 10 ms sleep): a fresh
valkey-server from `module/valkey.conf` (persistence off, the same build for
everyone), N tasks enqueued by a sequential loop from asyncio, one worker
process started (concurrency 200; RQ's worker is single-threaded) and timed
from its start to the last task done, then N more enqueued by 100 concurrent
producers. Peak RSS is the worker's process tree, Valkey connections the
ones the worker holds, server CPU the `INFO cpu` delta while it processes.
Every scenario runs `--runs` times after the machine is idle; tables give
medians with min–max. Finally, memory per queued task: `INFO memory` before
and after enqueueing `--memory-tasks` tasks with no worker.

Writes `benchmarks/results/compare.md`, `benchmarks/results/compare.png`
and the comparison section of `benchmarks/RESULTS.md`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from benchmarks import python_bench
from benchmarks.latency_proxy import LatencyProxy

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CONCURRENCY = 200
MARK_BEGIN = "<!-- compare:begin -->"
MARK_END = "<!-- compare:end -->"


@dataclass(frozen=True)
class System:
    name: str
    key: str  # BENCH_SYSTEM
    tasks: dict[str, str]  # scenario -> task name
    worker: list[str]
    single_threaded: bool = False


def systems() -> list[System]:
    py = sys.executable
    django = [py, "-m", "django"]
    async_tasks = {"no-op": "noop_async", "sleep 10 ms": "sleep_async"}
    sync_tasks = {"no-op": "noop_sync", "sleep 10 ms": "sleep_sync"}
    return [
        System("vtasks (module)", "vtasks-module", async_tasks,
               [*django, "runworker", "--concurrency", str(CONCURRENCY)]),
        System("vtasks (scripts)", "vtasks-scripts", async_tasks,
               [*django, "runworker", "--concurrency", str(CONCURRENCY)]),
        System("django-vtasks", "django-vtasks", async_tasks,
               [*django, "runworker", "--concurrency", str(CONCURRENCY)]),
        System("Celery (threads)", "celery", sync_tasks,
               [py, "-m", "celery", "-A", "benchmarks.peers.celery_app", "worker", "-P", "threads",
                "-c", str(CONCURRENCY), "--without-gossip", "--without-mingle", "--without-heartbeat",
                "-l", "WARNING"]),
        System("RQ", "rq", sync_tasks, [*django, "rqworker", "--job-class", "django_tasks_rq.Job", "default"],
               single_threaded=True),
    ]


# --- the server and what it reports -------------------------------------------------------------

def info(port: int, section: str) -> dict[str, str]:
    return python_bench.info(f"valkey://127.0.0.1:{port}", section)


def command(port: int, *words: str) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"*{len(words)}\r\n".encode() + b"".join(f"${len(w)}\r\n{w}\r\n".encode() for w in words))
        s.recv(65536)


def server_cpu(port: int) -> float:
    return python_bench.server_cpu_s(f"valkey://127.0.0.1:{port}")


def clients(port: int) -> int:
    return int(info(port, "clients")["connected_clients"])


# --- the worker's process tree ------------------------------------------------------------------

def tree_rss_mb(root: int) -> float:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def wait_idle(limit: float = 1.5, patience: float = 60.0) -> float:
    """Waits (up to `patience` s) for the 1-minute load to fall below `limit`."""
    deadline = time.monotonic() + patience
    while os.getloadavg()[0] >= limit and time.monotonic() < deadline:
        time.sleep(2)
    return os.getloadavg()[0]


# --- one run ------------------------------------------------------------------------------------

@dataclass
class Run:
    enqueue_sequential: float
    enqueue_concurrent: float
    process: float
    first_task_ms: float
    steady: float  # tasks/s from the first task done to the last
    rss_mb: float
    connections: int
    cpu_us_per_task: float
    load: float


def env_for(system: System, url: str, done_file: str) -> dict[str, str]:
    return {
        **os.environ,
        "BENCH_SYSTEM": system.key,
        "BENCH_URL": url,
        "BENCH_DONE_FILE": done_file,
        "BENCH_CONCURRENCY": str(CONCURRENCY),
        "DJANGO_SETTINGS_MODULE": "benchmarks.peers.settings",
        "PYTHONPATH": str(ROOT),
    }


def enqueue(env: dict[str, str], task: str, n: int, shape: str) -> float:
    out = subprocess.run([sys.executable, "-m", "benchmarks.peers.enqueue", task, str(n), shape],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"enqueue failed:\n{out.stdout}\n{out.stderr}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["enqueued"] / result["seconds"]


def one_run(system: System, task: str, n: int, latency_ms: float) -> Run:
    from tests.conftest import ValkeyServer

    load = wait_idle()
    server = ValkeyServer(with_module=True)
    proxy = None
    workdir = Path(tempfile.mkdtemp(prefix="vtasks-compare-"))
    done_file = workdir / "done"
    done_file.touch()
    try:
        url = f"redis://127.0.0.1:{server.port}/0"
        if latency_ms:
            proxy = LatencyProxy("127.0.0.1", server.port, latency_ms / 1000).start()
            url = f"redis://127.0.0.1:{proxy.port}/0"
        env = env_for(system, url, str(done_file))
        seq = enqueue(env, system.tasks[task], n, "sequential")

        baseline_clients = clients(server.port)
        cpu_before = server_cpu(server.port)
        started = time.monotonic()
        log = open(workdir / "worker.log", "w")
        worker = subprocess.Popen(system.worker, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        peak_rss, peak_conns = 0.0, 0
        first = None
        deadline = started + 600
        while True:
            done = done_file.stat().st_size
            if done and first is None:
                first = time.monotonic()
            if done >= n:
                finished = time.monotonic()
                break
            if worker.poll() is not None:
                raise RuntimeError(f"{system.name} worker exited:\n{(workdir / 'worker.log').read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{system.name}: only {done} of {n} tasks done in 600 s")
            peak_rss = max(peak_rss, tree_rss_mb(worker.pid))
            peak_conns = max(peak_conns, clients(server.port) - baseline_clients)
            time.sleep(0.02)
        peak_rss = max(peak_rss, tree_rss_mb(worker.pid))
        cpu = server_cpu(server.port) - cpu_before
        # Measured; a graceful shutdown would only add waiting to the run.
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
        log.close()

        command(server.port, "FLUSHALL")
        conc = enqueue(env, system.tasks[task], n, "concurrent")
        first = first or finished
        # Completions are polled every 20 ms: a run that ends within the
        # poll that saw its first task has no rate after it.
        steady = (n - 1) / (finished - first) if finished - first >= 0.02 else float("nan")
        return Run(seq, conc, n / (finished - started), (first - started) * 1000, steady, peak_rss, peak_conns,
                   cpu * 1e6 / n, load)
    finally:
        if proxy is not None:
            proxy.stop()
        server.close()


def memory_per_task(system: System, n: int) -> float:
    from tests.conftest import ValkeyServer

    wait_idle()
    server = ValkeyServer(with_module=True)
    try:
        env = env_for(system, f"redis://127.0.0.1:{server.port}/0", os.devnull)
        before = int(info(server.port, "memory")["used_memory"])
        enqueue(env, system.tasks["no-op"], n, "concurrent")
        after = int(info(server.port, "memory")["used_memory"])
        return (after - before) / n
    finally:
        server.close()


# --- reporting ----------------------------------------------------------------------------------

@dataclass
class Scenario:
    system: System
    task: str
    latency_ms: float
    tasks: int
    runs: list[Run] = field(default_factory=list)

    def med(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.runs)

    def spread(self, attr: str) -> str:
        values = [v for v in (getattr(r, attr) for r in self.runs) if v == v]  # NaN: not measured
        if not values:
            return "–"
        return f"{statistics.median(values):,.0f} ({min(values):,.0f}–{max(values):,.0f})"


def table(scenarios: list[Scenario]) -> str:
    lines = ["| Scenario | Tasks | Enqueue ops/s (sequential) | Enqueue ops/s (100 producers) | Process ops/s "
             "| Peak RSS MB | Valkey conns | First task ms | Process ops/s after the first task "
             "| Server CPU µs/task |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in scenarios:
        lines.append(
            f"| {s.system.name}, {s.task} | {s.tasks:,} | {s.spread('enqueue_sequential')} "
            f"| {s.spread('enqueue_concurrent')} | {s.spread('process')} | {s.med('rss_mb'):.0f} "
            f"| {max(r.connections for r in s.runs)} | {s.med('first_task_ms'):.0f} | {s.spread('steady')} "
            f"| {s.med('cpu_us_per_task'):.1f} |"
        )
    return "\n".join(lines) + "\n"


def ratios(scenarios: list[Scenario]) -> str:
    """vtasks (module) against django-vtasks, the targets' reference."""
    by = {(s.system.key, s.task, s.latency_ms): s for s in scenarios}
    lines = ["| Latency | Task | Process | Enqueue sequential | Enqueue 100 producers | Peak RSS | Conns (vtasks) |",
             "|---|---|---|---|---|---|---|"]
    for (key, task, latency), ours in by.items():
        if key != "vtasks-module":
            continue
        peer = by.get(("django-vtasks", task, latency))
        if peer is None:
            continue
        lines.append(
            f"| {'2 ms RTT' if latency else 'localhost'} | {task} "
            f"| {ours.med('process') / peer.med('process'):.1f}× "
            f"| {ours.med('enqueue_sequential') / peer.med('enqueue_sequential'):.2f}× "
            f"| {ours.med('enqueue_concurrent') / peer.med('enqueue_concurrent'):.1f}× "
            f"| {ours.med('rss_mb') / peer.med('rss_mb'):.2f}× | {max(r.connections for r in ours.runs)} |"
        )
    return "\n".join(lines) + "\n"


def chart(scenarios: list[Scenario], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(s.latency_ms, s.task) for s in scenarios})
    names = list(dict.fromkeys(s.system.name for s in scenarios))
    fig, ax = plt.subplots(figsize=(11, 5.5))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        values = []
        for latency, task in groups:
            match = [s for s in scenarios if s.system.name == name and s.task == task and s.latency_ms == latency]
            values.append(match[0].med("process") if match else 0)
        xs = [g + (i - (len(names) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, values, width, label=name)
        ax.bar_label(bars, labels=[f"{v:,.0f}" if v else "" for v in values], fontsize=7, rotation=90, padding=2)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{task}\n{'2 ms RTT' if latency else 'localhost'}" for latency, task in groups])
    ax.set_yscale("log")
    ax.set_ylabel("tasks processed per second (log scale)")
    ax.set_title("One worker process, concurrency 200 (RQ: single-threaded)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def versions() -> str:
    def v(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    valkey = subprocess.run(["valkey-server", "--version"], capture_output=True, text=True).stdout.split()[2]
    return (f"vtasks {v('vtasks')}, django-vtasks {v('django-vtasks')}, Celery {v('celery')}, "
            f"django-tasks-rq {v('django-tasks-rq')} (RQ {v('rq')}), Django {v('django')}, "
            f"Python {platform.python_version()}, Valkey {valkey.removeprefix('v=')}")


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_gb = int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024
    return f"{os.cpu_count()} cores ({cpu}), {mem_gb:.0f} GiB, {platform.platform()}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--rq-tasks", type=int, default=500)
    parser.add_argument("--memory-tasks", type=int, default=100_000)
    parser.add_argument("--only", help="run only systems whose name contains this")
    parser.add_argument("--no-latency", action="store_true", help="skip the 2 ms RTT runs")
    parser.add_argument("--markdown", default=str(RESULTS / "compare.md"))
    parser.add_argument("--print-only", action="store_true", help="write no files (a quick check of the setup)")
    args = parser.parse_args()
    os.environ.setdefault("VTASKS_MODULE", str(ROOT / "target" / "release" / "libvtasks.so"))

    chosen = [s for s in systems() if not args.only or args.only.lower() in s.name.lower()]
    latencies = [0.0] if args.no_latency else [0.0, 1.0]
    scenarios: list[Scenario] = []
    for latency in latencies:
        if latency:
            from tests.conftest import ValkeyServer

            probe = ValkeyServer(with_module=True)
            proxy = LatencyProxy("127.0.0.1", probe.port, latency / 1000).start()
            print(f"latency proxy: {latency:g} ms each way, measured round trip {proxy.measured_rtt_ms():.2f} ms",
                  flush=True)
            proxy.stop()
            probe.close()
        for system in chosen:
            for task in system.tasks:
                n = args.rq_tasks if system.single_threaded else args.tasks
                scenario = Scenario(system, task, latency, n)
                for run in range(args.runs):
                    result = one_run(system, task, n, latency)
                    scenario.runs.append(result)
                    print(f"  {system.name}, {task}, {'2 ms' if latency else 'local'}, run {run + 1}: "
                          f"process {result.process:,.0f}/s, enqueue {result.enqueue_sequential:,.0f}/s sequential, "
                          f"{result.enqueue_concurrent:,.0f}/s concurrent, RSS {result.rss_mb:.0f} MB, "
                          f"{result.connections} conns, first task {result.first_task_ms:.0f} ms, "
                          f"{result.steady:,.0f}/s after it, {result.cpu_us_per_task:.1f} µs CPU/task, "
                          f"load {result.load:.2f}", flush=True)
                scenarios.append(scenario)

    memory = {}
    for system in chosen:
        # RQ enqueues about 400 tasks/s here: 20,000 give its per-task figure.
        n = min(args.memory_tasks, 20_000) if system.single_threaded else args.memory_tasks
        memory[system.name] = memory_per_task(system, n)
        print(f"  {system.name}: {memory[system.name]:.0f} bytes per queued task", flush=True)

    local = [s for s in scenarios if not s.latency_ms]
    remote = [s for s in scenarios if s.latency_ms]
    loads = [r.load for s in scenarios for r in s.runs]
    report = [
        f"Measured {dt.date.today().isoformat()} with `{' '.join(['python -m benchmarks.compare', *sys.argv[1:]])}`: "
        f"{args.runs} runs per scenario, medians with min–max; 1-minute load average before the runs "
        f"{min(loads):.2f}–{max(loads):.2f}.",
        "",
        f"Versions: {versions()}.",
        "",
        f"Machine: {machine()}.",
        "",
        "### Localhost",
        "",
        table(local),
    ]
    if remote:
        report += ["### 2 ms round trip (1 ms each way through `benchmarks/latency_proxy.py`)", "", table(remote)]
    report += [
        "### vtasks (module) as a multiple of django-vtasks",
        "",
        ratios(scenarios),
        "### Memory per queued task",
        "",
        f"`INFO memory` `used_memory` growth per task with {args.memory_tasks:,} no-op tasks waiting "
        "(RQ: at most 20,000):",
        "",
        "| System | Bytes per queued task |",
        "|---|---|",
        *[f"| {name} | {value:,.0f} |" for name, value in memory.items()],
        "",
        "![Process ops/s per system and scenario](results/compare.png)",
        "",
    ]
    text = "\n".join(report)
    print(text)
    if args.print_only:
        return
    Path(args.markdown).write_text(text)
    chart(scenarios, RESULTS / "compare.png")
    results_md = ROOT / "benchmarks" / "RESULTS.md"
    current = results_md.read_text()
    if MARK_BEGIN in current and MARK_END in current:
        head, rest = current.split(MARK_BEGIN, 1)
        _, tail = rest.split(MARK_END, 1)
        results_md.write_text(f"{head}{MARK_BEGIN}\n{text}\n{MARK_END}{tail}")


if __name__ == "__main__":
    main()
