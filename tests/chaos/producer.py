"""A producer that enqueues tasks one call at a time with ids of its own,
repeating a call that failed (ENQUEUE is idempotent by id), and remembers
which enqueues the server acknowledged and when."""

from __future__ import annotations

import threading
import time

import vtasks
from vtasks.payloads import encode_call


class Producer(threading.Thread):
    def __init__(
        self, client: vtasks.Client, count: int, seconds: float = 0.001, pace: float = 0.0, batch: int = 1
    ) -> None:
        super().__init__(name="producer", daemon=True)
        self.client, self.count, self.seconds, self.pace, self.batch = client, count, seconds, pace, batch
        self.acked: dict[int, float] = {}  # task number -> when acknowledged
        self.errors: list[tuple[float, str]] = []
        self.stopping = False

    def run(self) -> None:
        for first in range(0, self.count, self.batch):
            numbers = range(first, min(first + self.batch, self.count))
            items = [
                (f"t{n}", encode_call("chaos.work", (n, self.seconds), {}), 0, None, None, 100) for n in numbers
            ]
            while not self.stopping:
                try:
                    self.client.native.enqueue(None, "default", items, None, False, 100)
                except vtasks.VtasksError as exc:
                    self.errors.append((time.time(), f"{type(exc).__name__}: {exc}"))
                    time.sleep(0.02)
                    continue
                at = time.time()
                for n in numbers:
                    self.acked[n] = at
                break
            if self.pace:
                time.sleep(self.pace)

    def first_ack_after(self, at: float) -> float | None:
        later = [t for t in self.acked.values() if t > at]
        return min(later) if later else None
