"""vtasks: a task queue whose primitives run inside Valkey."""

from typing import TYPE_CHECKING, Any

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
from .tasks import task
from .worker import Worker

if TYPE_CHECKING:
    from .schedules import Schedule, ScheduleInfo


def __getattr__(name: str) -> Any:
    # The schedule classes load when first used: a worker that sets no
    # schedules does not pay for them at start-up (a few milliseconds).
    if name in ("Schedule", "ScheduleInfo"):
        from . import schedules

        return getattr(schedules, name)
    raise AttributeError(f"module 'vtasks' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

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
