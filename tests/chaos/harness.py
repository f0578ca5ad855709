"""Pieces the fault tests share: a bare RESP client for server admin,
worker processes that can be killed and replaced, and the ledger of task
runs the tasks write (``tasks.record``)."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import vtasks

from tests.conftest import ROOT

# `make chaos` runs the full suite, `make chaos-ci` (part of `make test`)
# the same tests at a smaller scale.
FULL = os.environ.get("VTASKS_CHAOS") == "full"


def scale(full: int, ci: int) -> int:
    return full if FULL else ci


def command(port: int, *args: str | int | bytes, timeout: float = 10.0) -> object:
    """One command to the server on ``port``; the decoded reply (errors as
    ``RuntimeError``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        s.sendall(b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
        return _read_reply(s.makefile("rb"))


def command_pipeline(port: int, commands: list[tuple[str | int | bytes, ...]]) -> list[object]:
    """Many commands in one pipeline; their replies, in order."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        out = bytearray()
        for args in commands:
            parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
            out += b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        s.sendall(out)
        f = s.makefile("rb")
        return [_read_reply(f) for _ in commands]


def _read_reply(f) -> object:  # type: ignore[no-untyped-def]
    line = f.readline()
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2].decode(errors="replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read_reply(f) for _ in range(n)]
    raise RuntimeError(f"unexpected reply {line!r}")


def info(port: int, section: str) -> dict[str, str]:
    text = command(port, "INFO", section)
    assert isinstance(text, str)
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))


def wait_until(condition, timeout: float, what: str, interval: float = 0.05) -> float:  # type: ignore[no-untyped-def]
    """Polls ``condition`` until true; the time it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - started


class WorkerProcess:
    """``python -m tests.chaos.worker`` in a process of its own. Every one
    still running when its test ends is killed then (``kill_leftovers``),
    whether the test passed or not."""

    running: set[WorkerProcess] = set()

    def __init__(self, url: str, events: Path, **options: float | int | str | None) -> None:
        argv = [sys.executable, "-m", "tests.chaos.worker", url]
        for key, value in options.items():
            if value is not None:
                argv += [f"--{key.replace('_', '-')}", str(value)]
        env = {**os.environ, "VTASKS_CHAOS_EVENTS": str(events)}
        self.process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        assert line == "ready", f"worker did not start: {line!r}"
        self.pid = self.process.pid
        WorkerProcess.running.add(self)

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> float:
        """SIGKILL; the time it happened."""
        self.process.kill()
        at = time.time()
        self.process.wait()
        WorkerProcess.running.discard(self)
        return at

    def stop(self, timeout: float = 60) -> dict[str, int]:
        """SIGTERM, a graceful stop; the worker's counters."""
        WorkerProcess.running.discard(self)
        if not self.alive():
            return {}
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=timeout)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else {}

    @classmethod
    def kill_leftovers(cls) -> None:
        for worker in list(cls.running):
            if worker.alive():
                worker.kill()
        cls.running.clear()

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")


@dataclasses.dataclass
class Run:
    kind: str
    n: int
    pid: int
    attempt: int
    at: float


class Ledger:
    """What the tasks wrote: who started and finished which task, when.
    Tests poll it while the run goes on, so each call reads only the lines
    written since the last one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()
        self._runs: list[Run] = []
        self._read = 0  # bytes of the file parsed so far

    def runs(self) -> list[Run]:
        with open(self.path, "rb") as f:
            f.seek(self._read)
            new = f.read()
        complete = new[: new.rfind(b"\n") + 1]  # a line still being written waits
        self._read += len(complete)
        for line in complete.decode().splitlines():
            kind, n, pid, attempt, at = line.split()
            self._runs.append(Run(kind, int(n), int(pid), int(attempt), float(at)))
        return list(self._runs)

    def done_counts(self) -> collections.Counter[int]:
        return collections.Counter(r.n for r in self.runs() if r.kind == "done")

    def completed(self) -> int:
        return len(self.done_counts())


def wait_drained(client: vtasks.Client, timeout: float = 120) -> None:
    """Until the default queue holds nothing ready, leased or delayed."""

    def drained() -> bool:
        stats = client.stats_sync("default")
        return stats["ready"] + stats["leased"] + stats["delayed"] == 0

    wait_until(drained, timeout, "the queue to drain")


def duplicates(ledger: Ledger) -> dict[int, list[Run]]:
    """Tasks finished more than once, with their finishing runs in order."""
    finished: dict[int, list[Run]] = collections.defaultdict(list)
    for run in ledger.runs():
        if run.kind == "done":
            finished[run.n].append(run)
    return {n: runs for n, runs in finished.items() if len(runs) > 1}


def mixed_durations(count: int, seed: int) -> list[float]:
    """Mostly short tasks (0-5 ms), one in ten long (0.2-1 s)."""
    rng = random.Random(seed)
    return [rng.uniform(0.2, 1.0) if rng.random() < 0.1 else rng.uniform(0, 0.005) for _ in range(count)]


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else 0.0
