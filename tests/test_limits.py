"""The Python package validates with the engines' own limits and defaults
(``vtasks.limits``, from the native extension's ``LIMITS``), and the server
under test (module or scripts engine, per VTASKS_TARGET) agrees with it at
each boundary."""

from __future__ import annotations

import django.tasks.base
import pytest
import vtasks
from django.core.exceptions import ImproperlyConfigured
from django.tasks import task_backends
from django.tasks.exceptions import InvalidTask
from vtasks import _native, limits
from vtasks.django.backend import ValkeyTaskBackend

from tests import sample_tasks
from tests.django_project import tasks as django_tasks
from tests.test_django import point_tasks_at


def test_the_constants_are_the_native_extensions():
    assert dict(limits.LIMITS) == _native.LIMITS
    assert limits.MAX_PAYLOAD == 16 * 1024 * 1024
    assert limits.MAX_ERROR_TEXT == 64 * 1024
    assert limits.DEFAULT_LEASE == _native.LIMITS["DEFAULT_LEASE_MS"] / 1000
    with pytest.raises(TypeError):
        limits.LIMITS["MAX_PRIORITY"] = 1  # type: ignore[index]
    # Django's own priority range is the protocol's.
    assert (django.tasks.base.TASK_MIN_PRIORITY, django.tasks.base.TASK_MAX_PRIORITY) == (
        limits.MIN_PRIORITY,
        limits.MAX_PRIORITY,
    )


def test_the_client_accepts_what_the_server_accepts_and_refuses_the_rest_before_sending(valkey):
    client = vtasks.Client(valkey.url)
    for priority in (limits.MIN_PRIORITY, limits.MAX_PRIORITY):
        task_id = client.enqueue_call_sync(sample_tasks.add, (1, 2), priority=priority)
        assert client.get_sync("default", task_id).priority == priority
    for attempts in (1, limits.MAX_ATTEMPTS):
        task_id = client.enqueue_call_sync(sample_tasks.add, (1, 2), max_attempts=attempts)
        assert client.get_sync("default", task_id).max_attempts == attempts
    for lost in (1, limits.MAX_LOST_LEASES):
        task_id = client.enqueue_call_sync(sample_tasks.add, (1, 2), max_lost_leases=lost)
        assert client.get_sync("default", task_id).max_lost_leases == lost
    before = client.stats_sync("default")["enqueued"]
    priority_range = rf"priority must be an integer in {limits.MIN_PRIORITY}\.\.{limits.MAX_PRIORITY}"
    for priority in (limits.MIN_PRIORITY - 1, limits.MAX_PRIORITY + 1, True, 1.0):
        with pytest.raises(ValueError, match=priority_range):
            client.enqueue_call_sync(sample_tasks.add, (1, 2), priority=priority)  # type: ignore[arg-type]
    for attempts in (0, limits.MAX_ATTEMPTS + 1):
        with pytest.raises(ValueError, match=rf"max_attempts must be an integer in 1\.\.{limits.MAX_ATTEMPTS}"):
            client.enqueue_call_sync(sample_tasks.add, (1, 2), max_attempts=attempts)
    for lost in (0, limits.MAX_LOST_LEASES + 1):
        with pytest.raises(ValueError, match=rf"max_lost_leases must be an integer in 1\.\.{limits.MAX_LOST_LEASES}"):
            client.enqueue_call_sync(sample_tasks.add, (1, 2), max_lost_leases=lost)
    assert client.stats_sync("default")["enqueued"] == before, "nothing refused reached the server"
    # Past the client's checks the server refuses the same values.
    with pytest.raises(vtasks.InvalidArgument, match="priority"):
        client.enqueue_payload_sync("default", b"{}", id="p", priority=limits.MAX_PRIORITY + 1)
    with pytest.raises(vtasks.ServerError, match=f"ATTEMPTS must be between 1 and {limits.MAX_ATTEMPTS}"):
        client.enqueue_payload_sync("default", b"{}", id="a", max_attempts=limits.MAX_ATTEMPTS + 1)


def test_defaults_of_the_client_and_the_server_agree(valkey):
    client = vtasks.Client(valkey.url)
    # A task's own default (@vtasks.task) and the server's (no ATTEMPTS sent).
    task_id = client.enqueue_sync(sample_tasks.add, 1, 2)
    assert client.get_sync("default", task_id).max_attempts == limits.DEFAULT_MAX_ATTEMPTS
    client.enqueue_payload_sync("default", b"{}", id="raw")
    assert client.get_sync("default", "raw").max_attempts == limits.DEFAULT_MAX_ATTEMPTS
    worker = vtasks.Worker(client, handle_signals=False)
    assert (worker.lease, worker.retry_backoff, worker.max_backoff) == (
        limits.DEFAULT_LEASE,
        limits.DEFAULT_RETRY_BACKOFF,
        limits.DEFAULT_MAX_BACKOFF,
    )


def test_the_django_backend_validates_with_the_same_limits(valkey, settings):
    point_tasks_at(settings, valkey.url)
    backend = task_backends["default"]
    assert isinstance(backend, ValkeyTaskBackend)
    assert backend.max_attempts == limits.DJANGO_MAX_ATTEMPTS == 1
    assert backend.lease == limits.DEFAULT_LEASE
    assert backend.result_ttl == limits.DEFAULT_RESULT_TTL
    result = django_tasks.add.enqueue(1, 2)
    state = backend.client.get_sync("default", result.id.partition("@")[0])
    assert state.max_attempts == limits.DJANGO_MAX_ATTEMPTS
    most = django_tasks.add.options(max_attempts=limits.MAX_ATTEMPTS).enqueue(1, 2)  # type: ignore[attr-defined]
    assert backend.client.get_sync("default", most.id.partition("@")[0]).max_attempts == limits.MAX_ATTEMPTS
    for bad in (0, limits.MAX_ATTEMPTS + 1):
        with pytest.raises(InvalidTask, match=f"1..{limits.MAX_ATTEMPTS}"):
            django_tasks.add.options(max_attempts=bad).enqueue(1, 2)  # type: ignore[attr-defined]
    with pytest.raises(ImproperlyConfigured, match="MAX_ATTEMPTS must be an integer in"):
        ValkeyTaskBackend("bad", {"OPTIONS": {"URL": valkey.url, "MAX_ATTEMPTS": limits.MAX_ATTEMPTS + 1}})
