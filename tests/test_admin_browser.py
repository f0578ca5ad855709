"""The vtasks admin in a real browser: headless Chromium (Debian's
``chromium``, installed by ``scripts/setup.sh``) driven by Playwright logs
in, opens the queue page, retries a dead letter and sees it run."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.tasks import TaskResultStatus

from tests.django_project import tasks
from tests.test_django import point_tasks_at, run_worker_burst

CHROMIUM = os.environ.get("VTASKS_CHROMIUM", "/usr/bin/chromium")
# As this machine's Chromium runs headless: no sandbox as root, and none of
# the background connections a closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


@pytest.fixture
def runs(tmp_path, monkeypatch):
    path = tmp_path / "runs.txt"
    path.touch()
    monkeypatch.setenv("VTASKS_TEST_RUNS", str(path))
    return path


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: scripts/setup.sh installs Debian's chromium"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def off_the_loop(fn: Callable[[], Any]) -> Any:
    """Runs ``fn`` on another thread: Playwright's sync API keeps an event
    loop on this one, where Django refuses database calls and a worker
    cannot start its own loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


def test_an_operator_retries_a_dead_letter_in_the_browser_and_sees_it_run(
    valkey, settings, runs, live_server, transactional_db, browser
):
    point_tasks_at(settings, valkey.url)

    def prepare() -> str:
        User.objects.create_superuser("ops", password="a-long-password")
        result = tasks.fails_until_released.enqueue(7)
        run_worker_burst()
        assert tasks.fails_until_released.get_result(result.id).status == TaskResultStatus.FAILED
        return result.id

    result_id = off_the_loop(prepare)
    task_id = result_id.split("@")[0]

    page = browser.new_page()
    page.set_default_timeout(20_000)
    page.goto(f"{live_server.url}/admin/vtasks/queue/")
    page.fill("#id_username", "ops")
    page.fill("#id_password", "a-long-password")
    page.click("input[type=submit]")

    # The queue list: one dead letter in default.
    page.wait_for_selector("#vtasks-queues")
    assert page.inner_text('tr[data-queue="default"] td.dead') == "1"
    page.click('tr[data-queue="default"] a')

    # The queue page: the dead letter with its error; tick it and retry.
    row = page.locator(f'tr[data-id="{task_id}"]')
    assert "RuntimeError" in row.inner_text() and "not released yet: 7" in row.inner_text()
    Path(f"{runs}.release").touch()
    row.locator("input[type=checkbox]").check()
    page.click("input[name=retry-selected]")
    page.wait_for_selector("ul.messagelist")
    assert "1 dead letter of default back in the queue" in page.inner_text("ul.messagelist")
    assert page.locator(f'tr[data-id="{task_id}"]').count() == 0

    # A worker runs it; its page shows it done, with its result.
    off_the_loop(run_worker_burst)
    page.goto(f"{live_server.url}/admin/vtasks/queue/default/default/task/?id={task_id}")
    assert page.inner_text("#vtasks-status") == "done"
    assert page.inner_text("#vtasks-result") == "70"
    status = off_the_loop(lambda: tasks.fails_until_released.get_result(result_id).status)
    assert status == TaskResultStatus.SUCCESSFUL
