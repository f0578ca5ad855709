"""System checks in a project's own `manage.py` processes: which commands
reach Valkey (check, runserver, runworker) and which do not (migrate and
the other commands that have no use for it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.chaos.harness import info
from tests.conftest import ROOT, free_port


def manage(
    tmp_path: Path, url: str, *args: str, timeout: float = 60, extra: str = ""
) -> subprocess.CompletedProcess[str]:
    """``python -m django <args>`` (what manage.py runs) in a project whose
    TASKS point at ``url`` (and whose settings end with ``extra``)."""
    (tmp_path / "project_settings.py").write_text(
        "from tests.django_project.settings import *  # noqa: F403\n"
        "DEBUG = True\n"
        "TASKS = {'default': {'BACKEND': 'vtasks.django.ValkeyTaskBackend', 'QUEUES': ['default'],\n"
        f"                     'OPTIONS': {{'URL': {url!r}}}}}}}\n"
        f"{extra}"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
        "DJANGO_SETTINGS_MODULE": "project_settings",
    }
    return subprocess.run(
        [sys.executable, "-m", "django", *args], env=env, cwd=tmp_path, capture_output=True, text=True,
        timeout=timeout,
    )


def connections(port: int) -> int:
    return int(info(port, "stats")["total_connections_received"])


def test_check_and_runserver_report_an_unreachable_server(tmp_path):
    down = f"valkey://127.0.0.1:{free_port()}"
    checked = manage(tmp_path, down, "check")
    assert checked.returncode == 1, checked
    assert "vtasks.E001" in checked.stderr and "nothing accepts connections" in checked.stderr
    served = manage(tmp_path, down, "runserver", "--noreload", f"127.0.0.1:{free_port()}")
    assert served.returncode == 1, served
    assert "vtasks.E001" in served.stderr, "runserver does not start with Valkey down"


def test_only_the_commands_that_use_valkey_reach_it(tmp_path, valkey):
    before = connections(valkey.port)
    migrated = manage(tmp_path, valkey.url, "migrate")
    assert migrated.returncode == 0, migrated
    # The counter also counts the INFO connections that read it.
    assert connections(valkey.port) - before == 1, "migrate does not connect"
    before = connections(valkey.port)
    checked = manage(tmp_path, valkey.url, "check")
    assert checked.returncode == 0, checked
    assert connections(valkey.port) - before > 1, "check reached the server"
    down = manage(tmp_path, f"valkey://127.0.0.1:{free_port()}", "migrate")
    assert down.returncode == 0 and "vtasks" not in down.stderr, down


def test_runworker_checks_its_task_backends_only(tmp_path, valkey):
    # A project check that fails (as a URL or template check might) stops
    # the project's `check`; a worker checks its task backends and starts.
    (tmp_path / "failing_check_app.py").write_text(
        "from django.apps import AppConfig\n"
        "from django.core import checks\n\n\n"
        "def urls_are_broken(app_configs=None, **kwargs):\n"
        "    return [checks.Error('a project check that fails', id='project.E001')]\n\n\n"
        "class FailingCheckApp(AppConfig):\n"
        "    name = 'failing_check_app'\n\n"
        "    def ready(self):\n"
        "        checks.register(urls_are_broken)\n"
    )
    extra = "INSTALLED_APPS = [*INSTALLED_APPS, 'failing_check_app.FailingCheckApp']\n"
    checked = manage(tmp_path, valkey.url, "check", extra=extra)
    assert checked.returncode == 1 and "project.E001" in checked.stderr, checked
    worked = manage(tmp_path, valkey.url, "runworker", "--burst", extra=extra)
    assert worked.returncode == 0 and "project.E001" not in worked.stderr, worked
    down = manage(tmp_path, f"valkey://127.0.0.1:{free_port()}", "runworker", "--burst", extra=extra)
    assert down.returncode == 1 and "vtasks.E001" in down.stderr, "its backend's server is still checked"
