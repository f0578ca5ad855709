"""The benchmarks' latency proxy adds the latency it claims and nothing else."""

from __future__ import annotations

import vtasks

from benchmarks.latency_proxy import LatencyProxy
from tests import sample_tasks


def test_the_proxy_adds_its_delay_to_each_direction(valkey):
    direct = LatencyProxy("127.0.0.1", valkey.port, 0.0, profile="debug").start()
    delayed = LatencyProxy("127.0.0.1", valkey.port, 0.001, profile="debug").start()
    try:
        assert direct.measured_rtt_ms() < 1.5
        assert 2.0 <= delayed.measured_rtt_ms() < 6.0, "1 ms each way"
        client = vtasks.Client(f"valkey://127.0.0.1:{delayed.port}")
        task_id = client.enqueue_sync(sample_tasks.add, 1, 2)
        assert client.get_sync("default", task_id).status == "ready"
    finally:
        direct.stop()
        delayed.stop()
