"""A Valkey user limited to one queue's keys and the commands vtasks needs
(the module's `@vtasks` category, or `FCALL` for the scripts engine) can
enqueue to and work that queue, and nothing else."""

from __future__ import annotations

import asyncio

import pytest
import vtasks

from tests import sample_tasks
from tests.chaos.harness import command
from tests.conftest import TARGET

# What a producer and a worker need besides the queue's keys; README's
# "Engines" section lists the same.
COMMON = ["+ping", "+command|info", "+client|id", "+client|unblock"]
# The scripts engine's functions run as the calling user: it needs the data
# commands the library calls, on its queue's keys only.
SCRIPTS_RULES = ["+fcall", "+fcall_ro", "+function|load", "+blpop", "+time"] + [
    f"+{name}" for name in ("del exists type pexpireat hget hmget hset hincrby rpush zadd zcard zcount "
                            "llen zpopmin zrange zrangebyscore zrem zremrangebyscore zscore").split()
]
ENGINE_RULES = ["+@vtasks"] if TARGET == "module" else SCRIPTS_RULES


def test_a_user_limited_to_one_queue_can_use_that_queue_only(valkey):
    command(valkey.port, "ACL", "SETUSER", "mailer", "on", ">secret", "resetchannels", "~{emails}*",
            *ENGINE_RULES, *COMMON)
    client = vtasks.Client(f"valkey://mailer:secret@127.0.0.1:{valkey.port}")
    task_id = client.enqueue_call_sync(sample_tasks.add, (2, 3), {}, queue="emails")
    worker = vtasks.Worker(client, queues=["emails"], burst=True, handle_signals=False)
    asyncio.run(worker.run())
    assert worker.succeeded == 1
    state = client.get_sync("emails", task_id)
    assert state is not None and (state.status, state.result) == ("done", 5)

    for refused in (
        lambda: client.enqueue_call_sync(sample_tasks.add, (1, 1), {}, queue="billing"),
        lambda: client.stats_sync("billing"),
        lambda: client.get_sync("billing", "x"),
    ):
        with pytest.raises(vtasks.VtasksError, match="NOPERM|No permissions"):
            refused()
    assert command(valkey.port, "KEYS", "{billing}*") == [], "the refused calls wrote nothing"
