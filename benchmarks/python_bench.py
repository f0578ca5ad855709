"""The Python package's speed: enqueue and process rates with one worker
process at concurrency 200 against a local Valkey with the module, with
the module engine (default) or the scripts engine (``--engine scripts``),
and the server CPU each processed task cost.

    .venv/bin/python -m benchmarks.python_bench [--tasks 20000] [--runs 3]

Prints a Markdown table (and writes it with --markdown FILE)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import vtasks

from benchmarks import bench_tasks
from benchmarks.latency_proxy import LatencyProxy
from tests.conftest import ROOT, ValkeyServer


async def enqueue_sequential(client: vtasks.Client, task, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        await client.enqueue(task)
    return n / (time.perf_counter() - started)


async def enqueue_concurrent(client: vtasks.Client, task, n: int, producers: int = 100) -> float:
    async def producer(count: int) -> None:
        for _ in range(count):
            await client.enqueue(task)

    started = time.perf_counter()
    await asyncio.gather(*(producer(n // producers) for _ in range(producers)))
    return (n // producers * producers) / (time.perf_counter() - started)


def info(url: str, section: str) -> dict[str, str]:
    """``INFO <section>`` as a dict, over a plain socket."""
    import socket

    host, port = url.rsplit("/", 1)[-1].split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(f"INFO {section}\r\n".encode())
        data = b""
        while b"\r\n" not in data:
            data += s.recv(65536)
        header, _, body = data.partition(b"\r\n")
        size = int(header[1:])
        while len(body) < size:
            body += s.recv(65536)
    return dict(line.split(":", 1) for line in body[:size].decode().splitlines() if ":" in line)


def connected_clients(client: vtasks.Client) -> int:
    return int(info(client.url, "clients")["connected_clients"])


def server_cpu_s(url: str) -> float:
    cpu = info(url, "cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def process(url: str, client: vtasks.Client, concurrency: int, engine: str) -> dict:
    baseline = connected_clients(client)
    peak = [0]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], connected_clients(client) - baseline)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.python_worker", url, str(concurrency), engine],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    done.set()
    watcher.join()
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["connections"] = peak[0]
    return result


def median_range(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}–{max(values):,.0f})"


def main() -> None:
    # Measure the build users run: the release module (tests use debug).
    os.environ.setdefault("VTASKS_MODULE", str(ROOT / "target" / "release" / "libvtasks.so"))
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--markdown")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to each direction by a proxy")
    parser.add_argument("--engine", choices=["module", "scripts"], default="module")
    args = parser.parse_args()
    rows = []
    for name, task in [("no-op", bench_tasks.noop), ("sleep 10 ms", bench_tasks.sleep10)]:
        seq, conc, rates, rss, conns, first, cpu = [], [], [], [], [], [], []
        for _ in range(args.runs):
            server = ValkeyServer()
            proxy = None
            try:
                url = server.url
                if args.latency_ms:
                    proxy = LatencyProxy("127.0.0.1", server.port, args.latency_ms / 1000).start()
                    url = f"valkey://127.0.0.1:{proxy.port}"
                    print(f"  round trip through the proxy: {proxy.measured_rtt_ms():.2f} ms", flush=True)
                client = vtasks.Client(url, engine=args.engine)
                seq.append(asyncio.run(enqueue_sequential(client, task, min(args.tasks, 5_000))))
                conc.append(asyncio.run(enqueue_concurrent(client, task, args.tasks)))
                total = client.stats_sync("default")["ready"]
                cpu_before = server_cpu_s(server.url)
                result = process(url, client, args.concurrency, args.engine)
                cpu.append((server_cpu_s(server.url) - cpu_before) * 1e6 / max(1, result["done"]))
                assert result["done"] == total, result
                rates.append(result["done"] / result["elapsed_s"])
                rss.append(result["peak_rss_mb"])
                conns.append(result["connections"])
                first.append(result["first_task_s"] * 1000)
            finally:
                if proxy is not None:
                    proxy.stop()
                server.close()
        rows.append(
            f"| {name} | {total:,} | {median_range(seq)} | {median_range(conc)} | {median_range(rates)} "
            f"| {statistics.median(rss):.0f} | {max(conns)} | {statistics.median(first):.0f} "
            f"| {statistics.median(cpu):.1f} |"
        )
        print(rows[-1], flush=True)
    table = (
        f"Engine: {args.engine}\n\n"
        "| Task | Tasks processed | Enqueue/s sequential | Enqueue/s 100 producers | Process/s "
        "| Peak RSS MB | Valkey conns | First task ms | Server CPU µs/task (processing) |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
        + "\n".join(rows) + "\n"
    )
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
