"""The subcommands of ``manage.py vtasks``, one module each.

A module ``NAME.py`` in this package is the subcommand ``NAME`` (found by
its file name: adding a subcommand needs no change elsewhere). It defines

- ``HELP``: the line shown in ``manage.py vtasks --help``;
- ``add_arguments(parser)``: its own arguments (the dispatcher adds
  ``--backend``, the ``TASKS`` alias, to every subcommand);
- ``handle(command, backend, options)``: runs it. ``command`` is the
  management command (write with ``command.stdout``, ``command.style``),
  ``backend`` the ``ValkeyTaskBackend`` that ``--backend`` names, and
  ``options`` the parsed arguments.

``handle`` reports a mistake or a refusal by raising ``CommandError``;
``ValueError``, ``LookupError`` and vtasks' own errors (an unreachable
server, a refused command) are turned into one by the dispatcher, so the
user reads a message, never a traceback.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def subcommands() -> dict[str, ModuleType]:
    """Every subcommand module, by name, sorted."""
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        found[info.name] = importlib.import_module(f"{__name__}.{info.name}")
    return found
