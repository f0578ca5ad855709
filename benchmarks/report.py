"""What every benchmark script writes alongside its figures, and how it
writes them: each script owns one section of ``benchmarks/RESULTS.md``
between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` and rewrites only
that, headed by the date, the command, the versions, the machine and the
load it ran at."""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import struct
import subprocess
import sys
import time
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
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return out.stdout.strip() + (" with uncommitted changes" if dirty else "")


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_gib = int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024
    return f"{os.cpu_count()} cores ({cpu}), {mem_gib:.0f} GiB, {platform.platform()}"


def wait_idle(limit: float = 1.5, patience: float = 60.0) -> float:
    """Waits (up to ``patience`` s) for the 1-minute load average to fall
    below ``limit``; returns the load it starts at."""
    deadline = time.monotonic() + patience
    while os.getloadavg()[0] >= limit and time.monotonic() < deadline:
        time.sleep(2)
    return os.getloadavg()[0]


def header(script: str, loads: list[float], versions: str) -> str:
    """The lines that head a section: when, what ran, on what."""
    command = " ".join([f"python -m benchmarks.{script}", *sys.argv[1:]])
    return (
        f"Measured {dt.date.today().isoformat()} with `{command}` (commit {git_commit()}); "
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
