"""Enqueues over a connection the event loop owns.

The client's connection is driven by its Rust runtime on a thread of its
own, so an async call there crosses threads twice: the call out, and the
reply back through the bridge's socket. For the call producers make most,
an enqueue, each event loop opens a plain connection of its own, writes the
request the native layer encodes (the same command the client would send,
for the engine in use) and reads the replies itself; requests made in one
pass of the loop go out together, in writes of up to `FLUSH_AT`. A request
written while the loop has nothing else to do polls for its reply for a
moment (`SPIN_FOR`) before the loop sleeps, as blocking enqueues do.

Anything unusual goes to the client's connection, which handles it: a reply
that says so (a scripts library not loaded yet, a server that lost the
module), a connection that breaks or cannot be opened (enqueue is
idempotent by id, so sending one again is safe), and what this connection
never carries (TLS, enqueues that wait for replicas).
"""

from __future__ import annotations

import asyncio
import collections
import socket
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from . import _native

if TYPE_CHECKING:
    from .client import Client

# After a failure to connect, the client's connection carries enqueues for
# this long before the loop tries again.
RETRY_CONNECT_AFTER = 1.0

# Requests made while others are in flight wait for the end of the loop's
# pass, so that they go out in one write, but no more than this many: with
# 100 producers, the server would otherwise idle while the loop prepares a
# whole pass's worth and the loop idle while the server answers it. Written
# in runs of this size, the two work at the same time (measured: 100
# producers, 43k tasks/s written once per pass, 55k in runs of 16 to 32).
FLUSH_AT = 32

# A request written while the loop has nothing else ready polls for its
# reply for up to SPIN_FOR seconds instead of letting the loop sleep in its
# selector: waking from that sleep costs more than the round trip to a
# Valkey on the same host on virtual machines (`wire.rs` in the client crate
# gives the figures). After a reply that took longer, SPIN_PAUSE enqueues
# go without polling, so a server further away costs one poll in that many.
SPIN_FOR = _native.SPIN_FOR
SPIN_PAUSE = _native.SPIN_PAUSE

Fallback = Callable[[], Awaitable[list[bool]]]


class _Pending:
    __slots__ = ("future", "count", "fallback")

    def __init__(self, future: asyncio.Future[list[bool]], count: int, fallback: Fallback) -> None:
        self.future, self.count, self.fallback = future, count, fallback


class OwnConnection(asyncio.Protocol):
    """One event loop's connection for one client's enqueues."""

    def __init__(self, client: Client, loop: asyncio.AbstractEventLoop) -> None:
        self._client = client
        self._loop = loop
        self._reader = _native.ReplyReader()
        self._pending: collections.deque[_Pending] = collections.deque()
        self._outbox: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._connecting: asyncio.Future[None] | None = None
        self._handshake_left = 0
        self._handshaken: asyncio.Future[None] | None = None
        self._closed_until = 0.0
        # A second handle on the socket, for polling without the transport
        # (`_poll_for_reply`), and the enqueues left before polling again.
        self._poll_socket: socket.socket | None = None
        self._poll_skip = 0

    @classmethod
    def of(cls, client: Client) -> OwnConnection:
        loop = asyncio.get_running_loop()
        # A producer's next enqueue is most likely on the loop of its last:
        # found without the weak mapping.
        last: OwnConnection | None = client._own_last
        if last is not None and last._loop is loop:
            return last
        connections: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, OwnConnection] = client._own_connections
        connection = connections.get(loop)
        if connection is None:
            connection = connections[loop] = cls(client, loop)
        client._own_last = connection
        return connection

    def enqueue(self, request: bytes, count: int, fallback: Fallback) -> Awaitable[list[bool]]:
        """Sends an encoded enqueue of ``count`` tasks; per task, whether
        it was added. ``fallback`` sends the same enqueue through the
        client's connection. Once connected, what this returns is the
        reply's future itself, not a coroutine around it: a producer's
        ``await`` goes straight to it."""
        if self._transport is None:
            return self._connect_and_enqueue(request, count, fallback)
        return self._send(request, count, fallback)

    async def _connect_and_enqueue(self, request: bytes, count: int, fallback: Fallback) -> list[bool]:
        if self._transport is None and not await self._connect():
            return await fallback()
        return await self._send(request, count, fallback)

    def _send(self, request: bytes, count: int, fallback: Fallback) -> asyncio.Future[list[bool]]:
        future: asyncio.Future[list[bool]] = self._loop.create_future()
        idle = not self._pending
        self._pending.append(_Pending(future, count, fallback))
        if idle and self._transport is not None and not self._transport.is_closing():
            # Nothing in flight (a producer enqueueing one task after
            # another): out now, rather than a pass of the loop later.
            self._transport.write(request)
            self._poll_for_reply()
        else:
            # Requests made while others are in flight go out together at
            # the end of this pass of the loop, or as soon as FLUSH_AT wait.
            outbox = self._outbox
            outbox.append(request)
            if len(outbox) == 1:
                self._loop.call_soon(self._flush)
            elif len(outbox) >= FLUSH_AT:
                self._flush()
        return future

    def _poll_for_reply(self) -> None:
        """Reads the reply to the request just written, if it comes within
        ``SPIN_FOR`` and nothing else on the loop is ready to run: the
        producer's future is then done before it awaits it, and the loop
        does not sleep in its selector meanwhile. What comes is handed to
        ``data_received`` as the transport would hand it; anything after
        it (or all of it, past ``SPIN_FOR``) comes through the transport."""
        if self._poll_skip:
            self._poll_skip -= 1
            return
        transport = self._transport
        # `_ready` is where asyncio's own loops keep the callbacks due to
        # run; a loop without it (another implementation) is not polled.
        ready = getattr(self._loop, "_ready", None)
        if ready is None or ready or transport is None or transport.get_write_buffer_size():
            return
        poll_socket = self._poll_socket
        if poll_socket is None:
            try:
                poll_socket = self._poll_socket = transport.get_extra_info("socket").dup()
            except (AttributeError, OSError):
                self._poll_skip = SPIN_PAUSE
                return
        recv, clock = poll_socket.recv, time.perf_counter
        deadline = clock() + SPIN_FOR
        while True:
            try:
                data = recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                if clock() >= deadline:
                    self._poll_skip = SPIN_PAUSE
                    return
                continue
            except OSError:  # broken: the transport finds out for itself
                return
            if data:  # not the end of the stream, which the transport reads too
                self.data_received(data)
            return

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, []
        if not outbox:
            return
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(outbox))

    async def _connect(self) -> bool:
        if time.monotonic() < self._closed_until:
            return False
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        try:
            await asyncio.shield(self._connecting)
        except Exception:
            self._closed_until = time.monotonic() + RETRY_CONNECT_AFTER
            return False
        finally:
            self._connecting = None
        return self._transport is not None

    async def _open(self) -> None:
        native = self._client.native
        endpoint = native.own_connection_endpoint()
        if endpoint is None:
            # TLS or replica waits: this client's enqueues never come here.
            self._closed_until = float("inf")
            return
        kind, where, port = endpoint
        timeout = self._client._timeouts[0]
        if kind == "unix":
            opening = self._loop.create_unix_connection(lambda: self, where)
        else:
            opening = self._loop.create_connection(lambda: self, where, port)
        transport, _ = await asyncio.wait_for(opening, timeout)
        handshake, self._handshake_left = native.own_connection_handshake()
        if self._handshake_left:
            self._handshaken = self._loop.create_future()
            transport.write(handshake)
            try:
                await asyncio.wait_for(self._handshaken, timeout)
            except BaseException:
                transport.close()
                raise
        self._transport = transport  # type: ignore[assignment]

    # --- asyncio.Protocol -----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        try:
            while self._handshake_left and reader.next_handshake():
                self._handshake_left -= 1
                if not self._handshake_left and self._handshaken is not None:
                    self._handshaken.set_result(None)
            if self._handshake_left:
                return
            engine = self._client.native.engine
            while self._pending:
                head = self._pending[0]
                reply = reader.next_enqueue(head.count, engine)
                if reply is None:
                    return
                self._pending.popleft()
                ok, value = reply
                if ok is None:
                    self._send_through_client(head)
                elif not head.future.done():
                    if ok:
                        head.future.set_result(value)
                    else:
                        head.future.set_exception(value)
        except Exception as exc:  # an unreadable stream, or a refused handshake
            if self._handshaken is not None and not self._handshaken.done():
                self._handshaken.set_exception(exc)
            if self._transport is not None:
                self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._poll_socket is not None:
            # Until this handle closes too, the connection stays open.
            self._poll_socket.close()
            self._poll_socket = None
        self._reader = _native.ReplyReader()
        if self._handshaken is not None and not self._handshaken.done():
            self._handshaken.set_exception(ConnectionError("the connection closed during its handshake"))
        pending, self._pending = self._pending, collections.deque()
        self._outbox = []
        for item in pending:
            self._send_through_client(item)

    def _send_through_client(self, item: _Pending) -> None:
        if item.future.done():
            return
        try:
            sent = asyncio.ensure_future(item.fallback())
        except Exception as exc:  # refused before it was sent
            item.future.set_exception(exc)
            return

        def relay(done: asyncio.Future[list[bool]]) -> None:
            if item.future.done():
                if not done.cancelled():
                    done.exception()  # retrieved, so it is not reported as unhandled
                return
            if done.cancelled():
                item.future.cancel()
            elif done.exception() is not None:
                item.future.set_exception(done.exception())  # type: ignore[arg-type]
            else:
                item.future.set_result(done.result())

        sent.add_done_callback(relay)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def own_connections() -> weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any]:
    """A client's own connections, one per event loop."""
    return weakref.WeakKeyDictionary()
