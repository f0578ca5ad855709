"""vtasks: a task queue whose primitives run inside Valkey."""

from ._native import __version__
from .client import Client, TaskState
from .errors import (
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
    TaskNotRegistered,
    VtasksError,
)
from .tasks import task
from .worker import Worker

__all__ = [
    "Client",
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
    "TaskState",
    "VtasksError",
    "Worker",
    "__version__",
    "task",
]
