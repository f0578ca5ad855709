"""The fault suite (`make chaos`; a smaller run in CI with `make chaos-ci`).

Each test adds a row to the report (``report`` fixture); at the end of the
session the rows are written as a Markdown table to
``VTASKS_CHAOS_REPORT`` (default ``target/chaos-report.md``). With
``VTASKS_CHAOS_DOC`` (``make chaos`` sets it to ``docs/RELIABILITY.md``) a
full-scale session in which every test passed also replaces its target's
section of that file, between ``<!-- chaos:<target>:begin -->`` and
``<!-- chaos:<target>:end -->``, so the figures there are the output of the
last such run."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.harness import WorkerProcess
from tests.conftest import ROOT

_rows: list[dict[str, object]] = []
_started = time.monotonic()
_load_before = os.getloadavg()[0]
COLUMNS = ["fault", "runs", "tasks", "lost", "duplicated", "recovery", "notes"]


@pytest.fixture
def report() -> Iterator[list[dict[str, object]]]:
    yield _rows


@pytest.fixture(autouse=True)
def no_worker_outlives_its_test() -> Iterator[None]:
    yield
    WorkerProcess.kill_leftovers()


@pytest.fixture
def events(tmp_path: Path) -> Path:
    path = tmp_path / "events.txt"
    path.touch()
    return path


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not _rows:
        return
    path = Path(os.environ.get("VTASKS_CHAOS_REPORT", ROOT / "target" / "chaos-report.md"))
    path.parent.mkdir(parents=True, exist_ok=True)
    scale = os.environ.get("VTASKS_CHAOS", "ci")
    target = os.environ.get("VTASKS_TARGET") or "module"
    table = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in _rows:
        table.append("| " + " | ".join(str(row.get(c, "")).replace("|", "/") for c in COLUMNS) + " |")
    lines = [f"scale: {scale}, target: {target}", "", *table]
    path.write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))
    doc = os.environ.get("VTASKS_CHAOS_DOC")
    if doc:
        write_doc_section(Path(doc), session, scale, target, table)


def server_version(target: str) -> str:
    binary = "redis-server" if target == "scripts-redis" else os.environ.get("VTASKS_SERVER", "valkey-server")
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    version = next((word[2:] for word in out.split() if word.startswith("v=")), "?")
    return f"{'Redis' if target == 'scripts-redis' else 'Valkey'} {version}"


def write_doc_section(doc: Path, session: pytest.Session, scale: str, target: str, table: list[str]) -> None:
    """Replaces the target's section of the doc with this run's table, if
    the run is one the doc may quote: full scale, every test passed, and
    each test that reports (the ``report`` fixture) gave its row."""
    begin, end = f"<!-- chaos:{target}:begin -->", f"<!-- chaos:{target}:end -->"
    reason = None
    if scale != "full":
        reason = f"scale {scale}, not full"
    elif session.testsfailed or len(_rows) != sum("report" in item.fixturenames for item in session.items):
        reason = f"{session.testsfailed} of {session.testscollected} tests failed, {len(_rows)} rows"
    text = doc.read_text()
    if reason is None and (begin not in text or end not in text):
        reason = f"no {begin} ... {end} in {doc}"
    if reason is not None:
        print(f"\n{doc} not updated: {reason}")
        return
    minutes = (time.monotonic() - _started) / 60
    import vtasks

    module = os.environ.get("VTASKS_MODULE", "")
    build = "release build" if "/release/" in module else "debug build" if module else ""
    engine = f"module ({build})" if target == "module" else "scripts engine"
    header = (
        f"Measured {time.strftime('%Y-%m-%d')} by `make chaos` ({engine} on {server_version(target)}, "
        f"vtasks {vtasks.__version__}, Python {platform.python_version()}): {len(_rows)} tests in "
        f"{minutes:.0f} min on {os.cpu_count()} cores, 1-minute load average {_load_before:.1f} before the run."
    )
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{begin}\n{header}\n\n" + "\n".join(table) + f"\n{end}{tail}")
    print(f"\n{doc}: section {target} written")
