"""``manage.py runworker``: runs a vtasks worker for a task backend."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.tasks import task_backends

from ....errors import VtasksError
from ...backend import ValkeyTaskBackend
from ...checks import reaching_server
from ...worker import make_worker


class Command(BaseCommand):
    help = "Runs a vtasks worker for a Django task backend."

    def check(self, *args: Any, **kwargs: Any) -> None:
        # A worker uses Valkey: its checks reach the server, whether the
        # command came from manage.py or call_command().
        with reaching_server():
            super().check(*args, **kwargs)

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--backend", default="default", help="TASKS alias (default: %(default)s)")
        parser.add_argument(
            "--queue", action="append", dest="queues",
            help="queue to serve, repeatable, in order of preference (default: the backend's QUEUES, in their order)",
        )
        parser.add_argument("--concurrency", type=int, default=10)
        parser.add_argument("--burst", action="store_true", help="drain the queues (nothing ready or leased) and exit")
        parser.add_argument("--max-tasks", type=int, default=None)
        parser.add_argument("--worker-id", default=None)

    def handle(self, *args: Any, **options: Any) -> None:
        backend = task_backends[options["backend"]]
        if not isinstance(backend, ValkeyTaskBackend):
            raise CommandError(f"task backend {options['backend']!r} is not a ValkeyTaskBackend")
        queues = options["queues"] or backend.queue_order
        unknown = set(queues) - backend.queues
        if unknown:
            raise CommandError(f"queues not configured for backend {options['backend']!r}: {sorted(unknown)}")
        if options["concurrency"] < 1:
            raise CommandError("--concurrency must be at least 1")
        logging.getLogger("vtasks").setLevel(logging.INFO if options["verbosity"] > 0 else logging.WARNING)
        worker = make_worker(
            backend,
            queues=queues,
            concurrency=options["concurrency"],
            burst=options["burst"],
            max_tasks=options["max_tasks"],
            consumer=options["worker_id"],
        )
        try:
            engine = backend.client.engine
        except VtasksError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"vtasks worker {worker.consumer}: queues {queues}, concurrency {worker.concurrency}, {engine} engine"
        )
        asyncio.run(worker.run())
        self.stdout.write(
            f"vtasks worker {worker.consumer} done: {worker.succeeded} succeeded, "
            f"{worker.failed} failed, {worker.dead_lettered} dead-lettered"
        )
