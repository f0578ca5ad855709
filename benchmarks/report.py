"""What every benchmark script writes alongside its figures, and how it
writes them: each script owns one section of ``benchmarks/RESULTS.md``
between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` and rewrites only
that, headed by the date, the command, the versions, the machine and the
load it ran at."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def valkey_version() -> str:
    out = subprocess.run(["valkey-server", "--version"], capture_output=True, text=True).stdout.split()
    return out[2].removeprefix("v=") if len(out) > 2 else "unknown"


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    # What the benchmarks write themselves does not make the tree dirty: a
    # run of several would otherwise call every section after the first
    # one uncommitted.
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                            ":(exclude)benchmarks/RESULTS.md", ":(exclude)benchmarks/results"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return out.stdout.strip() + (" with uncommitted changes" if dirty else "")


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_gib = int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024
    return f"{os.cpu_count()} cores ({cpu}), {mem_gib:.0f} GiB, {platform.platform()}"


def busy_cores(seconds: float = 1.0) -> float:
    """How many cores' worth of CPU the machine used over the next
    ``seconds`` (from ``/proc/stat``): between runs, the work of others."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields[:8]), idle

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    if total1 == total0:
        return 0.0
    return (1 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)


def compile_sources() -> None:
    """Compiles vtasks' Python sources and the benchmarks' own modules to
    bytecode, as installing a wheel with pip does. The checkout's package is
    installed in development mode, which never compiles it, and with
    ``PYTHONDONTWRITEBYTECODE`` set (as on this machine) each start-up would
    compile every vtasks module again: some 20 ms that no installed vtasks
    pays, and that the peers, installed by pip, do not pay either."""
    import compileall

    for directory in (ROOT / "python" / "python", ROOT / "benchmarks"):
        compileall.compile_dir(directory, quiet=2)


def wait_idle(limit: float = 0.3, patience: float | None = None) -> float:
    """Waits (up to ``patience`` s: ``BENCH_PATIENCE``, by default 60)
    until the machine's other work uses less than ``limit`` cores over a
    second (the 1-minute load average would count this benchmark's own last
    run); returns the 1-minute load average then, which the results
    report."""
    if patience is None:
        patience = float(os.environ.get("BENCH_PATIENCE", "60"))
    deadline = time.monotonic() + patience
    while busy_cores() >= limit and time.monotonic() < deadline:
        pass
    return os.getloadavg()[0]


def today() -> str:
    """The date in UTC: a script that has run ``django.setup()`` has the
    process's local time set to Django's ``TIME_ZONE`` (America/Chicago by
    default), whose date is a day behind UTC for six hours of each day."""
    return dt.datetime.now(dt.UTC).date().isoformat()


def header(script: str, loads: list[float], versions: str) -> str:
    """The lines that head a section: when, what ran, on what."""
    command = " ".join([f"python -m benchmarks.{script}", *sys.argv[1:]])
    return (
        f"Measured {today()} with `{command}` (commit {git_commit()}); "
        f"1-minute load average at the start of each run {min(loads):.2f}–{max(loads):.2f} "
        f"(median {statistics.median(loads):.2f}).\n\n"
        f"Versions: {versions}, Python {platform.python_version()}, Valkey {valkey_version()}.\n\n"
        f"Machine: {machine()}.\n"
    )


def write_section(name: str, text: str, path: Path = RESULTS_MD) -> None:
    """Replaces what stands between the section's markers; the markers
    must be there (a section is placed by hand once, then only rewritten)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    current = path.read_text()
    if current.count(begin) != 1 or current.count(end) != 1:
        raise SystemExit(f"{path}: expected one {begin} and one {end}")
    head, rest = current.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{text.strip()}\n{end}{tail}")


def median_range(values: list[float], digits: int = 0) -> str:
    """``median (min–max)`` of the values that were measured (NaN: not)."""
    values = [v for v in values if v == v]
    if not values:
        return "–"
    return f"{statistics.median(values):,.{digits}f} ({min(values):,.{digits}f}–{max(values):,.{digits}f})"


# --- completion marks ---------------------------------------------------------------------------
# The benchmark tasks of every system append their completion time
# (CLOCK_MONOTONIC, the same clock in every process of the machine) to one
# file as 8 bytes: one system call per task for every system, no network
# round trip, and exact first and last completion times for the driver.

MARK = struct.Struct("<d")


def marks(path: Path) -> list[float]:
    """The completion times recorded in ``path``, in the driver's
    ``time.monotonic()`` clock."""
    data = path.read_bytes()
    return [t for (t,) in MARK.iter_unpack(data[: len(data) - len(data) % MARK.size])]


def marks_done(path: Path) -> int:
    return path.stat().st_size // MARK.size


# --- the server and the worker's process --------------------------------------------------------

def info(port: int, section: str) -> dict[str, str]:
    """``INFO <section>`` of the server on ``127.0.0.1:port``, over a plain socket."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"INFO {section}\r\n".encode())
        data = b""
        while b"\r\n" not in data:
            data += s.recv(65536)
        header, _, body = data.partition(b"\r\n")
        size = int(header[1:])
        while len(body) < size:
            body += s.recv(65536)
    return dict(line.split(":", 1) for line in body[:size].decode().splitlines() if ":" in line)


def command(port: int, *words: str) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"*{len(words)}\r\n".encode() + b"".join(f"${len(w)}\r\n{w}\r\n".encode() for w in words))
        s.recv(65536)


def server_cpu_s(port: int) -> float:
    cpu = info(port, "cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def clients(port: int) -> int:
    return int(info(port, "clients")["connected_clients"])


def tree_peak_rss_mb(root: int) -> float:
    """The sum of the peak RSS (``VmHWM``) of ``root`` and its descendants."""
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
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


@dataclass
class Watched:
    """A worker process's run, as the driver saw it."""

    launched: float  # time.monotonic() just before the process started
    first: float  # the first task's completion mark
    last: float  # the last task's completion mark
    peak_rss_mb: float  # largest sum of the process tree's VmHWM
    connections: int  # most Valkey connections above the baseline at once
    server_cpu_s: float  # INFO cpu delta from the launch to the last task
    output: str  # what the process wrote (stdout and stderr)

    def rate_from(self, start: float, n: int) -> float:
        return n / (self.last - start)

    def steady(self, n: int) -> float:
        """Tasks/s from the first completion to the last (the first excluded)."""
        return (n - 1) / (self.last - self.first) if self.last > self.first else float("nan")


def watch(cmd: list[str], env: dict[str, str], done_file: Path, n: int, port: int, *, burst: bool,
          timeout: float = 900) -> Watched:
    """Starts ``cmd`` and waits for ``n`` completion marks in ``done_file``
    (then for the process to exit when ``burst``, otherwise it is killed),
    sampling its peak RSS and Valkey connections every 0.1 s."""
    out = tempfile.TemporaryFile("w+")
    baseline = clients(port)
    cpu_before = server_cpu_s(port)
    launched = time.monotonic()
    process = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    peak_rss, peak_conns, polls = 0.0, 0, 0
    deadline = launched + timeout

    def output() -> str:
        out.seek(0)
        return out.read()

    try:
        while marks_done(done_file) < n:
            if process.poll() is not None:
                raise RuntimeError(f"{cmd[:4]} exited after {marks_done(done_file)} of {n} tasks:\n{output()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[:4]}: only {marks_done(done_file)} of {n} tasks done in {timeout:.0f} s")
            if polls % 4 == 0:
                peak_rss = max(peak_rss, tree_peak_rss_mb(process.pid))
                peak_conns = max(peak_conns, clients(port) - baseline)
            polls += 1
            time.sleep(0.025)
        peak_rss = max(peak_rss, tree_peak_rss_mb(process.pid))
        cpu = server_cpu_s(port) - cpu_before
        if burst:
            process.wait(timeout)
        else:
            # Measured; a graceful shutdown would only add waiting to the run.
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    times = marks(done_file)[:n]
    text = output()
    out.close()
    return Watched(launched, min(times), max(times), peak_rss, peak_conns, cpu, text)


@contextlib.contextmanager
def done_file() -> Iterator[Path]:
    """An empty file for completion marks, removed afterwards."""
    fd, name = tempfile.mkstemp(prefix="vtasks-bench-done-")
    os.close(fd)
    try:
        yield Path(name)
    finally:
        os.unlink(name)


def retrying[T](what: str, run: Callable[..., T], *args: object, attempts: int = 3) -> T:
    """``run(*args)``, again after a failure (a full disk or a crashed server on
    this shared machine should cost a run, not the whole benchmark); the
    last failure is raised."""
    for attempt in range(1, attempts + 1):
        try:
            return run(*args)
        except Exception as exc:
            if attempt == attempts:
                raise
            print(f"  {what}: attempt {attempt} failed, running it again: {str(exc)[:500]}", flush=True)
    raise AssertionError("unreachable")


def stop_on_sigterm() -> None:
    """SIGTERM (and SIGINT, which a shell ignores in background jobs) end
    the benchmark through SystemExit, so the servers, proxies and workers
    it started are stopped by the ``finally`` blocks that own them."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
