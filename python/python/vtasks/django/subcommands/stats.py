"""``manage.py vtasks stats [--watch]``."""

from __future__ import annotations

import sys
import time
from typing import Any

from ..ops import queue_rows, stats
from ._table import age, table

HELP = "A table of the backend's queues: counts, oldest ready task, paused; --watch redraws it every second."

_CLEAR = "\x1b[H\x1b[2J"


def add_arguments(parser: Any) -> None:
    parser.add_argument("--watch", action="store_true", help="redraw every --interval seconds, with rates")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between redraws (default: %(default)s)")
    parser.add_argument("--count", type=int, default=None, help="with --watch: stop after this many redraws")


def handle(command: Any, backend: Any, options: dict[str, Any]) -> None:
    if options["interval"] <= 0:
        raise ValueError("--interval must be positive")
    if options["count"] is not None and options["count"] < 1:
        raise ValueError("--count must be at least 1")
    if not options["watch"]:
        command.stdout.write(render(backend, None, 0.0))
        return
    clear = command.stdout.isatty() if hasattr(command.stdout, "isatty") else sys.stdout.isatty()
    previous: dict[str, dict[str, int]] | None = None
    last = 0.0
    drawn = 0
    try:
        while True:
            now = time.monotonic()
            current = {q: stats(backend, q) for q in backend.queue_order}
            text = render(backend, current, now - last, previous)
            command.stdout.write((_CLEAR if clear else "") + text + ("\n" if not clear else ""))
            command.stdout.flush()
            previous, last = current, now
            drawn += 1
            if options["count"] is not None and drawn >= options["count"]:
                return
            time.sleep(max(0.0, options["interval"] - (time.monotonic() - now)))
    except KeyboardInterrupt:
        return


def render(
    backend: Any, current: dict[str, dict[str, int]] | None, elapsed: float,
    previous: dict[str, dict[str, int]] | None = None,
) -> str:
    """The table; with ``previous`` readings, rates per second over ``elapsed``."""
    if current is None:
        current = {row.name: row.stats for row in queue_rows({backend.alias: backend})}
    watch = previous is not None or elapsed > 0
    headers = ["QUEUE", "READY", "DELAYED", "RUNNING", "DEAD", "DONE", "OLDEST READY", "PAUSED"]
    headers += ["ENQUEUED/S", "COMPLETED/S", "FAILED/S"] if watch else ["ENQUEUED", "COMPLETED", "FAILED"]
    rows = []
    for queue, s in current.items():
        row = [
            queue, str(s["ready"]), str(s["delayed"]), str(s["leased"]), str(s["dead"]), str(s["done"]),
            age(s["oldest_ready_age_ms"] / 1000), "yes" if s["paused"] else "no",
        ]
        for name in ("enqueued", "acked", "failed"):
            if not watch:
                row.append(str(s[name]))
            elif previous is None or queue not in previous or elapsed <= 0:
                row.append("-")
            else:
                row.append(f"{max(0, s[name] - previous[queue][name]) / elapsed:.1f}")
        rows.append(row)
    title = f"vtasks backend {backend.alias!r}, {backend.client.engine} engine"
    return f"{title}\n{table(headers, rows)}\n"
