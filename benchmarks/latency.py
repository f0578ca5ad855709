"""How soon a task's result is final after it was enqueued (or fell due),
with the settings a new Django project gets: the vtasks backend with only
its URL set, one `manage.py runworker` with no options (concurrency 20,
fetches that wait up to 5 s on empty queues).

    .venv/bin/python -m benchmarks.latency [--waves 100] [--seed 1]

For each engine (module, scripts) and each kind of task (a sync task that
sleeps 10 ms, an async one that awaits 10 ms) it starts a server and the
worker, then enqueues waves of 1 to 20 tasks at once, half of them ready
at once and half with one shared ``run_after`` 0.3 s ahead (they fall due
together into the worker), with pauses of up to 0.4 s between waves, so
the worker is sometimes idle in a blocking fetch and sometimes busy. A
task's latency is the server's ``finished_at`` (its result is final)
minus the later of its enqueue and its ``run_after``; it includes the
task's own 10 ms. Writes the table between the ``latency`` markers of
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import time

import django
from django.conf import settings

from benchmarks import report
from tests.conftest import ROOT, ValkeyServer, module_path

RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
MARK_BEGIN = "<!-- latency:begin -->"
MARK_END = "<!-- latency:end -->"
HEADING = "## Enqueue to result: how soon a result is final"


def tasks_setting(url: str) -> dict:
    return {"default": {"BACKEND": "vtasks.django.ValkeyTaskBackend", "OPTIONS": {"URL": url}}}


def configure(url: str) -> None:
    settings.configure(
        SECRET_KEY="latency-benchmark",
        INSTALLED_APPS=["vtasks.django"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        USE_TZ=True,
        TASKS=tasks_setting(url),
    )
    django.setup()


def run_worker(url: str) -> None:
    """The worker process: `manage.py runworker` with no options."""
    from django.core.management import call_command

    configure(url)
    call_command("runworker")


def start_worker(server: ValkeyServer) -> subprocess.Popen[str]:
    log = server.dir / "worker.log"
    with open(log, "w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.latency", "--worker", server.url],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True,
        )
    # Ready once its fetch waits on the empty queue.
    deadline = time.monotonic() + 60
    while not any("b" in c["flags"] for c in server.clients()):
        if worker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the worker did not start:\n{log.read_text()}")
        time.sleep(0.02)
    return worker


async def waves(task, count: int, rng: random.Random) -> list[tuple[str, float]]:
    """Enqueues the waves; (result id, when it became due) per task."""
    sent: list[tuple[str, float]] = []
    for _ in range(count):
        size = rng.randint(1, 20)
        enqueued = time.time()
        if rng.random() < 0.5:
            run_after = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.3)
            due = run_after.timestamp()
            pending = [task.using(run_after=run_after).aenqueue() for _ in range(size)]
        else:
            due = enqueued
            pending = [task.aenqueue() for _ in range(size)]
        results = await asyncio.gather(*pending)
        sent.extend((r.id, due) for r in results)
        await asyncio.sleep(rng.uniform(0, 0.4))
    return sent


def measure(engine: str, kind: str, count: int, seed: int) -> tuple[list[float], float]:
    """Latencies (ms) of one scenario, and the load average after it."""
    from django.tasks import task_backends
    from django.test import override_settings

    from benchmarks import latency_tasks

    task = latency_tasks.sync_10ms if kind == "sync" else latency_tasks.async_10ms
    server = ValkeyServer(with_module=engine == "module")
    try:
        with override_settings(TASKS=tasks_setting(server.url)):
            backend = task_backends["default"]
            worker = start_worker(server)
            try:
                sent = asyncio.run(waves(task, count, random.Random(seed)))
                deadline = time.monotonic() + 120
                while backend.client.stats_sync("default")["acked"] < len(sent):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{engine}/{kind}: not every task finished")
                    time.sleep(0.05)
            finally:
                worker.send_signal(signal.SIGTERM)
                worker.wait(timeout=60)
            latencies = []
            for result_id, due in sent:
                finished = task.get_result(result_id).finished_at
                assert finished is not None, result_id
                latencies.append((finished.timestamp() - due) * 1000)
    finally:
        server.close()
    return latencies, os.getloadavg()[0]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


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
    parser.add_argument("--waves", type=int, default=100, help="waves per engine and kind of task")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--worker", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker)
        return
    configure("valkey://127.0.0.1:1")  # each scenario points TASKS at its own server
    load_before = os.getloadavg()[0]
    loads = [load_before]
    rows = []
    for engine in ("module", "scripts"):
        for kind in ("sync", "async"):
            latencies, load = measure(engine, kind, args.waves, args.seed)
            loads.append(load)
            rows.append(
                f"| {engine} | {kind}, 10 ms | {len(latencies):,} | {statistics.median(latencies):.0f} "
                f"| {percentile(latencies, 0.99):.0f} | {max(latencies):.0f} |"
            )
            print(rows[-1], flush=True)
    command = "python -m benchmarks.latency" + "".join(
        f" {flag} {value}" for flag, value in (("--waves", args.waves), ("--seed", args.seed))
    )
    build = "release" if "release" in str(module_path()) else "debug"
    text = (
        f"Measured {report.today()} with `{command}` ({build} builds): "
        f"1-minute load average {min(loads):.1f}–{max(loads):.1f} during the runs; "
        f"{os.cpu_count()} cores, {platform.platform()}.\n\n"
        "| Engine | Task | Tasks | Median ms | p99 ms | Max ms |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    print(text)
    if not args.no_write:
        write_section(text)


if __name__ == "__main__":
    main()
