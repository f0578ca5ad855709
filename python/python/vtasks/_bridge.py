"""Resolves the asyncio futures of native operations.

Rust runs each operation on its own runtime and, when results are ready,
writes one byte to a socket this bridge watches with ``loop.add_reader``.
The callback then takes every finished result in one native call, so many
concurrent awaits cost one wake-up of the loop, not one each.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any

from . import _native

_bridges: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopBridge] = (
    weakref.WeakKeyDictionary()
)


class LoopBridge:
    """One per event loop; create it with :meth:`current`."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.native = _native.Bridge()
        self._loop = loop
        self._futures: dict[int, asyncio.Future[Any]] = {}
        # Tickets that hand out items before their result: the callback
        # each item goes to.
        self._streams: dict[int, Callable[[Any], None]] = {}
        loop.add_reader(self.native.fileno(), self._on_ready)

    @classmethod
    def current(cls) -> LoopBridge:
        loop = asyncio.get_running_loop()
        bridge = _bridges.get(loop)
        if bridge is None:
            bridge = _bridges[loop] = cls(loop)
        return bridge

    def wait(self, ticket: int) -> asyncio.Future[Any]:
        """The future of the operation that returned ``ticket``."""
        future = self._loop.create_future()
        self._futures[ticket] = future
        return future

    def stream(self, ticket: int, on_item: Callable[[Any], None]) -> asyncio.Future[Any]:
        """The future of the operation that returned ``ticket``; each item
        it hands out before its result goes to ``on_item`` (on the loop,
        in order)."""
        self._streams[ticket] = on_item
        future = self.wait(ticket)
        future.add_done_callback(lambda _: self._streams.pop(ticket, None))
        return future

    def _on_ready(self) -> None:
        for ticket, ok, value, item in self.native.drain():
            if item:
                on_item = self._streams.get(ticket)
                if on_item is not None:
                    on_item(value)
                continue
            future = self._futures.pop(ticket, None)
            if future is None or future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
