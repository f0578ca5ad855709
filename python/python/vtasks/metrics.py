"""Prometheus metrics of vtasks queues and workers (``pip install
vtasks[prometheus]``).

- `QueueCollector` reads ``VTASKS.STATS`` of each queue when scraped: the
  queue's state as gauges (``vtasks_queue_ready``, ...,
  ``vtasks_queue_oldest_ready_age_seconds``, ``vtasks_queue_paused``) and
  its totals as counters (``vtasks_queue_enqueued_total``, ...), labelled
  ``queue``. Every process that exports them reports the same values
  (they are the server's): aggregate with ``max by (queue)``.
- `WorkerCollector` reports one worker process: its running tasks, a
  histogram of task durations by task name and outcome, the sizes of its
  fetched batches, its round trips and the native core's other counters.

``serve(port, collectors)`` exposes them over HTTP, as ``runworker
--metrics-port`` does; Django projects include ``vtasks.django.urls`` for
the queue metrics of the web side.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from .client import Client
from .errors import NoSuchQueue, VtasksError
from .telemetry import Histogram, WorkerTelemetry

# VTASKS.STATS gauges: (field, metric name, help, scale to base units).
QUEUE_GAUGES: tuple[tuple[str, str, str, float], ...] = (
    ("ready", "vtasks_queue_ready", "Tasks ready to run.", 1),
    ("delayed", "vtasks_queue_delayed", "Tasks waiting for their time (run_after, a retry's backoff).", 1),
    ("leased", "vtasks_queue_leased", "Tasks leased to a worker (running, or fetched and about to run).", 1),
    ("dead", "vtasks_queue_dead", "Dead-lettered tasks.", 1),
    ("done", "vtasks_queue_done", "Finished tasks whose result is still kept.", 1),
    ("overdue_leases", "vtasks_queue_overdue_leases", "Leases past their deadline, not yet returned.", 1),
    ("blocked", "vtasks_queue_blocked_consumers", "Workers' fetches waiting on the queue.", 1),
    ("oldest_ready_age_ms", "vtasks_queue_oldest_ready_age_seconds",
     "How long the oldest ready task has been ready.", 0.001),
    ("paused", "vtasks_queue_paused", "1 when the queue is paused.", 1),
)
# VTASKS.STATS totals: (field, metric name without _total, help).
QUEUE_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("enqueued", "vtasks_queue_enqueued", "Tasks enqueued."),
    ("acked", "vtasks_queue_acked", "Tasks finished successfully."),
    ("failed", "vtasks_queue_failed", "Failed attempts (the task raised or timed out)."),
    ("retried", "vtasks_queue_retried", "Failed attempts that were scheduled to run again."),
    ("expired", "vtasks_queue_expired", "Leases lost: the worker running the task vanished or stopped renewing."),
    ("dead_lettered", "vtasks_queue_dead_lettered", "Tasks dead-lettered (out of attempts or lost leases)."),
    ("dead_lost", "vtasks_queue_dead_lost", "Tasks dead-lettered because their lost-lease budget was used up."),
    ("leases_cut", "vtasks_queue_leases_cut", "Leases cut to the grace because their connection closed."),
    ("released", "vtasks_queue_released", "Fetched tasks given back unstarted."),
    ("requeued", "vtasks_queue_requeued", "Dead letters put back in the queue."),
    ("cancelled", "vtasks_queue_cancelled", "Waiting tasks cancelled."),
    ("purged", "vtasks_queue_purged", "Dead letters deleted."),
    ("vanished", "vtasks_queue_vanished", "Tasks whose record was gone while their id was queued (eviction)."),
)
# The native worker core's counters: (field, metric name without _total, help).
WORKER_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("round_trips", "vtasks_worker_round_trips",
     "Commands the worker sent to Valkey (fetches, renewals, settlements)."),
    ("fetched", "vtasks_worker_fetched_tasks", "Tasks fetched."),
    ("stale", "vtasks_worker_stale_settlements",
     "Outcomes the server refused: the lease had expired and the task went to another worker."),
    ("lost_leases", "vtasks_worker_lost_leases", "Renewals that found the lease already lost."),
    ("released", "vtasks_worker_released_tasks", "Fetched tasks given back unstarted."),
    ("reconnects", "vtasks_worker_reconnects", "Connection failures survived."),
    ("server_full", "vtasks_worker_server_full", "Commands refused for lack of memory, retried."),
)


class QueueCollector(Collector):
    """The queues' metrics, read from the server at each scrape (one
    ``VTASKS.STATS`` per queue). ``sources`` gives ``(client, queue)``
    pairs, or is a callable returning them (read at each scrape). A queue
    never used reports zeros; ``vtasks_server_up`` is 0 when a read failed
    (that queue's samples are then missing)."""

    def __init__(self, sources: Iterable[tuple[Client, str]] | Callable[[], Iterable[tuple[Client, str]]]) -> None:
        self._sources = sources

    def describe(self) -> Iterable[Metric]:
        # Nothing at registration: describing would read the server.
        return []

    def collect(self) -> Iterator[Metric]:
        gauges = {field: GaugeMetricFamily(name, text, labels=["queue"]) for field, name, text, _ in QUEUE_GAUGES}
        counters = {field: CounterMetricFamily(name, text, labels=["queue"]) for field, name, text in QUEUE_COUNTERS}
        up = 1
        sources = self._sources() if callable(self._sources) else self._sources
        for client, queue in sources:
            try:
                stats = client.stats_sync(queue)
            except NoSuchQueue:
                stats = {}
            except VtasksError:
                up = 0
                continue
            for field, _, _, scale in QUEUE_GAUGES:
                gauges[field].add_metric([queue], stats.get(field, 0) * scale)
            for field, _, _ in QUEUE_COUNTERS:
                counters[field].add_metric([queue], stats.get(field, 0))
        yield GaugeMetricFamily("vtasks_server_up", "1 when every queue's statistics could be read.", value=up)
        yield from gauges.values()
        yield from counters.values()


class WorkerCollector(Collector):
    """One worker's metrics. Attaches a `WorkerTelemetry` to the worker
    (create it before the worker runs): each run that ends then costs a
    clock reading and an append; the histograms are built from them once
    per fetched batch and at each scrape."""

    def __init__(self, worker: Any) -> None:
        if worker.telemetry is None:
            worker.telemetry = WorkerTelemetry()
        self._worker = worker
        self._telemetry: WorkerTelemetry = worker.telemetry

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        worker = self._worker
        yield GaugeMetricFamily(
            "vtasks_worker_running_tasks", "Tasks the worker is running.", value=len(worker._running)
        )
        yield GaugeMetricFamily(
            "vtasks_worker_connected", "1 while the worker reaches Valkey.",
            value=0 if worker.connection == "lost" else 1,
        )
        durations, batches = self._telemetry.snapshot()
        family = HistogramMetricFamily(
            "vtasks_worker_task_duration_seconds", "How long tasks ran, by task and outcome.",
            labels=["task", "outcome"],
        )
        for (name, outcome), histogram in sorted(durations.items()):
            family.add_metric([name, outcome], _buckets(histogram), histogram.sum)
        yield family
        family = HistogramMetricFamily("vtasks_worker_fetch_batch_size", "Tasks per fetched batch.")
        family.add_metric([], _buckets(batches), batches.sum)
        yield family
        stats = worker.stats
        for field, name, text in WORKER_COUNTERS:
            yield CounterMetricFamily(name, text, value=stats.get(field, 0))


def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    """Cumulative buckets with their ``le`` labels, +Inf last."""
    out: list[tuple[str, float]] = []
    total = 0
    for bound, count in zip((*histogram.bounds, math.inf), histogram.counts, strict=True):
        total += count
        out.append(("+Inf" if bound == math.inf else _le(bound), total))
    return out


def _le(bound: float) -> str:
    return repr(float(bound))


def registry(*collectors: Collector, process: bool = True) -> CollectorRegistry:
    """A registry of ``collectors`` (and the process's CPU, memory and file
    descriptors, unless ``process`` is False)."""
    found = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        found.register(collector)
    if process:
        ProcessCollector(registry=found)
    return found


def serve(port: int, *collectors: Collector, addr: str = "0.0.0.0") -> Any:
    """Serves ``collectors`` at ``http://addr:port/`` (any path) from a
    daemon thread; returns the server (``shutdown()`` stops it)."""
    server, _thread = start_http_server(port, addr=addr, registry=registry(*collectors))
    return server
