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

    def stream(self, ticket: int, on_items: Callable[[list[Any]], None]) -> asyncio.Future[Any]:
        """The future of the operation that returned ``ticket``, which hands
        out lists of items before its result: they go to ``on_items`` (on
        the loop, in order). Lists that arrive together go as one: the
        worker's fetches come a few tasks at a time when tasks end one by
        one, and each call costs the worker a pass over its slots."""
        self._streams[ticket] = on_items
        future = self.wait(ticket)
        future.add_done_callback(lambda _: self._streams.pop(ticket, None))
        return future

    def _on_ready(self) -> None:
        # Items of one stream gathered since the last hand-over.
        gathered_for, gathered = 0, list[Any]()
        for ticket, ok, value, item in self.native.drain():
            if item:
                if ticket != gathered_for:
                    self._hand_over(gathered_for, gathered)
                    gathered_for, gathered = ticket, []
                gathered.extend(value)
                continue
            self._hand_over(gathered_for, gathered)
            gathered_for, gathered = 0, []
            future = self._futures.pop(ticket, None)
            if future is None or future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        self._hand_over(gathered_for, gathered)

    def _hand_over(self, ticket: int, items: list[Any]) -> None:
        if items:
            on_items = self._streams.get(ticket)
            if on_items is not None:
                on_items(items)
