"""``manage.py runworker --processes N``: N ``runworker`` processes under
one parent (``vtasks.supervisor``).

Each child is the same command with ``--processes 1``, started in a fresh
interpreter with the parent's settings module, import path and options, so
``--processes N`` behaves as N copies of the single-process command: each
child has its own connections, concurrency, ``--max-tasks`` and burst
drain, and the parent exits once every child has. The parent ran the
system checks already; children skip them.

With ``--worker-id NAME`` child ``i`` is named ``NAME.i`` (a replacement
keeps the name of the child it replaces); without it, each child takes the
default name, which carries its own host and process id. Likewise child
``i`` serves its metrics on ``--metrics-port`` + i - 1 and touches
``--health-file``'s path with ``.i`` appended.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from ..limits import LIMITS
from ..supervisor import Supervisor, process_number, python_command

# The child's options, as JSON.
_OPTIONS_ENV = "VTASKS_RUNWORKER_OPTIONS"
# Options of the parent's command line that a child does not take: its
# settings module and import path come with its environment.
_NOT_PASSED = frozenset({"processes", "skip_checks", "settings", "pythonpath", "stdout", "stderr"})


def child_name(worker_id: str, number: int) -> str:
    """The consumer name of child ``number`` of a worker named ``worker_id``."""
    return f"{worker_id}.{number}"


def check_worker_id(worker_id: str | None, processes: int) -> None:
    """Raises ValueError if the children's names would be too long."""
    if worker_id is None:
        return
    longest = child_name(worker_id, processes)
    if len(longest) > LIMITS["MAX_CONSUMER_LEN"]:
        raise ValueError(
            f"--worker-id is too long for {processes} processes: the children are named up to {longest!r}, "
            f"more than {LIMITS['MAX_CONSUMER_LEN']} characters"
        )


def run_processes(options: dict[str, Any]) -> int:
    """Runs ``options["processes"]`` runworker processes with the other
    ``options`` until all have exited; the parent's exit status."""
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        # settings.configure() in this process cannot be repeated in a child.
        raise ValueError("--processes needs the settings as a module named in DJANGO_SETTINGS_MODULE (or --settings)")
    child_options = {}
    for name, value in options.items():
        if name in _NOT_PASSED:
            continue
        try:
            json.dumps(value)
        except TypeError:
            continue
        child_options[name] = value
    command, env = python_command("vtasks.django.supervisor:child_main")
    env[_OPTIONS_ENV] = json.dumps(child_options)
    return Supervisor(command, options["processes"], env=env).run()


def child_main() -> None:
    """A child's program: ``runworker`` with the parent's options."""
    import django
    from django.core.management import call_command
    from django.core.management.base import CommandError

    options = json.loads(os.environ.pop(_OPTIONS_ENV))
    number = process_number()
    if number is not None:
        if options.get("worker_id"):
            options["worker_id"] = child_name(options["worker_id"], number)
        if options.get("metrics_port") is not None:
            options["metrics_port"] += number - 1
        if options.get("health_file"):
            options["health_file"] = child_name(options["health_file"], number)
    django.setup()
    try:
        call_command("runworker", processes=1, skip_checks=True, **options)
    except CommandError as exc:
        # As manage.py reports it: the message, not a traceback.
        sys.stderr.write(f"CommandError: {exc}\n")
        sys.exit(1)
