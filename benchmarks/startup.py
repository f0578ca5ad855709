"""How long `manage.py runworker` takes from its launch to its first task
done, and where that time goes.

    .venv/bin/python -m benchmarks.startup [--runs 20] [--print-only]

The settings a new project gets: `benchmarks/peers/manage.py runworker` with
no options (concurrency 20, Django's default logging, the module engine on a
local valkey-server with the release module), one task waiting in the queue
(a sync or an async no-op). The clock starts just before the driver starts
the process and stops at the task's completion mark (the task appends its
``time.monotonic()`` to a file). Runs alternate between the kinds, each
once the machine's other work uses less than 0.3 of a core (or after a
minute).

Where the time goes: the same start-up through `benchmarks/startup_trace.py`,
which stamps the points it passes (the interpreter running the script,
`django.core.management` imported, `django.setup()`, the system checks and
the connection they open, `Worker.run()`), while a MONITOR connection to
the server stamps the worker's first fetch as the server runs it. And
once with ``python -X importtime``: the imports that take longest.

Writes the `startup` section of `benchmarks/RESULTS.md`.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import report
from tests.conftest import ValkeyServer

ROOT = report.ROOT
GOAL_MS = 150
MANAGE = str(ROOT / "benchmarks" / "peers" / "manage.py")


def env_for(server: ValkeyServer, done: str, trace: str = os.devnull) -> dict[str, str]:
    return {
        **os.environ,
        "BENCH_SYSTEM": "vtasks-module",
        "BENCH_URL": server.url,
        "BENCH_DONE_FILE": done,
        "BENCH_STARTUP_TRACE": trace,
        "DJANGO_SETTINGS_MODULE": "benchmarks.peers.settings",
        "PYTHONPATH": str(ROOT),
    }


def enqueue_one(server: ValkeyServer, kind: str) -> None:
    subprocess.run([sys.executable, "-m", "benchmarks.peers.enqueue", f"noop_{kind}", "1", "sync"],
                   env=env_for(server, os.devnull), cwd=ROOT, check=True, capture_output=True)


class Monitor:
    """A MONITOR connection: every command the server runs, with the
    server's time, mapped onto this machine's monotonic clock."""

    LINE = re.compile(r'^\+(\d+\.\d+) \[\d+ ([^\]]+)\] "([^"]+)"(.*)$')

    def __init__(self, port: int) -> None:
        self.offset = time.time() - time.monotonic()
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(b"MONITOR\r\n")
        self.lines: list[tuple[float, str, str, str]] = []
        reply = b""
        while not reply.endswith(b"\r\n"):
            reply += self.sock.recv(64)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            *complete, buf = buf.split(b"\r\n")
            for raw in complete:
                m = self.LINE.match(raw.decode(errors="replace"))
                if m:
                    self.lines.append((float(m[1]) - self.offset, m[2], m[3].upper(), m[4]))

    def first_fetch(self, after: float) -> float | None:
        for t, _, name, rest in self.lines:
            if t >= after and ("FETCH" in name or (name in ("FCALL", "FCALL_RO") and "fetch" in rest.lower())):
                return t
        return None

    def close(self) -> None:
        self.sock.close()
        self.thread.join(2)


@dataclass
class Start:
    first_ms: float
    points: dict[str, float]  # name -> ms from launch
    load: float


def start_once(server: ValkeyServer, kind: str, cmd: list[str], trace: bool) -> Start:
    report.command(server.port, "FLUSHALL")
    enqueue_one(server, kind)
    load = report.wait_idle()
    with report.done_file() as done, tempfile.NamedTemporaryFile("r", prefix="vtasks-trace-") as trace_file:
        monitor = Monitor(server.port) if trace else None
        env = env_for(server, str(done), trace_file.name if trace else os.devnull)
        launched = time.monotonic()
        process = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   start_new_session=True)
        deadline = launched + 60
        try:
            while report.marks_done(done) < 1:
                if process.poll() is not None:
                    raise RuntimeError(f"the worker exited: {process.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
                if time.monotonic() > deadline:
                    raise RuntimeError("no task done in 60 s")
                time.sleep(0.01)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            if monitor is not None:
                monitor.close()
        first = report.marks(done)[0]
        points: dict[str, float] = {}
        if trace:
            for line in Path(trace_file.name).read_text().splitlines():
                name, t = line.split("\t")
                points.setdefault(name, (float(t) - launched) * 1000)
            assert monitor is not None
            fetch = monitor.first_fetch(launched)
            if fetch is not None:
                points["first fetch run by the server"] = (fetch - launched) * 1000
        return Start((first - launched) * 1000, points, load)


@dataclass
class Import:
    name: str
    ms: float  # cumulative: nested imports included
    children: list[Import]


def import_tree(server: ValkeyServer) -> list[Import]:
    """The imports of one start-up to its first task, as
    ``python -X importtime`` reports them: top-level imports with what
    they imported, nested."""
    report.command(server.port, "FLUSHALL")
    enqueue_one(server, "sync")
    with report.done_file() as done:
        process = subprocess.Popen([sys.executable, "-X", "importtime", MANAGE, "runworker"],
                                   env=env_for(server, str(done)), cwd=ROOT, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True, start_new_session=True)
        deadline = time.monotonic() + 60
        while report.marks_done(done) < 1 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
    # "import time: self [us] | cumulative | imported package", two spaces
    # of indentation per level, each import listed after what it imported.
    pending: dict[int, list[Import]] = {}
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| ( *)(\S.*)$", line)
        if m:
            depth = len(m[2]) // 2
            node = Import(m[3], int(m[1]) / 1000, pending.pop(depth + 1, []))
            pending.setdefault(depth, []).append(node)
    return pending.get(0, [])


def import_rows(nodes: list[Import], least_ms: float, depth: int = 0, max_depth: int = 3) -> list[str]:
    rows = []
    for node in sorted(nodes, key=lambda n: -n.ms):
        if node.ms < least_ms:
            break
        rows.append(f"| {'&emsp;' * 2 * depth}`{node.name}` | {node.ms:.1f} |")
        if depth + 1 < max_depth:
            rows += import_rows(node.children, least_ms, depth + 1, max_depth)
    return rows


def interpreter_ms(runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append((time.monotonic() - started) * 1000)
    return times


def main() -> None:
    report.compile_sources()
    report.stop_on_sigterm()
    os.environ.setdefault("VTASKS_MODULE", str(ROOT / "target" / "release" / "libvtasks.so"))
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--print-only", action="store_true", help="write nothing")
    args = parser.parse_args()
    server = ValkeyServer(with_module=True)
    try:
        clean: dict[str, list[Start]] = {"sync": [], "async": []}
        traced: list[Start] = []
        for run in range(args.runs):
            for kind in clean:
                s = start_once(server, kind, [sys.executable, MANAGE, "runworker"], trace=False)
                clean[kind].append(s)
                print(f"  {kind}, run {run + 1}: first task done {s.first_ms:.0f} ms after launch, "
                      f"load {s.load:.2f}", flush=True)
            t = start_once(server, "sync", [sys.executable, "-m", "benchmarks.startup_trace", "runworker"],
                           trace=True)
            traced.append(t)
            print(f"  traced, run {run + 1}: {t.first_ms:.0f} ms, {t.points}", flush=True)
        imports = import_tree(server)
        python_ms = interpreter_ms(args.runs)
    finally:
        server.close()

    loads = [s.load for runs in clean.values() for s in runs] + [t.load for t in traced]
    lines = [
        report.header("startup", loads, f"vtasks {report.version('vtasks')}, Django {report.version('django')}"),
        f"{args.runs} runs of each; medians with min–max, in ms from the process launch (the driver's clock just "
        "before it starts the process) to the task's completion. `benchmarks/peers/manage.py runworker` with no "
        "options: concurrency 20, Django's default logging, the module engine on localhost; one task waiting.",
        "",
        "| Task waiting | First task done, ms from launch | Goal (issue 15) | |",
        "|---|---|---|---|",
    ]
    for kind, runs in clean.items():
        ms = [s.first_ms for s in runs]
        lines.append(f"| {kind} no-op | {report.median_range(ms)} | ≤ {GOAL_MS} ms "
                     f"| {'met' if statistics.median(ms) <= GOAL_MS else '**not met**'} |")
    points = list(dict.fromkeys(name for t in traced for name in t.points))
    order = sorted(points, key=lambda name: statistics.median(t.points[name] for t in traced if name in t.points))
    lines += [
        "",
        f"Where it goes: the same start-up (sync no-op) through `benchmarks/startup_trace.py`, {args.runs} runs, "
        "with a MONITOR connection on the server; each point's median ms from launch, and the step from the "
        f"point before (a bare `python -c pass` takes {statistics.median(python_ms):.0f} ms here):",
        "",
        "| Point | ms from launch | step ms |",
        "|---|---|---|",
        "| launch | 0 | |",
    ]
    previous = 0.0
    for name in [*order, "first task done"]:
        values = [t.first_ms for t in traced] if name == "first task done" else \
            [t.points[name] for t in traced if name in t.points]
        at = statistics.median(values)
        lines.append(f"| {name} | {at:.0f} | {at - previous:.0f} |")
        previous = at
    lines += [
        "",
        "The imports of one start-up that took 5 ms or more (`python -X importtime`, which slows imports "
        "itself; cumulative ms, what they imported included), three levels deep:",
        "",
        "| Import | ms |",
        "|---|---|",
        *import_rows(imports, 5.0),
    ]
    body = "\n".join(lines) + "\n"
    print(body)
    if not args.print_only:
        report.write_section("startup", body)


if __name__ == "__main__":
    main()
