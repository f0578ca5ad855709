"""The protocol's limits and defaults, as the engines check them.

The numbers come from the native extension (``vtasks._native.LIMITS``),
which takes them from the same Rust crate as the Valkey module and the
scripts engine's Lua library, so a value the client accepts is one the
server accepts. ``docs/PROTOCOL.md`` ("Limits") describes them.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

from ._native import LIMITS as _NATIVE_LIMITS

#: Every limit and default by its name in the protocol crate (read-only).
LIMITS: Final = MappingProxyType(dict(_NATIVE_LIMITS))

MIN_PRIORITY: Final[int] = LIMITS["MIN_PRIORITY"]
MAX_PRIORITY: Final[int] = LIMITS["MAX_PRIORITY"]
#: Highest ``max_attempts`` the engines accept (the lowest is 1).
MAX_ATTEMPTS: Final[int] = LIMITS["MAX_ATTEMPTS"]
#: Highest ``max_lost_leases`` the engines accept (the lowest is 1).
MAX_LOST_LEASES: Final[int] = LIMITS["MAX_LOST_LEASES"]
#: Largest payload (a task's encoded call) or result, in bytes: 16 MiB.
MAX_PAYLOAD: Final[int] = LIMITS["MAX_PAYLOAD"]
#: Longest task id, in bytes.
MAX_ID_LEN: Final[int] = LIMITS["MAX_ID_LEN"]
#: Error text kept per failed attempt, in bytes; longer is truncated.
MAX_ERROR_TEXT: Final[int] = LIMITS["MAX_ERROR_TEXT"]

#: ``max_attempts`` of a ``@vtasks.task`` and of a task enqueued without one.
DEFAULT_MAX_ATTEMPTS: Final[int] = LIMITS["DEFAULT_MAX_ATTEMPTS"]
#: ``max_lost_leases`` (runs lost with a vanished worker before a task is
#: dead-lettered) of a ``@vtasks.task``, of a task enqueued without one and
#: of a Django backend that sets no ``MAX_LOST_LEASES``.
DEFAULT_MAX_LOST_LEASES: Final[int] = LIMITS["DEFAULT_MAX_LOST_LEASES"]
#: ``MAX_ATTEMPTS`` of a Django backend that sets none: a task that raises
#: fails, as with Django's own backends (``docs/DECISIONS.md``).
DJANGO_MAX_ATTEMPTS: Final[int] = LIMITS["DJANGO_MAX_ATTEMPTS"]
#: Seconds a fetched task is leased for (renewed while it runs).
DEFAULT_LEASE: Final[float] = LIMITS["DEFAULT_LEASE_MS"] / 1000
#: Seconds a finished task's result stays readable.
DEFAULT_RESULT_TTL: Final[float] = LIMITS["DEFAULT_KEEP_MS"] / 1000
#: Seconds before the first retry; doubled per failed attempt, with jitter.
DEFAULT_RETRY_BACKOFF: Final[float] = LIMITS["DEFAULT_RETRY_BACKOFF_MS"] / 1000
#: Longest retry delay before jitter, in seconds.
DEFAULT_MAX_BACKOFF: Final[float] = LIMITS["DEFAULT_MAX_BACKOFF_MS"] / 1000


def check_priority(priority: object, what: str = "priority") -> int:
    """``priority`` if it is an integer the engines accept, else ``ValueError``."""
    if isinstance(priority, bool) or not isinstance(priority, int) or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise ValueError(f"{what} must be an integer in {MIN_PRIORITY}..{MAX_PRIORITY}, got {priority!r}")
    return priority


def check_max_attempts(max_attempts: object, what: str = "max_attempts") -> int:
    """``max_attempts`` if it is an integer the engines accept, else ``ValueError``."""
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or not 1 <= max_attempts <= MAX_ATTEMPTS:
        raise ValueError(f"{what} must be an integer in 1..{MAX_ATTEMPTS}, got {max_attempts!r}")
    return max_attempts


def check_max_lost_leases(max_lost_leases: object, what: str = "max_lost_leases") -> int:
    """``max_lost_leases`` if it is an integer the engines accept, else ``ValueError``."""
    if (isinstance(max_lost_leases, bool) or not isinstance(max_lost_leases, int)
            or not 1 <= max_lost_leases <= MAX_LOST_LEASES):
        raise ValueError(f"{what} must be an integer in 1..{MAX_LOST_LEASES}, got {max_lost_leases!r}")
    return max_lost_leases
