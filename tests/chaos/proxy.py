"""A TCP proxy that misbehaves on demand, between vtasks and Valkey (this
kernel has no ``tc netem``):

- ``delay``: seconds added to each direction (a latency spike while set);
- ``pause()``/``resume()``: hold every byte in flight, then deliver it, as
  a network partition that heals before TCP gives up looks to both ends;
- ``cut()``/``heal()``: close every connection and refuse new ones;
- ``switch(port)``: send new connections elsewhere and close the old ones,
  as a virtual IP or DNS name moving to a promoted replica.

Order is kept within each direction whatever the delay does."""

from __future__ import annotations

import asyncio
import threading
import time

from benchmarks.latency_proxy import ThreadedProxy


class ChaosProxy(ThreadedProxy):
    thread_name = "chaos-proxy"

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        super().__init__()
        self.host, self.target_port = host, target_port
        self.delay = 0.0
        self.refusing = False
        self._flowing: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # Controls, callable from any thread.

    def pause(self) -> None:
        self._call(lambda: self._flowing and self._flowing.clear())

    def resume(self) -> None:
        self._call(lambda: self._flowing and self._flowing.set())

    def cut(self) -> None:
        def close_all() -> None:
            self.refusing = True
            self._close_all()

        self._call(close_all)

    def heal(self) -> None:
        self._call(lambda: setattr(self, "refusing", False))

    def switch(self, target_port: int) -> None:
        def move() -> None:
            self.target_port = target_port
            self._close_all()

        self._call(move)

    def _call(self, fn) -> None:  # type: ignore[no-untyped-def]
        assert self._loop is not None
        done = threading.Event()

        def run() -> None:
            fn()
            done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(5)

    def _close_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    # The proxy itself.

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chunks: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

        async def read() -> None:
            try:
                while data := await reader.read(65536):
                    chunks.put_nowait((time.monotonic() + self.delay, data))
            except ConnectionError:
                pass
            chunks.put_nowait(None)

        async def write() -> None:
            last = 0.0
            assert self._flowing is not None
            while (item := await chunks.get()) is not None:
                due, data = item
                last = max(last, due)
                wait = last - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._flowing.wait()
                if writer.is_closing():
                    return
                writer.write(data)
            if not writer.is_closing():
                writer.close()

        await asyncio.gather(read(), write())

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            client_writer.transport.abort()
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(self.host, self.target_port)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers.update((client_writer, server_writer))
        self._no_delay(client_writer, server_writer)
        try:
            await asyncio.gather(
                self._pipe(client_reader, server_writer), self._pipe(server_reader, client_writer)
            )
        finally:
            for w in (client_writer, server_writer):
                self._writers.discard(w)
                w.transport.abort()

    def _on_loop(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()

    def _on_stop(self) -> None:
        self._close_all()
