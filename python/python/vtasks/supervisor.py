"""Several worker processes under one parent: ``runworker --processes N``,
or any program that runs a ``vtasks.Worker``.

One worker process runs Python on one core at a time (the GIL); a machine
with more cores needs more processes. The children share nothing but
Valkey: each is a fresh interpreter (started with the parent's import path,
environment and working directory) with its own connections and its own
consumer name, as if started by hand. A fresh interpreter costs its start-up
(imports, ``django.setup()``) once per child, and in exchange nothing of the
parent's threads, sockets or Tokio runtime is carried into a child, as it
would be by ``fork`` (see docs/DECISIONS.md, "Worker processes are spawned,
not forked").

The parent talks to its children through a pipe each (file descriptor in
``VTASKS_SUPERVISOR_FD``): one byte to stop gracefully, another to stop at
once, and end-of-file when the parent is gone, which also stops a child
gracefully, so a killed parent leaves no orphans working. The messages are
levels, not counts: a child that also receives the signal itself (systemd's
default ``KillMode=control-group`` signals every process of the unit) stops
gracefully once, not twice. Children run in their own process group, so a
Ctrl-C in a terminal reaches the parent only.

A child that exits with status 0 has finished by itself (burst drained,
``max_tasks`` reached, or stopped by a signal sent to it directly) and is
not replaced; the parent exits once every child has. A child that dies
(an exception, a signal, the OOM killer) is replaced after a pause that
doubles with each death in a row of children that did not live
``stable`` seconds, so a child that cannot start is not restarted in a
tight loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .worker import Worker

logger = logging.getLogger("vtasks.supervisor")

# The child's end of its pipe from the parent.
CONTROL_ENV = "VTASKS_SUPERVISOR_FD"
# The child's number, 1 to N; a replacement keeps the number of the child it replaces.
PROCESS_ENV = "VTASKS_PROCESS"
# The parent's sys.path, for `python_command`'s children.
_PATH_ENV = "VTASKS_SYS_PATH"

_STOP = b"s"
_ABORT = b"a"

# `python_command`'s program: the parent's import path, then the target.
_BOOTSTRAP = (
    "import json, os, sys; sys.path[:] = json.loads(os.environ.pop('VTASKS_SYS_PATH')); "
    "import importlib; module, _, name = sys.argv[1].partition(':'); "
    "getattr(importlib.import_module(module), name)()"
)


def process_number() -> int | None:
    """This process's number (1 to N) under a supervisor, else None."""
    value = os.environ.get(PROCESS_ENV)
    return int(value) if value else None


def python_command(target: str) -> tuple[list[str], dict[str, str]]:
    """The command and environment of a fresh interpreter that imports
    ``target`` (``"package.module:function"``) with this process's
    ``sys.path`` and calls it without arguments: a child that imports what
    its parent could, however the parent was started (``manage.py``,
    ``python -m``, a console script, a test runner)."""
    return [sys.executable, "-c", _BOOTSTRAP, target], {_PATH_ENV: json.dumps(sys.path)}


async def serve(worker: Worker) -> None:
    """Runs ``worker`` (``await worker.run()``); in a process started by a
    :class:`Supervisor`, it also stops when the parent says so, or when the
    parent is gone."""
    raw = os.environ.pop(CONTROL_ENV, None)
    if raw is None:
        await worker.run()
        return
    fd = int(raw)
    # The task's own subprocesses must not hold the pipe (the parent's death
    # would then go unnoticed while they live).
    os.set_inheritable(fd, False)
    loop = asyncio.get_running_loop()

    def on_message() -> None:
        try:
            data = os.read(fd, 64)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            logger.warning("worker %s: its supervisor is gone; stopping gracefully", worker.consumer)
            worker.stop()
        elif _ABORT in data:
            worker.abort()
        elif _STOP in data:
            logger.info("worker %s stopping: asked by its supervisor", worker.consumer)
            worker.stop()

    loop.add_reader(fd, on_message)
    try:
        await worker.run()
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def describe_exit(returncode: int) -> str:
    """A child's exit status in words."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


class _Child:
    """One numbered place for a worker process, and the process in it."""

    __slots__ = ("number", "process", "control", "started_at", "quick_deaths", "restart_due", "done")

    def __init__(self, number: int) -> None:
        self.number = number
        self.process: asyncio.subprocess.Process | None = None
        self.control: int | None = None  # the parent's end of the pipe
        self.started_at = 0.0
        # Deaths in a row of children that lived less than `stable` seconds.
        self.quick_deaths = 0
        # Its replacement's pause is over: start it.
        self.restart_due = False
        # Exited with status 0, or stopped: not started again.
        self.done = False


class Supervisor:
    """Runs ``processes`` copies of ``command``, each a worker process
    that calls :func:`serve`, and keeps them running.

    ``run()`` returns once every child has exited: by itself with status 0
    (burst drained, ``max_tasks`` reached), or after a stop. SIGTERM or
    SIGINT to the parent (with ``handle_signals``) or ``stop()`` stops every
    child gracefully (each gives its running tasks its own grace period);
    a second signal, or ``abort()``, stops them at once. It returns 0, or 1
    if a child did not stop cleanly (it exited with another status, or was
    killed, while stopping).

    A child that dies while the parent is not stopping is replaced; the
    pause before that starts at ``backoff`` seconds and doubles, up to
    ``max_backoff``, with each death in a row of children that lived less
    than ``stable`` seconds. Each child gets ``env`` on top of the parent's
    environment, plus its number in ``VTASKS_PROCESS`` (1 to
    ``processes``; a replacement keeps the number of the child it replaces).
    """

    def __init__(
        self,
        command: Sequence[str],
        processes: int,
        *,
        env: Mapping[str, str] | None = None,
        handle_signals: bool = True,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        stable: float = 30.0,
    ) -> None:
        if processes < 1:
            raise ValueError(f"processes must be at least 1, got {processes}")
        self.command = list(command)
        self.processes = processes
        self.env = dict(env or {})
        self.handle_signals = handle_signals
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.stable = stable
        self.failed_to_stop = 0
        self._children = [_Child(n) for n in range(1, processes + 1)]
        self._stopping = False
        self._aborting = False
        self._changed: asyncio.Event | None = None
        self._restarts: set[asyncio.TimerHandle] = set()

    def run(self) -> int:
        """Starts the children and supervises them until all have exited;
        the exit status for the parent (0, or 1 if a child failed to stop)."""
        return asyncio.run(self.arun())

    async def arun(self) -> int:
        """As ``run``, on the running event loop."""
        loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        if self.handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal)
        logger.info("starting %d worker processes", self.processes)
        waits: dict[asyncio.Task[int], _Child] = {}
        try:
            for child in self._children:
                await self._start(child)
            while True:
                for child in self._children:
                    if child.process is not None and all(c is not child for c in waits.values()):
                        waits[asyncio.ensure_future(child.process.wait())] = child
                if not waits and (self._stopping or all(c.done for c in self._children)):
                    break
                changed = asyncio.ensure_future(self._changed.wait())
                done, _ = await asyncio.wait({*waits, changed}, return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                self._changed.clear()
                for finished in done:
                    if finished is changed:
                        continue
                    child = waits.pop(finished)
                    self._exited(child, finished.result())
                for child in self._children:
                    if child.restart_due and not self._stopping:
                        child.restart_due = False
                        await self._start(child)
        finally:
            for handle in self._restarts:
                handle.cancel()
            if self.handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            for child in self._children:
                self._close_control(child)
        if self.failed_to_stop:
            logger.error("%d of the worker processes did not stop cleanly", self.failed_to_stop)
            return 1
        logger.info("every worker process has exited")
        return 0

    def stop(self) -> None:
        """Stops every child gracefully; call it on the supervisor's loop."""
        if self._stopping:
            return
        self._stopping = True
        for handle in self._restarts:
            handle.cancel()
        self._restarts.clear()
        self._tell(_STOP)

    def abort(self) -> None:
        """Stops every child at once; call it on the supervisor's loop."""
        self._aborting = True
        self.stop()
        self._tell(_ABORT)

    def _on_signal(self) -> None:
        if self._stopping:
            logger.warning("stopping the worker processes at once")
            self.abort()
        else:
            logger.warning(
                "stopping %d worker processes: no new tasks, running ones get their grace period "
                "(signal again to stop at once)", sum(c.process is not None for c in self._children),
            )
            self.stop()

    def _tell(self, message: bytes) -> None:
        for child in self._children:
            if child.control is not None:
                try:
                    os.write(child.control, message)
                except OSError:
                    pass  # the child is gone; its exit is on its way
        if self._changed is not None:
            self._changed.set()

    async def _start(self, child: _Child) -> None:
        read, write = os.pipe()
        env = {
            **os.environ, **self.env,
            CONTROL_ENV: str(read), PROCESS_ENV: str(child.number),
        }
        try:
            child.process = await asyncio.create_subprocess_exec(
                *self.command, env=env, pass_fds=(read,), stdin=asyncio.subprocess.DEVNULL,
                # A Ctrl-C in a terminal goes to the parent alone, which tells
                # each child once.
                process_group=0,
            )
        except BaseException:
            os.close(write)
            raise
        finally:
            os.close(read)
        child.control = write
        child.started_at = time.monotonic()
        if self._aborting:
            os.write(write, _STOP + _ABORT)
        elif self._stopping:
            os.write(write, _STOP)
        logger.info("worker process %d started (pid %d)", child.number, child.process.pid)

    def _exited(self, child: _Child, returncode: int) -> None:
        assert child.process is not None
        pid, lived = child.process.pid, time.monotonic() - child.started_at
        child.process = None
        self._close_control(child)
        how = describe_exit(returncode)
        if self._stopping:
            child.done = True
            # A child killed by SIGTERM or SIGINT while stopping had no worker
            # running yet (a running worker handles both): nothing was lost.
            if returncode == 0 or returncode in (-signal.SIGTERM, -signal.SIGINT):
                logger.info("worker process %d (pid %d) stopped", child.number, pid)
            else:
                self.failed_to_stop += 1
                logger.error("worker process %d (pid %d) did not stop cleanly: %s", child.number, pid, how)
            return
        if returncode == 0:
            child.done = True
            logger.info("worker process %d (pid %d) finished", child.number, pid)
            return
        child.quick_deaths = child.quick_deaths + 1 if lived < self.stable else 1
        delay = min(self.max_backoff, self.backoff * 2 ** (child.quick_deaths - 1))
        logger.error(
            "worker process %d (pid %d) died after %.1f s: %s; starting another in %g s",
            child.number, pid, lived, how, delay,
        )
        loop = asyncio.get_running_loop()

        def due() -> None:
            self._restarts.discard(handle)
            child.restart_due = True
            assert self._changed is not None
            self._changed.set()

        handle = loop.call_later(delay, due)
        self._restarts.add(handle)

    @staticmethod
    def _close_control(child: _Child) -> None:
        if child.control is not None:
            os.close(child.control)
            child.control = None
