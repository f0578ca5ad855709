"""``manage.py runworker``: runs a vtasks worker for a task backend."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.tasks import task_backends
from django.tasks.exceptions import InvalidTaskBackend

from ....errors import VtasksError
from ....supervisor import serve
from ....worker import DEFAULT_CONCURRENCY
from ...backend import ValkeyTaskBackend
from ...checks import reaching_server
from ...supervisor import check_worker_id, run_processes
from ...worker import make_worker


class Command(BaseCommand):
    help = (
        "Runs a vtasks worker for a Django task backend. SIGTERM or SIGINT stops it gracefully: no new tasks, "
        "running ones get --grace seconds; a second signal stops it at once. A task still running then is "
        "abandoned (the log names it): its lease runs out and the server runs it again or, once its budget "
        "is spent, dead-letters it. With --processes N, the signals go to the parent, which stops every "
        "process the same way."
    )

    # A worker checks what it runs on, its task backends (their options and
    # their server), rather than every check of the project (URL
    # configuration, templates, models: `check` and `runserver` cover
    # those), which on a large project takes a worker's start-up most of a
    # second, and again each time a process is replaced.
    requires_system_checks: list[str] = []

    def check_backends(self) -> None:
        """Runs the task backends' system checks, connecting to Valkey
        (whether the command came from manage.py or call_command()); reports
        them as Django does and stops on an error."""
        from django.tasks.checks import check_tasks

        with reaching_server():
            messages = [m for m in check_tasks() if not m.is_silenced()]
        for message in messages:
            if not message.is_serious():
                self.stderr.write(str(message))
        serious = [str(m) for m in messages if m.is_serious()]
        if serious:
            raise CommandError("System check identified problems:\n" + "\n".join(serious))

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--skip-checks", action="store_true", help="skip the task backends' system checks")
        parser.add_argument("--backend", default="default", help="TASKS alias (default: %(default)s)")
        parser.add_argument(
            "--queue", action="append", dest="queues",
            help="queue to serve, repeatable, in order of preference (default: the backend's QUEUES, in their order)",
        )
        parser.add_argument(
            "--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="tasks run at once (default: %(default)s)"
        )
        parser.add_argument(
            "--burst", action="store_true",
            help="exit once the queues hold no ready and no leased task. Delayed tasks are not waited for: "
            "tasks scheduled for later (run_after) and failed tasks waiting for their retry stay queued "
            "for the next worker",
        )
        parser.add_argument(
            "--max-tasks", type=int, default=None,
            help="exit after taking this many tasks (run, or dead-lettered because they cannot run); "
            "it never takes more",
        )
        parser.add_argument(
            "--grace", type=float, default=30.0,
            help="seconds running tasks get to finish when the worker stops (default: %(default)s)",
        )
        parser.add_argument("--worker-id", default=None, help="the worker's name in VTASKS.GET and worker_ids")
        parser.add_argument(
            "--metrics-port", type=int, default=None,
            help="serve Prometheus metrics of the worker and of its queues on this port (needs prometheus-client; "
            "with --processes N, process i serves on PORT+i-1)",
        )
        parser.add_argument(
            "--metrics-addr", default="0.0.0.0", help="the address --metrics-port listens on (default: %(default)s)"
        )
        parser.add_argument(
            "--health-file", default=None,
            help="a file touched every second while the worker runs and reaches Valkey, deleted when it stops "
            "(for a liveness probe; with --processes N, process i touches PATH.i)",
        )
        parser.add_argument(
            "--processes", type=int, default=1,
            help="worker processes to run, each with these options (its own --concurrency and --max-tasks; "
            "with --worker-id NAME they are named NAME.1 to NAME.N); one that dies is replaced "
            "(default: %(default)s)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not options["skip_checks"]:
            self.check_backends()
        alias = options["backend"]
        try:
            backend = task_backends[alias]
        except InvalidTaskBackend as exc:
            configured = ", ".join(repr(a) for a in task_backends.settings) or "none"
            raise CommandError(f"no task backend {alias!r} in settings.TASKS (configured: {configured})") from exc
        if not isinstance(backend, ValkeyTaskBackend):
            raise CommandError(f"task backend {alias!r} is not a ValkeyTaskBackend")
        queues = options["queues"] or backend.queue_order
        if not queues:
            raise CommandError(f"task backend {alias!r} names no QUEUES: give the queues to serve with --queue")
        unknown = set(queues) - backend.queues if backend.queues else set()
        if unknown:
            raise CommandError(f"queues not configured for backend {alias!r}: {sorted(unknown)}")
        for name in ("concurrency", "max_tasks", "processes"):
            if options[name] is not None and options[name] < 1:
                raise CommandError(f"--{name.replace('_', '-')} must be at least 1")
        if options["grace"] < 0:
            raise CommandError("--grace must not be negative")
        port = options["metrics_port"]
        if port is not None:
            if not 0 < port <= 65536 - options["processes"]:
                raise CommandError(
                    f"--metrics-port {port} is not a port (1-65535) for {options['processes']} processes"
                )
            try:
                import prometheus_client  # noqa: F401
            except ImportError as exc:
                raise CommandError(
                    "--metrics-port needs prometheus-client: pip install 'vtasks[prometheus]'"
                ) from exc
        verbosity = options["verbosity"]
        # -v 2: one DEBUG record per task on the vtasks.task logger.
        self._log_to_stderr(logging.DEBUG if verbosity > 1 else logging.INFO if verbosity > 0 else logging.WARNING)
        try:
            worker = make_worker(
                backend,
                queues=queues,
                concurrency=options["concurrency"],
                burst=options["burst"],
                max_tasks=options["max_tasks"],
                grace=options["grace"],
                consumer=options["worker_id"],
                health_file=options["health_file"],
            )
            engine = backend.client.engine
            check_worker_id(options["worker_id"], options["processes"])
        except (ValueError, VtasksError) as exc:
            raise CommandError(str(exc)) from exc
        if options["processes"] > 1:
            # The worker above only checked the options: each process makes its own.
            self.stdout.write(
                f"vtasks: {options['processes']} worker processes: queues {queues}, "
                f"concurrency {worker.concurrency} each, {engine} engine"
            )
            self.stdout.flush()
            try:
                status = run_processes(options)
            except ValueError as exc:
                raise CommandError(str(exc)) from exc
            if status:
                raise CommandError("a worker process did not stop cleanly (see the log)")
            return
        self.stdout.write(
            f"vtasks worker {worker.consumer}: queues {queues}, concurrency {worker.concurrency}, {engine} engine"
        )
        self._apply_schedules(backend)
        metrics = self._serve_metrics(backend, queues, worker, options) if port is not None else None
        try:
            asyncio.run(serve(worker))
        finally:
            if metrics is not None:
                metrics.shutdown()
                metrics.server_close()
        self.stdout.write(
            f"vtasks worker {worker.consumer} done: {worker.succeeded} succeeded, "
            f"{worker.failed} failed, {worker.dead_lettered} dead-lettered"
        )

    @staticmethod
    def _serve_metrics(backend: ValkeyTaskBackend, queues: list[str], worker: Any, options: dict[str, Any]) -> Any:
        """The metrics server of this worker process: its own metrics and
        its queues' (read from Valkey at each scrape)."""
        from ....metrics import QueueCollector, WorkerCollector
        from ....metrics import serve as serve_metrics

        client = backend.client
        try:
            return serve_metrics(
                options["metrics_port"], QueueCollector([(client, q) for q in queues]), WorkerCollector(worker),
                addr=options["metrics_addr"],
            )
        except OSError as exc:
            raise CommandError(f"--metrics-port {options['metrics_port']}: {exc}") from exc

    @staticmethod
    def _apply_schedules(backend: ValkeyTaskBackend) -> None:
        """The settings' SCHEDULES become the server's. A refused entry or
        a failure is logged; the worker runs on regardless."""
        if backend.schedule_settings is None:
            return
        from ...schedules import apply as apply_schedules

        log = logging.getLogger("vtasks.schedules")
        try:
            report, _refused = apply_schedules(backend)
        except (ValueError, VtasksError) as exc:
            log.error("vtasks: the schedules were not applied: %s", exc)
            return
        if report.added or report.changed or report.removed:
            log.info("vtasks: schedules applied: %s", report)

    @staticmethod
    def _log_to_stderr(level: int) -> None:
        """The worker's log (``vtasks`` loggers) at ``level``, on stderr
        unless the project's LOGGING already sends it somewhere."""
        logger = logging.getLogger("vtasks")
        logger.setLevel(level)
        if not logger.hasHandlers():
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            logger.addHandler(handler)
