"""Exceptions raised by vtasks."""

from __future__ import annotations

from ._native import (
    ConnectionFailed,
    InvalidArgument,
    NoSuchQueue,
    PayloadError,
    ProtocolError,
    QueueFull,
    ServerError,
    VtasksError,
)


class TaskNotRegistered(VtasksError):
    """A payload names a callable that is not a registered task."""


__all__ = [
    "ConnectionFailed",
    "InvalidArgument",
    "NoSuchQueue",
    "PayloadError",
    "ProtocolError",
    "QueueFull",
    "ServerError",
    "TaskNotRegistered",
    "VtasksError",
]
