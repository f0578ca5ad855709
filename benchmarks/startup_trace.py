"""``manage.py`` with timestamps where start-up passes, for
``benchmarks.startup``: ``python -m benchmarks.startup_trace runworker ...``.

Each point appends ``NAME MONOTONIC`` to the file named by
``BENCH_STARTUP_TRACE`` as it passes (a worker that is killed has written
what it reached). The points are wrappers put around Django's and vtasks'
own functions once they are imported; nothing of the worker changes."""

from __future__ import annotations

import os
import sys
import time

_trace = os.open(os.environ["BENCH_STARTUP_TRACE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)


def mark(name: str) -> None:
    os.write(_trace, f"{name}\t{time.monotonic()!r}\n".encode())


mark("interpreter started")

import django  # noqa: E402
from django.core.management import base, execute_from_command_line  # noqa: E402

mark("django.core.management imported")


def _wrap_after_setup() -> None:
    """vtasks is imported by django.setup() (the app): wrap its pieces then."""
    from vtasks import _native, worker

    native_client = _native.NativeClient

    def connecting(*args, **kwargs):  # type: ignore[no-untyped-def]
        mark("connect begins")
        client = native_client(*args, **kwargs)
        mark("connected (engine chosen)")
        return client

    _native.NativeClient = connecting  # type: ignore[misc]
    run = worker.Worker.run

    async def running(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        mark("Worker.run() begins")
        return await run(self, *args, **kwargs)

    worker.Worker.run = running  # type: ignore[method-assign]


_setup = django.setup


def setup(*args, **kwargs):  # type: ignore[no-untyped-def]
    mark("django.setup() begins")
    _setup(*args, **kwargs)
    mark("django.setup() done")
    _wrap_after_setup()


django.setup = setup
_check = base.BaseCommand.check


def check(self, *args, **kwargs):  # type: ignore[no-untyped-def]
    mark("system checks begin")
    result = _check(self, *args, **kwargs)
    mark("system checks done")
    return result


base.BaseCommand.check = check  # type: ignore[method-assign]

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.peers.settings")
    execute_from_command_line([sys.argv[0], *sys.argv[1:]])
