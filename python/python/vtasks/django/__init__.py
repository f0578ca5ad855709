"""Django integration: a backend for Django's Tasks framework
(``django.tasks``) and the ``runworker`` management command.

Add ``"vtasks.django"`` to ``INSTALLED_APPS`` and configure::

    TASKS = {
        "default": {
            "BACKEND": "vtasks.django.ValkeyTaskBackend",
            "QUEUES": ["default"],
            "OPTIONS": {"URL": "valkey://127.0.0.1:6379"},
        }
    }
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # Imported lazily so the app can be listed before settings are ready.
    if name == "ValkeyTaskBackend":
        from .backend import ValkeyTaskBackend

        return ValkeyTaskBackend
    raise AttributeError(name)


__all__ = ["ValkeyTaskBackend"]
