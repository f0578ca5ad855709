"""vtasks.Client against a real server (Valkey with the module, or per
VTASKS_TARGET one without it)."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys

import pytest
import vtasks

from tests import sample_tasks
from tests.chaos.harness import command, info


def test_sync_enqueue_get_stats(valkey):
    client = vtasks.Client(valkey.url)
    task_id = client.enqueue_sync(sample_tasks.add, 2, 3)
    state = client.get_sync("default", task_id)
    assert state is not None
    assert state.status == "ready"
    assert state.attempts == 0
    assert state.max_attempts == 3
    assert state.enqueued_at <= dt.datetime.now(dt.UTC)
    assert client.stats_sync("default")["ready"] == 1
    assert client.get_sync("default", "no-such-task") is None


def test_async_enqueue_with_options_and_idempotent_ids(valkey):
    async def main():
        client = vtasks.Client(valkey.url)
        first = await client.enqueue_call(sample_tasks.add, (1, 2), id="fixed", priority=10, queue="other")
        again = await client.enqueue_call(sample_tasks.add, (9, 9), id="fixed", queue="other")
        assert first == again == "fixed"
        state = await client.get("other", "fixed")
        assert state.priority == 10
        assert b'"args":[1,2]' in state.payload, "the first enqueue wins"
        later = await client.enqueue_call(sample_tasks.add, (1, 1), delay=60)
        assert (await client.get("default", later)).status == "delayed"
        at = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        scheduled = await client.enqueue_call(sample_tasks.add, (1, 1), run_at=at)
        state = await client.get("default", scheduled)
        assert abs((state.run_at - at).total_seconds()) < 0.01
        stats = await client.stats("default")
        assert stats["delayed"] == 2

    asyncio.run(main())


def test_concurrent_awaits_share_one_connection(valkey):
    async def main():
        client = vtasks.Client(valkey.url)
        ids = await asyncio.gather(*(client.enqueue(sample_tasks.add, i, i) for i in range(2000)))
        assert len(set(ids)) == 2000
        assert (await client.stats("default"))["ready"] == 2000

    asyncio.run(main())


def test_bad_inputs_raise_clear_exceptions(valkey):
    client = vtasks.Client(valkey.url)
    with pytest.raises(TypeError, match="argument 0 of task tests.add is not JSON: an object is not a JSON type"):
        client.enqueue_sync(sample_tasks.add, object(), 1)
    with pytest.raises(TypeError, match=r"argument 'b' of task tests.add is not JSON at \[0\]\['k'\]: a set"):
        client.enqueue_sync(sample_tasks.add, 1, b=[{"k": {1, 2}}])
    with pytest.raises(TypeError, match=r"argument 1 .* dict key 1 is an int; JSON object keys are strings"):
        client.enqueue_sync(sample_tasks.add, 1, {1: "a"})
    with pytest.raises(ValueError, match="priority"):
        client.enqueue_call_sync(sample_tasks.add, (1, 2), priority=101)
    with pytest.raises(ValueError, match="negative"):
        client.enqueue_call_sync(sample_tasks.add, (1, 2), delay=-1)
    with pytest.raises(ValueError, match="timezone-aware"):
        client.enqueue_call_sync(sample_tasks.add, (1, 2), run_at=dt.datetime.now())
    with pytest.raises(vtasks.TaskNotRegistered):
        client.enqueue_sync(len, "x")
    with pytest.raises(vtasks.TaskNotRegistered):
        client.enqueue_sync("no.such.task")
    with pytest.raises(vtasks.InvalidArgument):
        client.enqueue_call_sync(sample_tasks.add, (1, 2), queue="bad queue")
    with pytest.raises(vtasks.NoSuchQueue):
        client.stats_sync("never-used")
    with pytest.raises(vtasks.InvalidArgument, match="URL"):
        vtasks.Client("http://localhost").enqueue_sync(sample_tasks.add, 1, 2)


def test_server_down_raises_connection_failed():
    with socket_port() as port:
        client = vtasks.Client(f"valkey://127.0.0.1:{port}", connect_timeout=0.5)
        with pytest.raises(vtasks.ConnectionFailed, match=f"nothing accepts connections at 127.0.0.1:{port}"):
            client.enqueue_sync(sample_tasks.add, 1, 2)


def connections_received(port: int) -> int:
    return int(info(port, "stats")["total_connections_received"])


def test_a_connection_that_cannot_work_fails_at_its_first_attempt(valkey):
    """A wrong password or a database the server lacks is not retried with
    backoff (which took about 4.7 s): one connection attempt, a clear error."""
    command(valkey.port, "ACL", "SETUSER", "app", "on", ">right", "~*", "+@all")
    cases = [
        (f"valkey://app:wrong@127.0.0.1:{valkey.port}", "refused the user name or password"),
        (f"valkey://app:right@127.0.0.1:{valkey.port}/99", "has no database 99"),
    ]
    for url, reason in cases:
        before = connections_received(valkey.port)
        with pytest.raises(vtasks.ConnectionFailed, match=reason) as raised:
            vtasks.Client(url).stats_sync("default")
        # The counter also counts the INFO connection that reads it.
        assert connections_received(valkey.port) - before == 2, "one attempt, not retried"
        assert "right" not in str(raised.value) and "wrong" not in str(raised.value), "no password in the error"
    client = vtasks.Client(f"valkey://app:right@127.0.0.1:{valkey.port}/1")
    assert client.enqueue_sync(sample_tasks.add, 1, 2)


class socket_port:
    """A port nothing listens on."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self.sock.close()


def test_queue_administration_sync_and_async(valkey):
    client = vtasks.Client(valkey.url)
    waiting = client.enqueue_sync(sample_tasks.add, 1, 2)
    doomed = client.enqueue_call_sync(sample_tasks.boom, (1,), max_attempts=1)
    assert client.cancel_sync("default", [waiting, "unknown"]) == [True, False]
    client.pause_sync("default")
    assert client.stats_sync("default")["paused"] == 1
    burst = vtasks.Worker(client, burst=True, handle_signals=False)
    asyncio.run(burst.run())
    assert burst.succeeded + burst.failed == 0, "a paused queue hands out nothing"
    client.resume_sync("default")
    asyncio.run(vtasks.Worker(client, burst=True, handle_signals=False).run())
    dead = client.dead_letters_sync("default")
    assert [d[0] for d in dead] == [doomed]

    async def main():
        assert await client.requeue_dead("default", [doomed]) == 1
        assert (await client.get("default", doomed)).status == "ready"
        await client.pause("default")
        await client.resume("default")
        assert await client.cancel("default", [doomed]) == [True]
        assert await client.purge_dead("default") == 0

    asyncio.run(main())


def test_clear_queue_deletes_waiting_tasks_sync_and_async(valkey):
    client = vtasks.Client(valkey.url)
    with pytest.raises(vtasks.NoSuchQueue):
        client.clear_queue_sync("default")
    ready = [client.enqueue_sync(sample_tasks.add, i, i) for i in range(3)]
    later = client.enqueue_call_sync(sample_tasks.add, (1, 1), delay=3600)
    assert client.clear_queue_sync("default") == 4
    assert client.clear_queue_sync("default") == 0
    assert [client.get_sync("default", id) for id in [*ready, later]] == [None] * 4
    stats = client.stats_sync("default")
    assert (stats["ready"], stats["delayed"], stats["cancelled"]) == (0, 0, 4)
    # The id of a cleared task is free again, as a cancelled one's.
    assert client.enqueue_call_sync(sample_tasks.add, (1, 1), id=later) == later

    async def main():
        await client.enqueue(sample_tasks.add, 2, 2)
        assert await client.clear_queue("default") == 2
        assert await client.clear_queue("default") == 0

    asyncio.run(main())


def test_unix_socket_urls(tmp_path):
    from tests.conftest import ValkeyServer

    sock = tmp_path / "valkey.sock"
    server = ValkeyServer(["--unixsocket", str(sock), "--unixsocketperm", "700"])
    try:
        client = vtasks.Client(f"unix://{sock}")
        task_id = client.enqueue_sync(sample_tasks.add, 1, 2)
        assert client.get_sync("default", task_id).status == "ready"
    finally:
        server.close()


def test_engine_selection_and_the_module_requirement(caplog):
    from tests.conftest import ValkeyServer

    with pytest.raises(ValueError, match="engine"):
        vtasks.Client("valkey://127.0.0.1:1", engine="fast")
    with_module, plain = ValkeyServer(with_module=True), ValkeyServer(with_module=False)
    try:
        with caplog.at_level("INFO", logger="vtasks"):
            assert vtasks.Client(with_module.url).engine == "module"
        assert "module engine" in caplog.text
        assert vtasks.Client(with_module.url, engine="scripts").engine == "scripts"
        assert vtasks.Client(plain.url).engine == "scripts"
        with pytest.raises(vtasks.ModuleNotLoaded, match="loadmodule"):
            vtasks.Client(plain.url, engine="module").stats_sync("default")
        # One queue is served by one engine at a time: a queue the module
        # holds as its own type is not the scripts engine's keyspace layout
        # (VTASKS.EXPORT writes it back as one, docs/PROTOCOL.md).
        module_client = vtasks.Client(with_module.url, engine="module")
        scripts_client = vtasks.Client(with_module.url, engine="scripts")
        task_id = module_client.enqueue_sync(sample_tasks.add, 1, 1)
        assert module_client.get_sync("default", task_id).status == "ready"
        with pytest.raises(Exception, match="WRONGTYPE"):
            scripts_client.stats_sync("default")
    finally:
        with_module.close()
        plain.close()


def test_native_exceptions_have_their_public_module_path(valkey):
    import pickle

    from django.utils.module_loading import import_string

    for name in vtasks.errors.__all__:
        cls = getattr(vtasks, name)
        assert cls.__module__ == "vtasks", cls
        assert import_string(f"{cls.__module__}.{cls.__qualname__}") is cls
    client = vtasks.Client(valkey.url)
    with pytest.raises(vtasks.NoSuchQueue) as raised:
        client.stats_sync("never-used")
    copy = pickle.loads(pickle.dumps(raised.value))
    assert (type(copy), str(copy), copy.code) == (vtasks.NoSuchQueue, str(raised.value), "NOQUEUE")


def test_task_ids_are_random_unique_and_not_shared_with_a_forked_child():
    from vtasks.client import new_task_id

    ids = [new_task_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    # The parent holds ids drawn but not handed out; a child forked then
    # must not hand out the same ones. Forked from a fresh interpreter: this
    # one has the runtime's threads.
    script = """
import os
from vtasks.client import new_task_id
new_task_id()
read_end, write_end = os.pipe()
pid = os.fork()
if pid == 0:
    os.write(write_end, "".join(new_task_id() for _ in range(8)).encode())
    os._exit(0)
os.close(write_end)
os.waitpid(pid, 0)
child = os.fdopen(read_end, "rb").read().decode()
print(child, "".join(new_task_id() for _ in range(8)))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    child, parent = out.split()
    child_ids = {child[i : i + 32] for i in range(0, len(child), 32)}
    parent_ids = {parent[i : i + 32] for i in range(0, len(parent), 32)}
    assert len(child_ids) == len(parent_ids) == 8
    assert not child_ids & parent_ids
