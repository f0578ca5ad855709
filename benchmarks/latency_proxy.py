"""Latency between the benchmarks and Valkey on one machine (no `tc netem`
here): `LatencyProxy` runs `benchmarks/src/bin/latency_proxy.rs`, a TCP
proxy that delivers every chunk a fixed delay after it arrives, in each
direction, without holding back the chunks behind it (latency, not a
bandwidth limit), with delivery threads that sleep until each chunk's due
time at a 1 ns timer slack. `ThreadedProxy` is the asyncio base of the
fault suite's proxy (`tests/chaos/proxy.py`).

    python -m benchmarks.latency_proxy --target 127.0.0.1:6379 [--delay-ms 1] [--samples 2000]

starts the proxy and prints the distribution of PING round trips through it
and directly to the target.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Self

ROOT = Path(__file__).resolve().parent.parent


class ThreadedProxy:
    """An asyncio TCP server on a thread of its own, listening on a free
    local port (``port``); a subclass forwards each connection in
    ``_handle``. ``start`` returns once it listens; ``stop`` cancels every
    connection and ends the thread."""

    thread_name = "proxy"

    def __init__(self) -> None:
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def _on_loop(self) -> None:
        """Runs on the proxy's loop before it listens."""

    def _on_stop(self) -> None:
        """Runs on the proxy's loop as it stops, before connections are cancelled."""

    @staticmethod
    def _no_delay(*writers: asyncio.StreamWriter) -> None:
        for writer in writers:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def start(self) -> Self:
        """Runs the proxy on a thread of its own; returns once it listens."""
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._on_loop()
            self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name=self.thread_name, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return

        async def shutdown() -> None:
            server.close()
            self._on_stop()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        if self._thread is not None:
            self._thread.join(10)
            if not self._thread.is_alive():
                loop.close()


def proxy_binary(profile: str = "release") -> Path:
    """The proxy's executable, built (or found up to date) by cargo: the
    release build for the benchmarks, the debug build for the tests."""
    flags = ["--release"] if profile == "release" else []
    subprocess.run(["cargo", "build", "--quiet", *flags, "-p", "vtasks-benchmarks", "--bin", "latency_proxy"],
                   cwd=ROOT, check=True)
    return ROOT / "target" / profile / "latency_proxy"


class LatencyProxy:
    """Listens on a free local port (``port``) and forwards to the target
    with ``delay`` seconds added to each direction (so ``2 * delay`` to a
    round trip). ``start`` returns once it listens; ``stop`` ends it."""

    def __init__(self, target_host: str, target_port: int, delay: float, profile: str = "release") -> None:
        self.target = (target_host, target_port)
        self.delay = delay
        self.port = 0
        self._profile = profile
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> Self:
        host, port = self.target
        self._process = subprocess.Popen(
            [str(proxy_binary(self._profile)), "--target", f"{host}:{port}", "--delay-ms", f"{self.delay * 1000:g}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline()  # "listening on 127.0.0.1:PORT"
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"the latency proxy did not start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        assert process.stdin is not None
        process.stdin.close()  # it exits when its standard input closes
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def rtts_ms(self, samples: int = 20) -> list[float]:
        return ping_rtts_ms(self.port, samples)

    def measured_rtt_ms(self, samples: int = 20) -> float:
        """Median round trip of a PING through the proxy, in ms."""
        return statistics.median(self.rtts_ms(samples))


def ping_rtts_ms(port: int, samples: int) -> list[float]:
    """Round trips of ``samples`` PINGs, one at a time on one connection,
    to ``127.0.0.1:port``, in ms, as a Python client sees them."""
    times = []
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(samples):
            started = time.perf_counter()
            s.sendall(b"PING\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                reply += s.recv(64)
            times.append((time.perf_counter() - started) * 1000)
    return times


def distribution(times: list[float]) -> dict[str, float]:
    """min, median, p90, p99 and max of a sample, in its unit."""
    ordered = sorted(times)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    return {"min": ordered[0], "p50": statistics.median(ordered), "p90": pct(90), "p99": pct(99), "max": ordered[-1]}


def describe(times: list[float]) -> str:
    d = distribution(times)
    return f"median {d['p50']:.3f} ms, p90 {d['p90']:.3f}, p99 {d['p99']:.3f}, min {d['min']:.3f}, max {d['max']:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="host:port")
    parser.add_argument("--delay-ms", type=float, default=1.0, help="added to each direction")
    parser.add_argument("--samples", type=int, default=2000)
    args = parser.parse_args()
    host, port = args.target.rsplit(":", 1)
    proxy = LatencyProxy(host, int(port), args.delay_ms / 1000).start()
    try:
        print(f"listening on 127.0.0.1:{proxy.port}", flush=True)
        print(f"PING directly:     {describe(ping_rtts_ms(int(port), args.samples))}", flush=True)
        print(f"PING through it:   {describe(proxy.rtts_ms(args.samples))}", flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        proxy.stop()


if __name__ == "__main__":
    main()
