"""The fault suite (`make chaos`; a smaller run in CI with `make chaos-ci`).

Each test adds a row to the report (``report`` fixture); at the end of the
session the rows are written as a Markdown table to
``VTASKS_CHAOS_REPORT`` (default ``target/chaos-report.md``), the figures
``docs/RELIABILITY.md`` quotes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.harness import WorkerProcess
from tests.conftest import ROOT

_rows: list[dict[str, object]] = []
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
    lines = [f"scale: {scale}, target: {os.environ.get('VTASKS_TARGET') or 'module'}", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in _rows:
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in COLUMNS) + " |")
    path.write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))
