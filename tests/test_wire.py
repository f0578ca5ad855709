"""Enqueues over connections of their own (`vtasks._wire` for an event
loop, blocking ones for threads), and what goes through the client's
connection instead, against a real server on every target."""

from __future__ import annotations

import asyncio
import time

import pytest
import vtasks

from tests import sample_tasks
from tests.chaos.harness import command
from tests.conftest import TARGET


def test_async_enqueues_take_the_loops_own_connection_and_all_land(valkey):
    async def main() -> tuple[list[str], int]:
        client = vtasks.Client(valkey.url)
        first = await client.enqueue(sample_tasks.add, 0, 0)
        # 100 producers at once: their requests share the connection (one
        # write per pass of the loop or per FLUSH_AT requests, so more than
        # one write here) and each gets its own reply.
        ids = await asyncio.gather(*(client.enqueue(sample_tasks.add, n, n) for n in range(1, 101)))
        return [first, *ids], len(valkey.clients())

    ids, connections = asyncio.run(main())
    # The client's connection (opened to learn the engine) and the loop's.
    assert connections == 2
    client = vtasks.Client(valkey.url)
    assert client.stats_sync("default")["ready"] == 101
    for n, task_id in enumerate(ids):
        state = client.get_sync("default", task_id)
        assert state is not None and f'"args":[{n},{n}]'.encode() in state.payload


def test_an_async_enqueue_whose_reply_comes_after_the_poll_gets_it(valkey):
    # A producer on an idle loop polls for its reply for SPIN_FOR, then lets
    # the loop sleep until the reply comes; the SPIN_PAUSE enqueues after it
    # do not poll, and the one after those polls again.
    async def main() -> tuple[float, set[str], set[str]]:
        client = vtasks.Client(valkey.url)
        await client.enqueue(sample_tasks.add, 0, 0)
        before = {c["id"] for c in valkey.clients()}
        command(valkey.port, "CLIENT", "PAUSE", "300", "WRITE")
        started = time.monotonic()
        await client.enqueue_call(sample_tasks.add, (1, 1), id="late")
        waited = time.monotonic() - started
        for n in range(vtasks._native.SPIN_PAUSE + 2):
            await client.enqueue_call(sample_tasks.add, (2, n), id=f"after-{n}")
        return waited, before, {c["id"] for c in valkey.clients()}

    waited, before, after = asyncio.run(main())
    assert waited >= 0.2, "held by the pause"
    assert after == before, "on the loop's connection throughout"
    client = vtasks.Client(valkey.url)
    assert client.stats_sync("default")["ready"] == 2 + vtasks._native.SPIN_PAUSE + 2
    assert client.get_sync("default", "late") is not None


def test_a_refused_enqueue_raises_the_clients_exception(valkey):
    async def main() -> None:
        client = vtasks.Client(valkey.url)
        await client.enqueue(sample_tasks.add, 1, 1)
        command(valkey.port, "SET", "{billing}", "not a queue")
        with pytest.raises(vtasks.ServerError, match="WRONGTYPE"):
            await client.enqueue_call(sample_tasks.add, (1, 2), queue="billing")
        # The connection goes on.
        await client.enqueue(sample_tasks.add, 2, 2)

    asyncio.run(main())
    assert vtasks.Client(valkey.url).stats_sync("default")["ready"] == 2


def test_a_connection_that_breaks_loses_no_enqueue(valkey):
    async def main() -> int:
        client = vtasks.Client(valkey.url)
        await client.enqueue(sample_tasks.add, 0, 0)
        sent = 1
        for round_ in range(3):
            # Every client connection goes: the loop's own, and the client's.
            command(valkey.port, "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
            await asyncio.gather(*(client.enqueue_call(sample_tasks.add, (round_, n), id=f"r{round_}-{n}")
                                   for n in range(20)))
            sent += 20
        return sent

    sent = asyncio.run(main())
    assert vtasks.Client(valkey.url).stats_sync("default")["ready"] == sent


@pytest.mark.skipif(TARGET == "module", reason="the module has no function library to lose")
def test_a_lost_function_library_is_loaded_again_through_the_client(valkey):
    async def main() -> None:
        client = vtasks.Client(valkey.url)
        await client.enqueue(sample_tasks.add, 1, 1)
        command(valkey.port, "FUNCTION", "FLUSH")
        # "Function not found": nothing ran; the client loads the library
        # and sends it again.
        await client.enqueue(sample_tasks.add, 2, 2)
        await client.enqueue(sample_tasks.add, 3, 3)

    asyncio.run(main())
    assert vtasks.Client(valkey.url).stats_sync("default")["ready"] == 3


def test_a_password_and_a_database_number_apply_to_the_loops_connection(valkey):
    command(valkey.port, "ACL", "SETUSER", "producer", "on", ">secret", "~*", "+@all")
    url = f"valkey://producer:secret@127.0.0.1:{valkey.port}/3"

    async def main() -> str:
        client = vtasks.Client(url)
        return await client.enqueue(sample_tasks.add, 1, 2)

    task_id = asyncio.run(main())
    assert vtasks.Client(url).get_sync("default", task_id) is not None, "in database 3"
    assert vtasks.Client(valkey.url).get_sync("default", task_id) is None, "not in database 0"


def test_a_worker_keeps_to_its_two_connections_when_it_enqueues(valkey):
    # Enqueues through a worker's client share its connections.
    async def main() -> int:
        worker = vtasks.Worker(valkey.url, handle_signals=False, burst=True)
        await worker.client.enqueue(sample_tasks.add, 1, 1)
        worker.client.enqueue_sync(sample_tasks.add, 2, 2)
        return len(valkey.clients())

    assert asyncio.run(main()) == 1


def test_sync_enqueues_take_connections_of_their_own_up_to_four(valkey):
    import threading

    client = vtasks.Client(valkey.url)
    client.enqueue_sync(sample_tasks.add, 0, 0)
    assert len(valkey.clients()) == 2, "the client's connection and one blocking connection"
    ids: list[str] = []
    lock = threading.Lock()

    def produce(n: int) -> None:
        for k in range(25):
            task_id = client.enqueue_sync(sample_tasks.add, n, k)
            with lock:
                ids.append(task_id)

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(valkey.clients()) <= 1 + 4
    assert client.stats_sync("default")["ready"] == 1 + 16 * 25 == len(set(ids)) + 1


def test_a_broken_blocking_connection_loses_no_enqueue(valkey):
    client = vtasks.Client(valkey.url)
    client.enqueue_sync(sample_tasks.add, 0, 0)
    for round_ in range(3):
        command(valkey.port, "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        for n in range(5):
            client.enqueue_call_sync(sample_tasks.add, (round_, n), id=f"r{round_}-{n}")
    assert client.stats_sync("default")["ready"] == 16
    # The blocking connection was opened again.
    assert len(valkey.clients()) == 2


def test_a_sync_enqueue_whose_reply_comes_after_the_poll_gets_it(valkey):
    # As for the loop's connection: a poll of SPIN_FOR, then a sleep until
    # the reply comes, on the same connection.
    client = vtasks.Client(valkey.url)
    client.enqueue_sync(sample_tasks.add, 0, 0)
    before = {c["id"] for c in valkey.clients()}
    command(valkey.port, "CLIENT", "PAUSE", "300", "WRITE")
    started = time.monotonic()
    client.enqueue_call_sync(sample_tasks.add, (1, 1), id="late")
    assert time.monotonic() - started >= 0.2, "held by the pause"
    for n in range(vtasks._native.SPIN_PAUSE + 2):
        client.enqueue_call_sync(sample_tasks.add, (2, n), id=f"after-{n}")
    assert client.stats_sync("default")["ready"] == 2 + vtasks._native.SPIN_PAUSE + 2
    assert client.get_sync("default", "late") is not None
    # Neither the wait nor the enqueues after it took another connection.
    assert {c["id"] for c in valkey.clients()} == before


@pytest.mark.skipif(TARGET == "module", reason="the module has no function library to lose")
def test_a_lost_function_library_is_loaded_again_for_a_sync_enqueue(valkey):
    client = vtasks.Client(valkey.url)
    client.enqueue_sync(sample_tasks.add, 1, 1)
    command(valkey.port, "FUNCTION", "FLUSH")
    client.enqueue_sync(sample_tasks.add, 2, 2)
    client.enqueue_sync(sample_tasks.add, 3, 3)
    assert client.stats_sync("default")["ready"] == 3


def test_a_password_and_a_database_number_apply_to_blocking_connections(valkey):
    command(valkey.port, "ACL", "SETUSER", "producer", "on", ">secret", "~*", "+@all")
    url = f"valkey://producer:secret@127.0.0.1:{valkey.port}/3"
    task_id = vtasks.Client(url).enqueue_sync(sample_tasks.add, 1, 2)
    assert vtasks.Client(url).get_sync("default", task_id) is not None, "in database 3"
    assert vtasks.Client(valkey.url).get_sync("default", task_id) is None, "not in database 0"
