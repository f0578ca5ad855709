"""A TCP proxy that adds latency: every chunk is delivered `delay` seconds
after it arrives, in each direction, without holding back the chunks behind
it (reading goes on while earlier chunks wait), so it adds latency, not a
bandwidth limit. Used by the benchmarks to put Valkey "2 ms away" on one
machine (no `tc netem` here).

    python -m benchmarks.latency_proxy --target 127.0.0.1:6379 --delay-ms 1
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import threading
import time
from typing import Self


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


class LatencyProxy(ThreadedProxy):
    """Listens on a free local port; forwards to ``target`` with ``delay``
    seconds added to each direction (so ``2 * delay`` to a round trip)."""

    thread_name = "latency-proxy"

    def __init__(self, target_host: str, target_port: int, delay: float) -> None:
        super().__init__()
        self.target = (target_host, target_port)
        self.delay = delay

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()

        def deliver(data: bytes) -> None:
            if not writer.is_closing():
                writer.write(data)

        def close() -> None:
            if not writer.is_closing():
                writer.close()

        try:
            while data := await reader.read(65536):
                loop.call_later(self.delay, deliver, data)
        except ConnectionError:
            pass
        loop.call_later(self.delay, close)

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        self._no_delay(client_writer, server_writer)
        await asyncio.gather(
            self._pipe(client_reader, server_writer),
            self._pipe(server_reader, client_writer),
        )

    def measured_rtt_ms(self, samples: int = 20) -> float:
        """Median round trip of a PING through the proxy, in ms."""
        times = []
        with socket.create_connection(("127.0.0.1", self.port)) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(samples):
                started = time.perf_counter()
                s.sendall(b"PING\r\n")
                reply = b""
                while not reply.endswith(b"\r\n"):
                    reply += s.recv(64)
                times.append((time.perf_counter() - started) * 1000)
        times.sort()
        return times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="host:port")
    parser.add_argument("--delay-ms", type=float, default=1.0, help="added to each direction")
    args = parser.parse_args()
    host, port = args.target.rsplit(":", 1)
    proxy = LatencyProxy(host, int(port), args.delay_ms / 1000).start()
    print(f"listening on 127.0.0.1:{proxy.port}, PING round trip {proxy.measured_rtt_ms():.2f} ms", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        proxy.stop()


if __name__ == "__main__":
    main()
