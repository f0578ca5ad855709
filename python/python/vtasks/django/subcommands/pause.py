"""``manage.py vtasks pause QUEUE...``."""

from __future__ import annotations

from typing import Any

from ..ops import check_queue

HELP = "Pauses queues: workers take nothing from them; enqueues still work."


def add_arguments(parser: Any) -> None:
    parser.add_argument("queues", nargs="+", metavar="QUEUE")


def handle(command: Any, backend: Any, options: dict[str, Any]) -> None:
    queues = [check_queue(backend, q) for q in options["queues"]]
    for queue in queues:
        backend.client.pause_sync(queue)
        command.stdout.write(f"paused {queue}")
