"""Exceptions raised by vtasks."""

from __future__ import annotations

from ._native import (
    ConnectionFailed,
    InvalidArgument,
    ModuleNotLoaded,
    NoSuchQueue,
    NotReplicated,
    PayloadError,
    ProtocolError,
    QueueFull,
    ServerError,
    ServerFull,
    VtasksError,
)


class TaskNotRegistered(VtasksError):
    """A payload names a callable that is not a registered task."""

    # Its public path, like the native exceptions' (``vtasks.<name>``).
    __module__ = "vtasks"


__all__ = [
    "ConnectionFailed",
    "InvalidArgument",
    "ModuleNotLoaded",
    "NoSuchQueue",
    "NotReplicated",
    "PayloadError",
    "ProtocolError",
    "QueueFull",
    "ServerError",
    "ServerFull",
    "TaskNotRegistered",
    "VtasksError",
]
