"""The vtasks admin pages with Django's test client, against a real
valkey-server: every page and action, its permissions, CSRF and paging."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Permission, User
from django.tasks import TaskResultStatus, task_backends
from django.test import Client as HttpClient
from django.urls import reverse
from vtasks.django import admin as vtasks_admin

from tests.django_project import tasks
from tests.test_django import point_tasks_at, run_worker_burst

pytestmark = pytest.mark.django_db


@pytest.fixture
def runs(tmp_path, monkeypatch):
    path = tmp_path / "runs.txt"
    path.touch()
    monkeypatch.setenv("VTASKS_TEST_RUNS", str(path))
    return path


@pytest.fixture
def django_valkey(valkey, settings):
    point_tasks_at(settings, valkey.url)
    return valkey


def staff(username: str, *perms: str) -> HttpClient:
    user = User.objects.create_user(username, password="pw", is_staff=True)
    for codename in perms:
        user.user_permissions.add(Permission.objects.get(content_type__app_label="vtasks", codename=codename))
    client = HttpClient()
    client.force_login(user)
    return client


@pytest.fixture
def viewer() -> HttpClient:
    return staff("viewer", "view_queue")


@pytest.fixture
def operator() -> HttpClient:
    return staff("operator", "view_queue", "change_queue")


def url(name: str, *args: str) -> str:
    return reverse(f"admin:vtasks_queue_{name}", args=args)


def stats(queue: str = "default") -> dict[str, int]:
    """The queue's STATS (zeros for a queue never used)."""
    from vtasks.django.ops import stats as read

    return read(task_backends["default"], queue)


def dead_letters(n: int) -> list[str]:
    ids = [tasks.fails.enqueue(i).id for i in range(n)]
    run_worker_burst(concurrency=1, prefetch=0)  # they die in order
    return [i.split("@")[0] for i in ids]


def messages_of(response) -> list[str]:  # type: ignore[no-untyped-def]
    return [str(m) for m in response.context["messages"]] if response.context else []


def test_the_app_has_no_table_and_two_permissions(django_valkey):
    from django.db import connection

    assert "vtasks_queue" not in connection.introspection.table_names()
    codenames = set(Permission.objects.filter(content_type__app_label="vtasks").values_list("codename", flat=True))
    assert codenames == {"view_queue", "change_queue"}


def test_the_admin_index_links_the_queue_page(django_valkey, admin_client):
    response = admin_client.get(reverse("admin:index"))
    assert url("changelist") in response.content.decode()


def test_the_queue_list_shows_counts_rates_and_state(django_valkey, runs, viewer):
    tasks.add.enqueue(1, 1)
    tasks.add.enqueue(2, 2)
    dead_letters(1)
    tasks.add.enqueue(3, 3)
    task_backends["default"].client.pause_sync("emails")
    response = viewer.get(url("changelist"))
    assert response.status_code == 200
    rows = {row.name: row for row in response.context["rows"]}
    assert set(rows) == {"default", "emails"}
    now = stats()
    shown = rows["default"].stats
    assert {k: v for k, v in shown.items() if k != "oldest_ready_age_ms"} == {
        k: v for k, v in now.items() if k != "oldest_ready_age_ms"
    }
    assert shown["oldest_ready_age_ms"] <= now["oldest_ready_age_ms"]
    assert rows["default"].stats["dead"] == 1 and rows["default"].stats["ready"] == 1
    assert rows["emails"].paused and not rows["default"].paused
    html = response.content.decode()
    assert 'data-queue="default"' in html and "paused" in html
    # A viewer gets no action buttons.
    assert "Pause" not in html and "Resume" not in html
    # The first reading has no rate; a later one has.
    assert rows["default"].enqueue_rate is None or rows["default"].rate_span > 0


def test_rates_come_from_two_readings():
    from vtasks.django.ops import RateSampler

    sampler = RateSampler(window=60)
    key = ("default", "q")
    assert sampler.rates(key, {"enqueued": 10, "acked": 0}, ("enqueued", "acked"), now=100.0) == (None, 0.0)
    rates, span = sampler.rates(key, {"enqueued": 30, "acked": 10}, ("enqueued", "acked"), now=110.0)
    assert (rates, span) == ({"enqueued": 2.0, "acked": 1.0}, 10.0)
    # Past the window the oldest reading is dropped: the one at 110 is the base.
    rates, span = sampler.rates(key, {"enqueued": 40, "acked": 10}, ("enqueued", "acked"), now=165.0)
    assert (rates, span) == ({"enqueued": pytest.approx(10 / 55), "acked": 0.0}, 55.0)
    # A counter that went down (the queue was deleted) starts again.
    assert sampler.rates(key, {"enqueued": 1, "acked": 0}, ("enqueued", "acked"), now=166.0) == (None, 0.0)


def test_pause_and_resume_need_the_change_permission_and_a_post(django_valkey, viewer, operator):
    assert viewer.post(url("pause", "default", "default")).status_code == 403
    assert stats()["paused"] == 0
    assert operator.get(url("pause", "default", "default")).status_code == 405
    response = operator.post(url("pause", "default", "default"), {"next": url("changelist")}, follow=True)
    assert response.redirect_chain[-1][0] == url("changelist")
    assert stats()["paused"] == 1
    assert any("Paused default" in m for m in messages_of(response))
    assert "Resume" in response.content.decode()
    response = operator.post(url("resume", "default", "default"), follow=True)
    assert stats()["paused"] == 0 and any("Resumed default" in m for m in messages_of(response))


def test_actions_need_the_csrf_token(django_valkey):
    user = User.objects.create_superuser("root", password="pw")
    client = HttpClient(enforce_csrf_checks=True)
    client.force_login(user)
    assert client.post(url("pause", "default", "default")).status_code == 403
    assert stats()["paused"] == 0
    tasks.add.enqueue(1, 1)
    assert client.post(url("clear", "default", "default")).status_code == 403
    assert stats()["ready"] == 1
    page = client.get(url("changelist"))
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode()).group(1)
    assert client.post(url("pause", "default", "default"), {"csrfmiddlewaretoken": token}).status_code == 302
    assert stats()["paused"] == 1


def test_no_page_without_the_view_permission(django_valkey):
    nobody = staff("nobody")
    for page in (url("changelist"), url("queue", "default", "default"), url("schedules")):
        assert nobody.get(page).status_code == 403
    anonymous = HttpClient()
    assert anonymous.get(url("changelist")).status_code == 302  # to the login page


def test_the_queue_page_pages_through_dead_letters_newest_first(django_valkey, runs, viewer, monkeypatch):
    monkeypatch.setattr(vtasks_admin, "DEAD_PER_PAGE", 2)
    ids = dead_letters(5)
    response = viewer.get(url("queue", "default", "default"))
    assert response.status_code == 200
    page = response.context["letters"]
    assert [letter.id for letter in page] == [ids[4], ids[3]]
    assert (response.context["page"], response.context["pages"]) == (1, 3)
    letter = page[0]
    assert letter.name == "tests.django_project.tasks.fails" and letter.attempts == 1 and letter.workers
    assert letter.error["exception_class"] == "builtins.ValueError" and letter.error["message"] == "failed 4"
    html = response.content.decode()
    assert "Traceback" in html and "failed 4" in html and "Retry selected" not in html
    last = viewer.get(url("queue", "default", "default") + "?p=3")
    assert [letter.id for letter in last.context["letters"]] == [ids[0]]
    assert viewer.get(url("queue", "default", "default") + "?p=99").context["page"] == 3
    assert viewer.get(url("queue", "default", "nowhere")).status_code == 404
    assert viewer.get(url("queue", "other", "default")).status_code == 404


def test_retry_one_selected_and_all(django_valkey, runs, operator):
    ids = dead_letters(4)
    response = operator.post(url("retry", "default", "default"), {"id": [ids[0]]}, follow=True)
    assert any("1 dead letter of default back in the queue" in m for m in messages_of(response))
    assert stats()["dead"] == 3 and stats()["ready"] == 1
    response = operator.post(url("retry", "default", "default"), {"id": [ids[1], ids[2]]}, follow=True)
    assert any("2 dead letters of default back" in m for m in messages_of(response))
    response = operator.post(url("retry", "default", "default"), {"id": [ids[1]]}, follow=True)
    assert any("no longer dead letters" in m for m in messages_of(response))
    response = operator.post(url("retry", "default", "default"), {}, follow=True)
    assert any("No dead letter was selected" in m for m in messages_of(response))
    response = operator.post(url("retry", "default", "default"), {"all": "1"}, follow=True)
    assert any("1 dead letter of default back" in m for m in messages_of(response))
    assert stats()["dead"] == 0 and stats()["ready"] == 4


def test_purge_selected_and_all(django_valkey, runs, operator, viewer):
    ids = dead_letters(3)
    assert viewer.post(url("purge", "default", "default"), {"all": "1"}).status_code == 403
    response = operator.post(url("purge", "default", "default"), {"id": [ids[0]]}, follow=True)
    assert any("1 dead letter of default purged" in m for m in messages_of(response))
    response = operator.post(url("purge", "default", "default"), {"all": "1"}, follow=True)
    assert any("2 dead letters of default purged" in m for m in messages_of(response))
    assert stats()["dead"] == 0 and stats()["purged"] == 3


def test_purge_waiting_tasks(django_valkey, runs, operator, viewer):
    dead_letters(1)
    for i in range(3):
        tasks.add.enqueue(i, i)
    page = viewer.get(url("queue", "default", "default")).content.decode()
    assert "vtasks-clear" not in page, "a viewer gets no purge button"
    page = operator.get(url("queue", "default", "default")).content.decode()
    assert 'value="Purge waiting tasks (3)"' in page
    assert viewer.post(url("clear", "default", "default")).status_code == 403
    assert operator.get(url("clear", "default", "default")).status_code == 405
    assert stats()["ready"] == 3
    response = operator.post(url("clear", "default", "default"), follow=True)
    assert any("3 waiting tasks purged from default." in m for m in messages_of(response))
    counts = stats()
    assert (counts["ready"], counts["dead"], counts["cancelled"]) == (0, 1, 3)
    assert "vtasks-clear" not in response.content.decode()
    response = operator.post(url("clear", "default", "default"), follow=True)
    assert any("default had no waiting tasks." in m for m in messages_of(response))


def test_the_task_page_and_cancel(django_valkey, runs, viewer, operator):
    done = tasks.add.enqueue(2, 3)
    run_worker_burst()
    task_id = done.id.split("@")[0]
    response = viewer.get(url("task", "default", "default") + f"?id={task_id}")
    assert response.status_code == 200
    html = response.content.decode()
    assert done.id in html and "tests.django_project.tasks.add" in html
    assert response.context["state"].status == "done" and response.context["result"] == "5"
    assert response.context["args"] == "[\n  2,\n  3\n]"
    assert "Cancel this task" not in html

    waiting = tasks.add.enqueue(4, 4)
    waiting_id = waiting.id.split("@")[0]
    page = operator.get(url("task", "default", "default") + f"?id={waiting_id}")
    assert "Cancel this task" in page.content.decode()
    assert viewer.post(url("cancel", "default", "default"), {"id": waiting_id}).status_code == 403
    response = operator.post(url("cancel", "default", "default"), {"id": waiting_id}, follow=True)
    assert any(f"Cancelled {waiting.id}" in m for m in messages_of(response))
    assert stats()["cancelled"] == 1
    assert operator.get(url("task", "default", "default") + f"?id={waiting_id}").status_code == 404
    response = operator.post(url("cancel", "default", "default"), {"id": task_id}, follow=True)
    assert any("the task is done; only a waiting task can be cancelled" in m for m in messages_of(response))


def test_the_task_page_of_a_dead_task_shows_every_error_and_retries_it(django_valkey, runs, operator):
    [task_id] = dead_letters(1)
    page = operator.get(url("task", "default", "default") + f"?id={task_id}")
    html = page.content.decode()
    assert "Attempt 1: builtins.ValueError" in html and "failed 0" in html and "Traceback" in html
    assert page.context["task"].errors[0]["exception_class"] == "builtins.ValueError"
    here = url("task", "default", "default") + f"?id={task_id}"
    response = operator.post(url("retry", "default", "default"), {"id": task_id, "next": here}, follow=True)
    assert response.redirect_chain[-1][0] == here
    assert response.context["state"].status == "ready"


def test_finding_a_task_by_result_id(django_valkey, viewer):
    result = tasks.add.enqueue(1, 2)
    response = viewer.get(url("find_task") + f"?result_id={result.id}")
    assert response.status_code == 302
    assert response["Location"] == url("task", "default", "default") + f"?id={result.id.split('@')[0]}"
    response = viewer.get(url("find_task") + "?result_id=nonsense", follow=True)
    assert any("is not a vtasks result id" in m for m in messages_of(response))
    # A redirect to another site is refused.
    operator = staff("op2", "view_queue", "change_queue")
    response = operator.post(url("pause", "default", "default"), {"next": "//evil.example/"})
    assert response["Location"] == url("queue", "default", "default")


def test_an_unreachable_server_is_an_admin_message(settings, viewer):
    point_tasks_at(settings, "valkey://127.0.0.1:1", CONNECT_TIMEOUT=1)
    response = viewer.get(url("changelist"))
    assert response.status_code == 200
    assert any("Valkey did not answer" in m for m in messages_of(response))


def test_the_schedules_page_lists_and_enables_or_disables(django_valkey, viewer, operator):
    from vtasks.schedules import Schedule, timing

    client = task_backends["default"].client
    client.set_schedule_sync(
        Schedule(name="nightly", task="tests.django_project.tasks.add", timing=timing(cron="0 3 * * *"),
                 queue="default", args=(1, 2))
    )
    response = viewer.get(url("schedules"))
    assert response.status_code == 200
    [(alias, listed)] = response.context["rows"]
    assert (alias, listed.name, listed.enabled) == ("default", "nightly", True)
    assert listed.task == "tests.django_project.tasks.add"
    html = response.content.decode()
    assert 'data-schedule="nightly"' in html and "Disable" not in html  # a viewer has no buttons
    form = {"backend": "default", "queue": "default", "name": "nightly", "enabled": "0"}
    assert viewer.post(url("schedule_toggle"), form).status_code == 403
    assert operator.get(url("schedule_toggle")).status_code == 405
    response = operator.post(url("schedule_toggle"), form, follow=True)
    assert any("Schedule 'nightly' on default disabled" in m for m in messages_of(response))
    [info] = client.schedules_sync("default")
    assert info.enabled is False and info.args == [1, 2] and info.timing == listed.timing
    assert "Enable" in response.content.decode()
    response = operator.post(url("schedule_toggle"), {**form, "enabled": "1"}, follow=True)
    assert client.schedules_sync("default")[0].enabled is True
    response = operator.post(url("schedule_toggle"), {**form, "name": "nowhere"}, follow=True)
    assert any("No schedule 'nowhere' on default" in m for m in messages_of(response))


def test_a_failed_task_status_matches_django(django_valkey, runs, viewer):
    [task_id] = dead_letters(1)
    assert tasks.fails.get_result(f"{task_id}@default").status == TaskResultStatus.FAILED
    assert viewer.get(url("task", "default", "default") + f"?id={task_id}").context["state"].status == "dead"
