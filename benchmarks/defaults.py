"""vtasks and django-vtasks as a new project gets them: each worker started
with no options, each backend configured with nothing but its URL.

    .bench-venv/bin/python -m benchmarks.defaults [--runs 3] [--tasks 5000]
        [--print-only]

`benchmarks/compare.py` runs every system at concurrency 200, the setting of
django-vtasks' published benchmark; a project that has tuned nothing runs
`manage.py runworker` as it comes: vtasks at its default concurrency of 20
with the engine it finds (``ENGINE`` left at ``auto``: the module, loaded
here), django-vtasks at its ``VTASKS_CONCURRENCY`` default, also 20. The method is compare.py's
(its ``process_run``): for each system, kind of task (sync ``def``, ``async
def``) and task (no-op, 10 ms sleep), a fresh valkey-server from
`module/valkey.conf`, N tasks enqueued, one worker process timed from its
launch to the last task's completion, Django's default logging, localhost.
Rates after the first task are the steady state; for the sleeps, the
ceiling a worker's concurrency sets (10 ms tasks side by side) is given
beside them.

Runs go round-robin, each once the machine's other work uses less than 0.3
of a core (or after a minute). Writes the `defaults` section of
`benchmarks/RESULTS.md`.
"""

from __future__ import annotations

import argparse
import os
import sys

from vtasks.worker import DEFAULT_CONCURRENCY

from benchmarks import compare, report

ROOT = report.ROOT
VTASKS = "vtasks-auto"
# Each worker's default concurrency, for the ceiling of the sleeps.
CONCURRENCY = {VTASKS: DEFAULT_CONCURRENCY, "django-vtasks": 20}


def systems() -> list[compare.System]:
    django = [sys.executable, "-m", "django", "runworker"]
    both = ("sync", "async")
    return [
        compare.System("vtasks", VTASKS, both, django),
        compare.System("django-vtasks", "django-vtasks", both, django),
    ]


def table(scenarios: list[compare.Scenario]) -> str:
    lines = [
        "| System | Concurrency (its default) | Kind | Task | Process/s (from launch) | First task ms (from launch) "
        "| Process/s after the first task | Ceiling /s | Peak RSS MB | Valkey conns |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in scenarios:
        concurrency = CONCURRENCY[s.system.key]
        ceiling = f"{concurrency / 0.01:,.0f}" if s.task == "sleep 10 ms" else "–"
        lines.append(
            f"| {s.system.name} | {concurrency} | {s.kind} | {s.task} | {s.spread('process')} "
            f"| {s.med('first_task_ms'):.0f} | {s.spread('steady')} | {ceiling} | {s.med('rss_mb'):.0f} "
            f"| {max(r.connections for r in s.runs)} |"
        )
    return "\n".join(lines) + "\n"


def ratios(res: compare.Results) -> str:
    """vtasks, each kind, against django-vtasks' fastest kind of the same task."""
    lines = [
        "| vtasks task | vtasks /s | django-vtasks /s (its fastest kind) | ratio, from launch "
        "| ratio, after the first task |",
        "|---|---|---|---|---|",
    ]
    for task in compare.TASKS:
        peer = res.fastest("django-vtasks", task)
        for kind in ("sync", "async"):
            ours = res.get(VTASKS, kind, task)
            if ours is None or peer is None:
                continue
            lines.append(
                f"| {kind} {task} | {compare.fmt(ours.med('process'))} | {compare.fmt(peer.med('process'))} "
                f"({peer.kind}) | {compare.ratio(ours.med('process'), peer.med('process'))} "
                f"| {compare.ratio(ours.med('steady'), peer.med('steady'))} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    report.compile_sources()
    report.stop_on_sigterm()
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--print-only", action="store_true", help="write no files")
    args = parser.parse_args()
    os.environ.setdefault("VTASKS_MODULE", str(ROOT / "target" / "release" / "libvtasks.so"))

    scenarios = [
        compare.Scenario(system, kind, task, 0.0, "default", args.tasks)
        for system in systems()
        for kind in system.kinds
        for task in compare.TASKS
    ]
    for run in range(args.runs):
        for s in scenarios:
            # "": each system's default concurrency.
            r = report.retrying(s.label(), compare.process_run, s.system, s.task_name, s.tasks, 0.0, "default", "")
            s.runs.append(r)
            print(
                f"  {s.label()}, run {run + 1}: {r.process:,.0f}/s, first task {r.first_task_ms:.0f} ms, "
                f"{r.steady:,.0f}/s after it, RSS {r.rss_mb:.0f} MB, {r.connections} conns, load {r.load:.2f}",
                flush=True,
            )

    loads = [r.load for s in scenarios for r in s.runs]
    text = [
        report.header("defaults", loads, f"vtasks {report.version('vtasks')}, django-vtasks "
                      f"{report.version('django-vtasks')}, Django {report.version('django')}"),
        f"{args.runs} runs per scenario, round-robin; medians with min–max. {args.tasks:,} tasks per run, "
        "localhost, one `manage.py runworker` with no options; the backends configured with their URL and "
        "queue only (vtasks' `ENGINE` is `auto`, and finds the module); Django's default logging; results kept "
        "as each system keeps them by default.",
        "",
        table(scenarios),
        "vtasks, each kind, against django-vtasks' fastest kind of the same task, both at their defaults:",
        "",
        ratios(compare.Results(scenarios)),
    ]
    body = "\n".join(text) + "\n"
    print(body)
    if not args.print_only:
        report.write_section("defaults", body)


if __name__ == "__main__":
    main()
