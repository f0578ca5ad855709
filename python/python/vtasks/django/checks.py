"""When the system checks of the vtasks backends reach the server.

Django runs every task backend's ``check()`` through ``django.tasks``' own
system check (the app imports ``django.tasks`` so that check is registered).
A backend's checks of its options run with every command that runs system
checks. Its checks that connect to Valkey run only in the commands that use
Valkey: ``check``, ``runserver`` and ``runworker``. This follows Django's
database checks, which do more than look at settings and so run only where a
database is used: a ``migrate``, ``collectstatic`` or ``makemigrations`` in a
build without Valkey does not try to reach it.

The command is the first argument of ``manage.py`` (or ``django-admin``,
``python -m django``), read as Django's own command-line utility reads it.
Code that runs the checks itself (``call_command("check")`` in a script or
test, a health endpoint) opts in with ``reaching_server()``.
"""

from __future__ import annotations

import contextvars
import sys
from collections.abc import Iterator
from contextlib import contextmanager

# The management commands whose checks connect to Valkey.
SERVER_COMMANDS = frozenset({"check", "runserver", "runworker"})

_reaching: contextvars.ContextVar[bool | None] = contextvars.ContextVar("vtasks_reaching_server", default=None)


def running_command() -> str | None:
    """The management command this process was started with, if any."""
    return sys.argv[1] if len(sys.argv) > 1 else None


def reaches_server() -> bool:
    """Whether checks run now may connect to Valkey."""
    forced = _reaching.get()
    if forced is not None:
        return forced
    return running_command() in SERVER_COMMANDS


@contextmanager
def reaching_server(enabled: bool = True) -> Iterator[None]:
    """Within this block the backends' checks connect to Valkey (or, with
    ``enabled=False``, do not), whatever the command."""
    token = _reaching.set(enabled)
    try:
        yield
    finally:
        _reaching.reset(token)
