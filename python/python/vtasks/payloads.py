"""The JSON shape of a task payload and of a failure record.

A payload is ``{"task": <registered name>, "args": [...], "kwargs": {...}}``
as JSON text (the native layer compresses large ones). Only JSON: never
pickle, so a payload can never run code by being read.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

from .limits import MAX_ERROR_TEXT

try:
    import orjson

    def dumps(value: Any) -> bytes:
        return orjson.dumps(value)

    def loads(data: bytes | str) -> Any:
        return orjson.loads(data)

except ImportError:  # pragma: no cover - orjson is a dependency
    import json

    def dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    def loads(data: bytes | str) -> Any:
        return json.loads(data)


def encode_call(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    try:
        return dumps({"task": name, "args": list(args), "kwargs": kwargs})
    except (TypeError, ValueError) as exc:
        raise argument_error(name, args, kwargs, dumps) or TypeError(
            f"arguments of task {name} are not JSON-serializable: {exc}"
        ) from exc


def argument_error(
    name: str, args: Any, kwargs: Any, encode: Callable[[Any], Any]
) -> TypeError | ValueError | None:
    """Which argument of a call ``encode`` refuses, where in it and why (as
    an exception to raise); None if it takes them all."""
    for index, value in enumerate(args):
        problem = json_problem(value, encode)
        if problem is not None:
            cls, where, why = problem
            return cls(f"argument {index} of task {name} is not JSON{where}: {why}")
    for key, value in dict(kwargs).items():
        problem = json_problem(value, encode)
        if problem is not None:
            cls, where, why = problem
            return cls(f"argument {key!r} of task {name} is not JSON{where}: {why}")
    return None


def json_problem(
    value: Any, encode: Callable[[Any], Any], where: str = ""
) -> tuple[type[TypeError] | type[ValueError], str, str] | None:
    """The first part of ``value`` that ``encode`` refuses: the exception
    class, where it is (``" at [2]['to']"``) and why; None if it takes it."""
    try:
        encode(value)
        return None
    except (TypeError, ValueError) as exc:
        error = exc
    at = f" at {where}" if where else ""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return (
                    TypeError, at,
                    f"dict key {key!r} is {_a(type(key).__name__)}; JSON object keys are strings (use {str(key)!r})",
                )
            problem = json_problem(item, encode, f"{where}[{key!r}]")
            if problem is not None:
                return problem
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            problem = json_problem(item, encode, f"{where}[{index}]")
            if problem is not None:
                return problem
    if isinstance(value, (str, int, float, bool, list, tuple, dict)) or value is None:
        return type(error), at, str(error)
    kind = type(value).__name__
    hint = " (use a list)" if isinstance(value, (set, frozenset)) else ""
    return TypeError, at, f"{_a(kind)} is not a JSON type{hint}"


def _a(noun: str) -> str:
    return f"{'an' if noun[:1] in tuple('aeiouAEIOU') else 'a'} {noun}"


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


# The server keeps at most this much error text per task (docs/PROTOCOL.md,
# "Limits"); records are built to fit, since a cut one is not JSON.
MAX_ERROR_BYTES = MAX_ERROR_TEXT
# What one earlier attempt keeps at most before older attempts lose theirs.
_KEEP_MESSAGE = 4096
_KEEP_TRACEBACK = 4096
_KEEP_LATEST_TRACEBACK = 32768


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def error_entry(exc: BaseException, attempt: int | None = None) -> dict[str, Any]:
    """One failed attempt: exception class path, message, traceback."""
    entry: dict[str, Any] = {
        "exception_class": class_path(type(exc)),
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }
    if attempt is not None:
        entry["attempt"] = attempt
    return entry


def error_entries(error: dict[str, Any] | None) -> tuple[list[dict[str, Any]], int]:
    """The attempts a failure record lists, oldest first, and how many older
    ones were left out to fit the limit."""
    if not error:
        return [], 0
    latest = {k: v for k, v in error.items() if k not in ("previous", "omitted")}
    previous = [e for e in error.get("previous", []) if isinstance(e, dict)]
    omitted = error.get("omitted", 0)
    return [*previous, latest], omitted if isinstance(omitted, int) else 0


def error_record(entries: list[dict[str, Any]], omitted: int = 0) -> str:
    """The error text of a failed attempt: the latest attempt's fields at
    the top level, the earlier ones under ``previous`` (oldest first), and
    ``omitted`` older ones left out. It fits `MAX_ERROR_BYTES`: when too
    long, messages keep their first 4 KiB, tracebacks their end (4 KiB for
    earlier attempts, 32 KiB for the latest); then earlier attempts lose
    their tracebacks, oldest first; then the oldest attempts go; last, the
    latest traceback is cut to what fits."""
    entries = [dict(e) for e in entries]

    def encode() -> bytes:
        *previous, latest = entries
        body = dict(latest)
        if previous:
            body["previous"] = previous
        if omitted:
            body["omitted"] = omitted
        return dumps(body)

    text = encode()
    if len(text) <= MAX_ERROR_BYTES:
        return text.decode()
    for entry in entries:
        entry["message"] = _tail(str(entry.get("message", "")), _KEEP_MESSAGE, head=True)
    for entry in entries[:-1]:
        entry["traceback"] = _tail(str(entry.get("traceback", "")), _KEEP_TRACEBACK)
    entries[-1]["traceback"] = _tail(str(entries[-1].get("traceback", "")), _KEEP_LATEST_TRACEBACK)
    text = encode()
    for entry in entries[:-1]:
        if len(text) <= MAX_ERROR_BYTES:
            break
        entry["traceback"] = ""
        text = encode()
    while len(text) > MAX_ERROR_BYTES and len(entries) > 1:
        entries.pop(0)
        omitted += 1
        text = encode()
    if len(text) > MAX_ERROR_BYTES:
        # The most of the latest traceback's end that fits (characters are
        # not bytes: found by bisection).
        latest = entries[-1]
        full = str(latest.get("traceback", ""))
        low, high = 0, len(full)
        while low < high:
            middle = (low + high + 1) // 2
            latest["traceback"] = _tail(full, middle)
            if len(encode()) <= MAX_ERROR_BYTES:
                low = middle
            else:
                high = middle - 1
        latest["traceback"] = _tail(full, low)
        text = encode()
    return text.decode()


def _tail(text: str, keep: int, head: bool = False) -> str:
    """``text`` cut to about ``keep`` characters, saying so; its end (the
    exception line of a traceback), or with ``head`` its beginning."""
    if len(text) <= keep:
        return text
    note = f"[{len(text) - keep} characters cut]"
    return f"{text[:keep]} {note}" if head else f"{note}\n{text[-keep:] if keep else ''}"
