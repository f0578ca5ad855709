"""Subcommands of ``manage.py vtasks``: one module each, holding a
``Subcommand`` subclass named ``Subcommand``; the module's name is the
subcommand's. Every subcommand gets ``--backend`` (the TASKS alias)."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.tasks import task_backends
from django.tasks.exceptions import InvalidTaskBackend

from ...backend import ValkeyTaskBackend


class Subcommand:
    """One subcommand: ``help``, its arguments and what it does. ``command``
    is the running ``manage.py vtasks`` (its ``stdout``, ``stderr``,
    ``style``)."""

    help = ""

    def __init__(self, command: BaseCommand) -> None:
        self.command = command

    def add_arguments(self, parser: Any) -> None:
        pass

    def handle(self, **options: Any) -> None:
        raise NotImplementedError

    def backend(self, alias: str) -> ValkeyTaskBackend:
        """The vtasks backend of a TASKS alias, or a CommandError."""
        try:
            backend = task_backends[alias]
        except InvalidTaskBackend as exc:
            configured = ", ".join(repr(a) for a in task_backends.settings) or "none"
            raise CommandError(f"no task backend {alias!r} in settings.TASKS (configured: {configured})") from exc
        if not isinstance(backend, ValkeyTaskBackend):
            raise CommandError(f"task backend {alias!r} is not a ValkeyTaskBackend")
        return backend


def discover() -> dict[str, type[Subcommand]]:
    """Every subcommand module of this package, by name."""
    found: dict[str, type[Subcommand]] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        cls = getattr(module, "Subcommand", None)
        if isinstance(cls, type) and issubclass(cls, Subcommand):
            found[info.name] = cls
    return found
