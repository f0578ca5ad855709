"""A built wheel installed the way a user installs it: into a fresh
virtualenv, from the file alone, with no Rust toolchain on ``PATH`` and
nothing compiled (``--only-binary :all:``), then tasks run end to end
against a real valkey-server with the module, through ``vtasks`` itself and
through Django's Tasks API with ``manage.py runworker``.

``VTASKS_WHEEL`` names the wheel and ``VTASKS_MODULE`` the module the server
loads. ``make dist-test`` runs this on the release artifacts in ``dist/``
(with ``test_release.py``); ``make wheel-test``, part of ``make test``, on a
wheel of the development build."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import django
import pytest

from tests.conftest import ValkeyServer

WHEEL = Path(os.environ["VTASKS_WHEEL"]).resolve()


def without_rust() -> dict[str, str]:
    """The environment with every directory holding cargo or rustc taken off
    PATH, and no virtualenv, Cargo or Rust variables."""
    dirs = [d for d in os.environ["PATH"].split(os.pathsep)
            if d and not any((Path(d) / tool).exists() for tool in ("cargo", "rustc", "maturin"))]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CARGO", "RUSTUP", "RUSTC", "VIRTUAL_ENV", "PYTHONPATH", "MATURIN"))}
    env["PATH"] = os.pathsep.join(dirs)
    assert shutil.which("cargo", path=env["PATH"]) is None
    assert shutil.which("rustc", path=env["PATH"]) is None
    return env


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel (and Django) installed."""
    venv = tmp_path_factory.mktemp("venv")
    base = getattr(sys, "_base_executable", sys.executable)
    env = without_rust()
    subprocess.run([base, "-m", "venv", str(venv)], check=True, env=env)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--only-binary", ":all:",
         str(WHEEL), f"django=={django.__version__}"],
        check=True, env=env,
    )
    return python


def run_in(python: Path, workdir: Path, program: str, *args: str) -> str:
    script = workdir / "program.py"
    script.write_text(textwrap.dedent(program))
    done = subprocess.run([str(python), str(script), *args], cwd=workdir, env=without_rust(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_wheel_installs_without_rust_and_runs_tasks(venv_python: Path, tmp_path: Path) -> None:
    server = ValkeyServer(with_module=True)
    try:
        out = run_in(venv_python, tmp_path, """
            import asyncio, sys, sysconfig
            import vtasks

            # The package comes from the fresh virtualenv, not the checkout.
            assert vtasks.__file__.startswith(sysconfig.get_paths()["purelib"]), vtasks.__file__

            @vtasks.task(queue="dist")
            async def double(x: int) -> int:
                return 2 * x

            async def main() -> None:
                client = vtasks.Client(sys.argv[1])
                ids = [await client.enqueue(double, i) for i in range(20)]
                worker = vtasks.Worker(client, queues=["dist"], burst=True, handle_signals=False)
                await worker.run()
                states = [await client.get("dist", task_id) for task_id in ids]
                assert [s.status for s in states] == ["done"] * 20, states
                assert [s.result for s in states] == [2 * i for i in range(20)]
                print(client.engine, vtasks.__version__, worker.succeeded)

            asyncio.run(main())
        """, server.url)
        assert out.split() == ["module", "0.1.0", "20"]
    finally:
        server.close()


def test_a_django_project_runs_its_tasks_with_the_installed_wheel(venv_python: Path, tmp_path: Path) -> None:
    server = ValkeyServer(with_module=True)
    try:
        (tmp_path / "shop").mkdir()
        (tmp_path / "shop" / "__init__.py").write_text("")
        (tmp_path / "shop" / "tasks.py").write_text(textwrap.dedent("""
            from django.tasks import task

            @task(queue_name="emails")
            def send_receipt(order: int) -> str:
                return f"receipt {order}"
        """))
        (tmp_path / "settings.py").write_text(textwrap.dedent(f"""
            SECRET_KEY = "dist-test"
            INSTALLED_APPS = ["vtasks.django", "shop"]
            USE_TZ = True
            TASKS = {{"default": {{
                "BACKEND": "vtasks.django.ValkeyTaskBackend",
                "QUEUES": ["default", "emails"],
                "OPTIONS": {{"URL": "{server.url}"}},
            }}}}
        """))
        out = run_in(venv_python, tmp_path, """
            import os
            os.environ["DJANGO_SETTINGS_MODULE"] = "settings"
            import django
            django.setup()
            from django.core.management import call_command
            from django.tasks import TaskResultStatus
            from shop.tasks import send_receipt

            results = [send_receipt.enqueue(order) for order in range(5)]
            call_command("check")
            call_command("runworker", "--burst")
            for order, result in enumerate(results):
                result.refresh()
                assert result.status == TaskResultStatus.SUCCESSFUL, result.status
                assert result.return_value == f"receipt {order}"
            # The operator's command and the admin's templates came with it.
            import io, pathlib, vtasks.django
            out = io.StringIO()
            call_command("vtasks", "stats", stdout=out)
            assert "emails" in out.getvalue(), out.getvalue()
            templates = pathlib.Path(vtasks.django.__file__).parent / "templates" / "admin" / "vtasks"
            assert {p.name for p in templates.glob("*.html")} >= {"queues.html", "queue.html", "task.html"}
            print("ok", len(results))
        """)
        assert out.split()[-2:] == ["ok", "5"]
    finally:
        server.close()
