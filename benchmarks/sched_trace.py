"""Where a machine's idle core time goes while threads are ready to run,
from the kernel's scheduler events (``perf sched record``).

A core that sits idle while a thread is ready to run is time no program
can use. On a virtual machine it comes mostly from waking a core that has
gone idle: the guest halts an idle core, and the hypervisor has to run it
again before the thread woken onto it can run. This records the
scheduler's events for a short window and measures, per second of it:

- the cores' idle time;
- the part of it during which some thread was ready to run: woken onto
  that very core and waiting for it to come back from idle, or queued on
  the other, busy core;
- how long a thread woken onto an idle core waited for it (from
  ``sched_waking`` to the core switching to it).

Used by ``benchmarks.worker_processes`` (``perf`` from Debian's
``linux-perf``; skipped where it is missing or not allowed).
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import tempfile
from dataclasses import dataclass

EVENT = re.compile(r"^\s*.+?\s+\d+\s+\[(\d+)\]\s+([\d.]+):\s+sched:(\w+):\s*(.*)$")
FIELD = re.compile(r"(\w+)=(\S+)")


@dataclass
class SchedTrace:
    seconds: float
    idle_cores: float
    idle_while_ready_here: float  # a thread woken onto this idle core, waiting for it
    idle_while_ready_elsewhere: float  # a thread queued only on another core
    wakeups_onto_idle: float  # per second
    wake_latency_us: list[float]

    def summary(self) -> str:
        lat = sorted(self.wake_latency_us)
        return (
            f"{self.idle_cores:.2f} cores idle, of which {self.idle_while_ready_here:.2f} with a thread woken onto "
            f"the idle core waiting for it and {self.idle_while_ready_elsewhere:.2f} with a thread waiting on the "
            f"other core; {self.wakeups_onto_idle:,.0f} wake-ups onto an idle core per second, each waiting "
            f"{statistics.median(lat):.0f} µs (median), {statistics.mean(lat):.0f} µs (mean), "
            f"{lat[int(len(lat) * 0.9)]:.0f} µs (90th percentile) for it"
        )


def available() -> bool:
    if shutil.which("perf") is None:
        return False
    probe = subprocess.run(["perf", "sched", "record", "-o", "/dev/null", "--", "true"], capture_output=True)
    return probe.returncode == 0


def record(seconds: float) -> SchedTrace | None:
    """Records the scheduler's events for ``seconds`` and analyses them
    (None if ``perf`` fails or saw too little)."""
    with tempfile.TemporaryDirectory(prefix="vtasks-sched-") as directory:
        data = f"{directory}/sched.data"
        recorded = subprocess.run(["perf", "sched", "record", "-o", data, "--", "sleep", str(seconds)],
                                  capture_output=True)
        if recorded.returncode != 0:
            return None
        script = subprocess.run(["perf", "script", "-i", data, "-F", "comm,tid,cpu,time,event,trace"],
                                capture_output=True, text=True)
        if script.returncode != 0:
            return None
        return analyse(script.stdout.splitlines())


def analyse(lines: list[str]) -> SchedTrace | None:
    running: dict[int, int] = {}  # core -> thread running on it (0: idle)
    ready: dict[int, int] = {}  # thread ready to run -> the core it waits on
    woken_onto_idle: dict[int, float] = {}
    latencies: list[float] = []
    seconds = idle = here = elsewhere = 0.0
    last: float | None = None
    for line in lines:
        m = EVENT.match(line)
        if not m:
            continue
        core, at, event, rest = int(m[1]), float(m[2]), m[3], m[4]
        fields = dict(FIELD.findall(rest))
        # Time is counted once every core's running thread is known.
        if last is not None and len(running) >= 2:
            step = at - last
            idle_cores = [c for c, t in running.items() if t == 0]
            seconds += step
            idle += step * len(idle_cores)
            waited_on = set(ready.values())
            for c in idle_cores:
                if c in waited_on:
                    here += step
                elif waited_on:
                    elsewhere += step
        last = at
        if event == "sched_switch":
            previous, following = int(fields["prev_pid"]), int(fields["next_pid"])
            if previous != 0 and fields["prev_state"].startswith("R"):
                ready[previous] = core  # preempted: still ready
            else:
                ready.pop(previous, None)
            ready.pop(following, None)
            if following in woken_onto_idle:
                latencies.append((at - woken_onto_idle.pop(following)) * 1e6)
            running[core] = following
        elif event == "sched_waking":
            thread, target = int(fields["pid"]), int(fields["target_cpu"])
            if thread not in running.values():
                ready[thread] = target
                if running.get(target) == 0:
                    woken_onto_idle[thread] = at
        elif event == "sched_migrate_task":
            thread = int(fields["pid"])
            if thread in ready:
                ready[thread] = int(fields["dest_cpu"])
    if seconds <= 0 or not latencies:
        return None
    return SchedTrace(seconds, idle / seconds, here / seconds, elsewhere / seconds, len(latencies) / seconds,
                      latencies)
