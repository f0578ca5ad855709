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
import statistics
import sys
from dataclasses import dataclass, field

from benchmarks import compare, report

ROOT = report.ROOT
TASKS = {"no-op": "noop", "sleep 10 ms": "sleep"}
KINDS = ("sync", "async")


@dataclass(frozen=True)
class Default:
    system: compare.System
    concurrency: int  # the worker's default, for the ceiling of the sleeps


def systems() -> list[Default]:
    django = [sys.executable, "-m", "django", "runworker"]
    both = ("sync", "async")
    return [
        Default(compare.System("vtasks", "vtasks-auto", both, django), 20),
        Default(compare.System("django-vtasks", "django-vtasks", both, django), 20),
    ]


@dataclass
class Scenario:
    default: Default
    kind: str
    task: str
    runs: list[compare.Run] = field(default_factory=list)

    def med(self, attr: str) -> float:
        values = [v for v in (getattr(r, attr) for r in self.runs) if v == v]
        return statistics.median(values) if values else float("nan")

    def spread(self, attr: str) -> str:
        return report.median_range([getattr(r, attr) for r in self.runs])

    def label(self) -> str:
        return f"{self.default.system.name} (defaults), {self.kind}, {self.task}"


def table(scenarios: list[Scenario]) -> str:
    lines = [
        "| System | Concurrency (its default) | Kind | Task | Process/s (from launch) | First task ms (from launch) "
        "| Process/s after the first task | Ceiling /s | Peak RSS MB | Valkey conns |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in scenarios:
        concurrency = s.default.concurrency
        ceiling = f"{concurrency / 0.01:,.0f}" if s.task == "sleep 10 ms" else "–"
        lines.append(
            f"| {s.default.system.name} | {concurrency} | {s.kind} | {s.task} | {s.spread('process')} "
            f"| {s.med('first_task_ms'):.0f} | {s.spread('steady')} | {ceiling} | {s.med('rss_mb'):.0f} "
            f"| {max(r.connections for r in s.runs)} |"
        )
    return "\n".join(lines) + "\n"


def ratios(scenarios: list[Scenario]) -> str:
    """vtasks, each kind, against django-vtasks' fastest kind of the same task."""
    by = {(s.default.system.key, s.kind, s.task): s for s in scenarios}
    lines = [
        "| vtasks task | vtasks /s | django-vtasks /s (its fastest kind) | ratio, from launch "
        "| ratio, after the first task |",
        "|---|---|---|---|---|",
    ]
    for task in TASKS:
        peers = [by[k] for k in by if k[0] == "django-vtasks" and k[2] == task]
        if not peers:
            continue
        peer = max(peers, key=lambda s: s.med("process"))
        for kind in KINDS:
            ours = by.get(("vtasks-auto", kind, task))
            if ours is None:
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

    scenarios = [Scenario(d, kind, task) for d in systems() for kind in d.system.kinds for task in TASKS]
    for run in range(args.runs):
        for s in scenarios:
            task_name = f"{TASKS[s.task]}_{s.kind}"
            r = report.retrying(
                s.label(), compare.process_run, s.default.system, task_name, args.tasks, 0.0, "default", ""
            )
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
        ratios(scenarios),
    ]
    body = "\n".join(text) + "\n"
    print(body)
    if not args.print_only:
        report.write_section("defaults", body)


if __name__ == "__main__":
    main()
