"""vtasks: a task queue whose primitives run inside Valkey."""

from ._native import __version__
from .client import Client, TaskState
from .errors import (
    ConnectionFailed,
    InvalidArgument,
    LeaseLost,
    ModuleNotLoaded,
    NoSuchQueue,
    NotReplicated,
    PayloadError,
    ProtocolError,
    QueueFull,
    ResultNotStored,
    ServerError,
    ServerFull,
    TaskNotRegistered,
    VtasksError,
)
from .schedules import Schedule, ScheduleInfo
from .tasks import task
from .worker import Worker

__all__ = [
    "Client",
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
    "Schedule",
    "ScheduleInfo",
    "ServerError",
    "ServerFull",
    "TaskNotRegistered",
    "TaskState",
    "VtasksError",
    "Worker",
    "__version__",
    "task",
]
