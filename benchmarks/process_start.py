"""What a worker process costs to start, spawned (a fresh interpreter, as
``runworker --processes`` starts its children) or forked from a parent
that has set Django up; and what happens to a child forked after the
parent used vtasks (docs/DECISIONS.md, "Worker processes are spawned, not
forked").

    .venv/bin/python -m benchmarks.process_start [--runs 10]

Each start runs ``runworker --burst`` against an empty queue, so it ends
as soon as its worker has connected and found nothing to do; the time is
from the start (``Popen`` or ``fork``) to the child's exit, the CPU the
child's own (``RUSAGE_CHILDREN``). Prints a table; writes nothing.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time

from tests.conftest import ValkeyServer


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def spawned(url: str) -> tuple[float, float]:
    from vtasks.supervisor import python_command

    command, env = python_command("vtasks.django.supervisor:child_main")
    env["VTASKS_RUNWORKER_OPTIONS"] = json.dumps({"burst": True, "verbosity": 0})
    cpu, started = child_cpu(), time.perf_counter()
    subprocess.run(command, env={**os.environ, **env, "VTASKS_BENCH_URL": url}, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started, child_cpu() - cpu


def forked() -> tuple[float, float]:
    from django.core.management import call_command

    cpu, started = child_cpu(), time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            call_command("runworker", burst=True, skip_checks=True, verbosity=0, stdout=io.StringIO())
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return time.perf_counter() - started, child_cpu() - cpu


def fork_probe(url: str) -> None:
    """In a process of its own: fork after using vtasks (connected and sent
    a command), then ask with a client of the child's own, and again with the
    parent's; prints what became of each."""
    import vtasks

    def ask(client: vtasks.Client) -> None:
        try:
            client.stats_sync("default")
        except vtasks.NoSuchQueue:
            pass

    parent = vtasks.Client(url)
    ask(parent)
    pid = os.fork()
    if pid == 0:
        signal.alarm(5)
        try:
            ask(vtasks.Client(url))
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    print("child: " + ("answered" if code == 0 else "no answer within 5 s"), flush=True)
    signal.alarm(5)
    ask(parent)
    print("parent: answered", flush=True)


def forked_after_use(url: str) -> str:
    probe = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", "-m", "benchmarks.process_start", "--fork-probe", url],
        capture_output=True, text=True, timeout=60,
    )
    said = probe.stdout.split()
    parent = "answered" if "parent:" in said else "no answer within 5 s either"
    child = "answered" if "child: answered" in probe.stdout else "no answer within 5 s"
    return f"the child's own client: {child}; the parent's client afterwards: {parent}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--fork-probe", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fork_probe:
        fork_probe(args.fork_probe)
        return
    server = ValkeyServer()
    try:
        os.environ["VTASKS_BENCH_URL"] = server.url
        os.environ["DJANGO_SETTINGS_MODULE"] = "benchmarks.processes_settings"
        import django

        django.setup()
        spawn = [spawned(server.url) for _ in range(args.runs)]
        fork = [forked() for _ in range(args.runs)]
        after_use = forked_after_use(server.url)
    finally:
        server.close()
    print(f"1-minute load average {os.getloadavg()[0]:.1f}, {args.runs} starts each")
    print("| Start | Wall ms to a burst worker's exit (median, min–max) | Child CPU ms (median) |")
    print("|---|---|---|")
    for name, values in (("spawn (fresh interpreter)", spawn), ("fork after django.setup()", fork)):
        walls = [w * 1000 for w, _ in values]
        print(f"| {name} | {statistics.median(walls):.0f} ({min(walls):.0f}–{max(walls):.0f}) "
              f"| {statistics.median(c * 1000 for _, c in values):.0f} |")
    print(f"\nForked after the parent used vtasks: {after_use}")


if __name__ == "__main__":
    main()
