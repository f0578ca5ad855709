"""Plain-text tables and figures for the subcommands."""

from __future__ import annotations

import datetime as dt
import sys
from typing import Any


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        out = []
        for width, cell in zip(widths, cells, strict=True):
            numeric = cell[:1].isdigit() or cell in ("-", "")
            out.append(cell.rjust(width) if numeric else cell.ljust(width))
        return "  ".join(out).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


def age(seconds: float) -> str:
    """``0``, ``850 ms``, ``12.5 s``, ``3 min 5 s``, ``2 h 10 min``."""
    if seconds <= 0:
        return "0"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def when(value: dt.datetime | None) -> str:
    return "-" if value is None else value.isoformat(sep=" ", timespec="milliseconds")


def interactive() -> bool:
    """Whether there is a terminal to ask a question at."""
    return bool(sys.stdin) and sys.stdin.isatty()


def confirm(question: str, yes: bool) -> bool:
    """``yes``, or the user's answer to ``question`` at a terminal. With no
    terminal to ask at, the answer is no (the caller refuses then)."""
    if yes:
        return True
    if not interactive():
        return False
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def shown(value: Any) -> str:
    """A value as JSON-like text for a terminal."""
    from ...payloads import dumps

    try:
        return dumps(value).decode()
    except (TypeError, ValueError):
        return repr(value)
