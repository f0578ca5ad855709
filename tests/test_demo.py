"""The example project's demo, reduced, as a smoke test."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def test_the_demo_runs_end_to_end(valkey):
    env = {**os.environ, "VTASKS_URL": valkey.url, "DEMO_TASKS": "1000", "DEMO_CONCURRENCY": "50"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    done = subprocess.run(
        [sys.executable, str(ROOT / "example" / "demo.py")], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "checked every result: all 1000 tasks succeeded" in done.stdout
    assert "failures 0, retries 0, dead 0" in done.stdout
