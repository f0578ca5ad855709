"""The JSON shape of a task payload and of a failure record.

A payload is ``{"task": <registered name>, "args": [...], "kwargs": {...}}``
as JSON text (the native layer compresses large ones). Only JSON: never
pickle, so a payload can never run code by being read.
"""

from __future__ import annotations

import traceback
from typing import Any

try:
    import orjson

    def dumps(value: Any) -> bytes:
        return orjson.dumps(value)

    def loads(data: bytes) -> Any:
        return orjson.loads(data)

except ImportError:  # pragma: no cover - orjson is a dependency
    import json

    def dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    def loads(data: bytes) -> Any:
        return json.loads(data)


def encode_call(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    try:
        return dumps({"task": name, "args": list(args), "kwargs": kwargs})
    except TypeError as exc:
        raise TypeError(f"arguments of task {name} are not JSON-serializable: {exc}") from exc


def decode_call(data: bytes) -> tuple[str, list[Any], dict[str, Any]]:
    """The task name, positional and keyword arguments; ValueError if malformed."""
    name, args, kwargs, _ = decode_call_with_options(data)
    return name, args, kwargs


# A field a worker does not know could change what the call means (a newer
# producer's option, a typo, a forged field): such payloads are refused, not
# run with the field ignored.
FIELDS = frozenset({"task", "args", "kwargs", "options"})
OPTIONS = frozenset({"backoff", "timeout"})
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def decode_call_with_options(data: bytes) -> tuple[str, list[Any], dict[str, Any], dict[str, Any]]:
    """As `decode_call`, plus the payload's run options (`backoff`, `timeout`)."""
    try:
        body = loads(data)
    except Exception as exc:
        if data.startswith(ZSTD_MAGIC):
            raise ValueError(
                "payload is compressed and does not decompress (corrupt, or larger than 64 MiB inflated)"
            ) from exc
        raise ValueError(f"payload is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ValueError("payload is not a JSON object")
    if not FIELDS.issuperset(body):
        raise ValueError(f"payload has unknown fields: {sorted(set(body) - FIELDS)}")
    name, args, kwargs = body.get("task"), body.get("args", []), body.get("kwargs", {})
    if not isinstance(name, str) or not name:
        raise ValueError("payload has no task name")
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ValueError("payload args must be a list and kwargs an object")
    options = body.get("options", {})
    if not isinstance(options, dict):
        raise ValueError("payload options must be an object")
    if options:
        if not OPTIONS.issuperset(options):
            raise ValueError(f"payload has unknown options: {sorted(set(options) - OPTIONS)}")
        for key, value in options.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"payload option {key} must be a positive number, got {value!r}")
    return name, args, kwargs, options


def describe_exception(exc: BaseException) -> str:
    """A failure record, JSON: exception class path, message, traceback."""
    cls = type(exc)
    return dumps(
        {
            "exception_class": f"{cls.__module__}.{cls.__qualname__}",
            "message": str(exc),
            "traceback": "".join(traceback.format_exception(exc)),
        }
    ).decode()
