"""What a worker measures of itself, for metrics (``vtasks.metrics``
exports it to Prometheus) without a cost per task beyond a clock reading
and an append.

A run that ends appends ``(task name, succeeded, seconds)`` to a deque,
and a fetched batch its size to another (thread-safe without a lock: task
threads and the event loop append to them); the worker folds what gathered
into histograms once a second, and a scrape folds the rest. Nothing here
depends on ``prometheus-client``.
"""

from __future__ import annotations

import bisect
import collections
import threading

# Upper bounds of the task duration buckets, in seconds (the last bucket,
# +Inf, is implied).
DURATION_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)
# Upper bounds of the fetched batch size buckets, in tasks.
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class Histogram:
    """Counts per bucket (not cumulative; the last is +Inf), their sum and
    their number."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        # A value equal to a bound belongs to that bound's bucket (le).
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def copy(self) -> Histogram:
        other = Histogram(self.bounds)
        other.counts, other.sum, other.count = list(self.counts), self.sum, self.count
        return other


class WorkerTelemetry:
    """A worker's own measurements: task durations by task name and
    outcome (``"succeeded"`` or ``"failed"``), and the sizes of the batches
    it fetched. Give it to ``Worker.telemetry`` before the worker runs."""

    def __init__(self) -> None:
        # Runs ended since the last fold: (task name, succeeded, seconds).
        self.ended: collections.deque[tuple[str, bool, float]] = collections.deque()
        # Sizes of the batches fetched since the last fold.
        self.batches: collections.deque[int] = collections.deque()
        self._lock = threading.Lock()
        self._durations: dict[tuple[str, str], Histogram] = {}
        self._batches = Histogram(BATCH_BUCKETS)

    def fold(self) -> None:
        """Folds the runs ended and the batches fetched since the last fold
        into the histograms (the worker does once a second)."""
        with self._lock:
            self._fold()

    def _fold(self) -> None:
        batches = self.batches
        while True:
            try:
                size = batches.popleft()
            except IndexError:
                break
            self._batches.observe(size)
        ended = self.ended
        durations = self._durations
        while True:
            try:
                name, ok, seconds = ended.popleft()
            except IndexError:
                return
            key = (name, "succeeded" if ok else "failed")
            histogram = durations.get(key)
            if histogram is None:
                histogram = durations[key] = Histogram(DURATION_BUCKETS)
            histogram.observe(seconds)

    def snapshot(self) -> tuple[dict[tuple[str, str], Histogram], Histogram]:
        """Copies of the duration histograms (by task name and outcome) and
        of the batch size histogram, with every ended run folded in."""
        with self._lock:
            self._fold()
            return {k: h.copy() for k, h in self._durations.items()}, self._batches.copy()
