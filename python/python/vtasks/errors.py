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

# Defined here, public as ``vtasks.<name>`` like the native exceptions, so
# the class path recorded with a failure imports.


class TaskNotRegistered(VtasksError):
    """A payload names a callable that is not a registered task."""

    __module__ = "vtasks"


class LeaseLost(VtasksError):
    """An attempt whose lease ran out before its worker reported how it
    ended: the worker died, was cut off from Valkey, or stopped with the
    task still running. The server records it with its own reason (this
    class stands for that text in a task's errors), then runs the task
    again or, once its budget is spent, dead-letters it."""

    __module__ = "vtasks"


class ResultNotStored(VtasksError, TypeError):
    """The task ran and returned a value that cannot be stored as JSON. It
    is not retried (its effects would repeat): it ends failed, with this
    error."""

    __module__ = "vtasks"


__all__ = [
    "ConnectionFailed",
    "InvalidArgument",
    "LeaseLost",
    "ModuleNotLoaded",
    "NoSuchQueue",
    "NotReplicated",
    "PayloadError",
    "ProtocolError",
    "QueueFull",
    "ResultNotStored",
    "ServerError",
    "ServerFull",
    "TaskNotRegistered",
    "VtasksError",
]
