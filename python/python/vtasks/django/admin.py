"""The vtasks pages of the Django admin, on the project's admin site:

- **Queues** (the changelist of `vtasks.django.models.Queue`): every
  configured queue of the vtasks backends with its counts, its enqueue
  and completion rates, its oldest ready task's age, paused or not; pause
  and resume.
- **A queue**: its counts and its dead letters, a page at a time, newest
  first, each with its task, error, attempts and workers; retry or purge
  one, the ones ticked, or all; purge its waiting tasks.
- **A task** (by result id): its call, status, attempts, times, workers,
  result or errors; cancel it while it waits, retry or purge it once dead.
- **Schedules**: the periodic schedules of the queues, with their next and
  last runs; enable or disable one.

Reading needs ``vtasks.view_queue`` (or ``change_queue``), acting
``vtasks.change_queue``; actions are POST forms with Django's CSRF token,
and their outcome is an admin message. Nothing here has a database table:
the model is unmanaged and the pages read Valkey.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse

from ..errors import VtasksError
from . import ops
from .models import Queue

# Dead letters per page of a queue.
DEAD_PER_PAGE = 25


def _pretty(value: Any) -> str:
    try:
        return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return repr(value)


@admin.register(Queue)
class QueueAdmin(admin.ModelAdmin):
    """The vtasks pages: custom views in place of the model's list and
    forms (there are no rows to list)."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path("", wrap(self.queues_view), name="vtasks_queue_changelist"),
            path("schedules/", wrap(self.schedules_view), name="vtasks_queue_schedules"),
            path("schedules/toggle/", wrap(self.toggle_schedule_view), name="vtasks_queue_schedule_toggle"),
            path("task/", wrap(self.find_task_view), name="vtasks_queue_find_task"),
            path("<str:backend>/<str:queue>/", wrap(self.queue_view), name="vtasks_queue_queue"),
            path("<str:backend>/<str:queue>/pause/", wrap(self.pause_view), name="vtasks_queue_pause"),
            path("<str:backend>/<str:queue>/resume/", wrap(self.resume_view), name="vtasks_queue_resume"),
            path("<str:backend>/<str:queue>/retry/", wrap(self.retry_view), name="vtasks_queue_retry"),
            path("<str:backend>/<str:queue>/purge/", wrap(self.purge_view), name="vtasks_queue_purge"),
            path("<str:backend>/<str:queue>/task/", wrap(self.task_view), name="vtasks_queue_task"),
            path("<str:backend>/<str:queue>/cancel/", wrap(self.cancel_view), name="vtasks_queue_cancel"),
            path("<str:backend>/<str:queue>/clear/", wrap(self.clear_view), name="vtasks_queue_clear"),
        ]

    # --- helpers ----------------------------------------------------------------------------------

    def _context(self, request: HttpRequest, title: str, **extra: Any) -> dict[str, Any]:
        return {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": title,
            "can_change": self.has_change_permission(request),
            **extra,
        }

    def _require_view(self, request: HttpRequest) -> None:
        if not self.has_view_permission(request):
            raise PermissionDenied

    def _require_change(self, request: HttpRequest) -> None:
        if not self.has_change_permission(request):
            raise PermissionDenied

    @staticmethod
    def _queue(backend: str, queue: str) -> Any:
        """The backend of a queue page, or 404."""
        try:
            found = ops.backend_named(backend)
            ops.check_queue(found, queue)
        except LookupError as exc:
            raise Http404(str(exc)) from exc
        return found

    def _back(self, request: HttpRequest, default: str) -> HttpResponseRedirect:
        """Back to the page the form was on (a URL of this site only)."""
        target = request.POST.get("next", "")
        if not target.startswith("/") or target.startswith("//"):
            target = default
        return HttpResponseRedirect(target)

    def _unreachable(self, request: HttpRequest, exc: VtasksError) -> None:
        self.message_user(request, f"Valkey did not answer: {type(exc).__name__}: {exc}", messages.ERROR)

    # --- pages ------------------------------------------------------------------------------------

    def queues_view(self, request: HttpRequest) -> HttpResponse:
        self._require_view(request)
        rows: list[ops.QueueRow] = []
        try:
            rows = ops.queue_rows(ops.valkey_backends(), ops.sampler)
        except VtasksError as exc:
            self._unreachable(request, exc)
        context = self._context(request, "vtasks queues", rows=rows, window=ops.sampler.window)
        return TemplateResponse(request, "admin/vtasks/queues.html", context)

    def queue_view(self, request: HttpRequest, backend: str, queue: str) -> HttpResponse:
        self._require_view(request)
        found = self._queue(backend, queue)
        try:
            page = max(1, int(request.GET.get("p", "1")))
        except ValueError:
            page = 1
        stats: dict[str, int] = {}
        letters: list[ops.DeadLetter] = []
        try:
            stats = ops.stats(found, queue)
            pages = max(1, -(-stats["dead"] // DEAD_PER_PAGE))
            page = min(page, pages)
            letters = ops.dead_page(found, queue, (page - 1) * DEAD_PER_PAGE, DEAD_PER_PAGE)
        except VtasksError as exc:
            self._unreachable(request, exc)
            pages = 1
        base = reverse("admin:vtasks_queue_queue", args=[backend, queue])
        context = self._context(
            request, f"Queue {queue}", backend=backend, queue=queue, stats=stats, letters=letters,
            page=page, pages=pages, per_page=DEAD_PER_PAGE,
            previous_url=f"{base}?p={page - 1}" if page > 1 else None,
            next_url=f"{base}?p={page + 1}" if page < pages else None,
            here=request.get_full_path(),
        )
        return TemplateResponse(request, "admin/vtasks/queue.html", context)

    def task_view(self, request: HttpRequest, backend: str, queue: str) -> HttpResponse:
        self._require_view(request)
        found = self._queue(backend, queue)
        task_id = request.GET.get("id", "")
        if not task_id:
            raise Http404("no task id")
        try:
            view = ops.task_view(found, queue, task_id)
        except VtasksError as exc:
            self._unreachable(request, exc)
            return HttpResponseRedirect(reverse("admin:vtasks_queue_queue", args=[backend, queue]))
        if view is None:
            raise Http404(f"no task {task_id} in {queue} (never enqueued, or its kept record expired)")
        context = self._context(
            request, f"Task {view.result_id}", backend=backend, queue=queue, task=view, state=view.state,
            args=_pretty(view.args), kwargs=_pretty(view.kwargs),
            result=_pretty(view.state.result) if view.state.status == "done" else None,
            here=request.get_full_path(),
        )
        return TemplateResponse(request, "admin/vtasks/task.html", context)

    def find_task_view(self, request: HttpRequest) -> HttpResponse:
        """The task page of a result id typed into the queue list."""
        self._require_view(request)
        value = request.GET.get("result_id", "").strip()
        try:
            task_id, queue = ops.parse_result_id(value)
        except ValueError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return HttpResponseRedirect(reverse("admin:vtasks_queue_changelist"))
        for alias, backend in ops.valkey_backends().items():
            if not backend.queues or queue in backend.queues:
                url = reverse("admin:vtasks_queue_task", args=[alias, queue])
                return HttpResponseRedirect(f"{url}?{urlencode({'id': task_id})}")
        self.message_user(request, f"no vtasks backend serves the queue {queue!r}", messages.ERROR)
        return HttpResponseRedirect(reverse("admin:vtasks_queue_changelist"))

    # --- actions (POST, change permission) --------------------------------------------------------

    def _act(self, request: HttpRequest, backend: str, queue: str, action: Any) -> HttpResponseRedirect:
        """Runs ``action(backend object)`` for a POST by a user who may
        change; its message, or the error, as an admin message."""
        self._require_change(request)
        found = self._queue(backend, queue)
        try:
            level, text = action(found)
            self.message_user(request, text, level)
        except VtasksError as exc:
            self._unreachable(request, exc)
        return self._back(request, reverse("admin:vtasks_queue_queue", args=[backend, queue]))

    @staticmethod
    def _ids(request: HttpRequest) -> list[str] | None:
        """The task ids a dead-letter action names (None: all of them)."""
        if request.POST.get("all") == "1":
            return None
        return [i for i in request.POST.getlist("id") if i]

    def pause_view(self, request: HttpRequest, backend: str, queue: str) -> HttpResponse:
        return self._pause(request, backend, queue, paused=True)

    def resume_view(self, request: HttpRequest, backend: str, queue: str) -> HttpResponse:
        return self._pause(request, backend, queue, paused=False)

    def _pause(self, request: HttpRequest, backend: str, queue: str, paused: bool) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])

        def act(found: Any) -> tuple[int, str]:
            if paused:
                found.client.pause_sync(queue)
                return messages.SUCCESS, f"Paused {queue}: workers take nothing from it until it is resumed."
            found.client.resume_sync(queue)
            return messages.SUCCESS, f"Resumed {queue}."

        return self._act(request, backend, queue, act)

    def retry_view(self, request: HttpRequest, backend: str, queue: str) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        ids = self._ids(request)

        def act(found: Any) -> tuple[int, str]:
            if ids == []:
                return messages.WARNING, "No dead letter was selected."
            moved = ops.requeue_dead(found, queue, ids)
            if moved == 0:
                return messages.WARNING, "Nothing was retried: those tasks are no longer dead letters."
            return messages.SUCCESS, f"{moved} dead letter{'s' * (moved != 1)} of {queue} back in the queue."

        return self._act(request, backend, queue, act)

    def purge_view(self, request: HttpRequest, backend: str, queue: str) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        ids = self._ids(request)

        def act(found: Any) -> tuple[int, str]:
            if ids == []:
                return messages.WARNING, "No dead letter was selected."
            purged = ops.purge_dead(found, queue, ids)
            if purged == 0:
                return messages.WARNING, "Nothing was purged: those tasks are no longer dead letters."
            return messages.SUCCESS, f"{purged} dead letter{'s' * (purged != 1)} of {queue} purged."

        return self._act(request, backend, queue, act)

    def cancel_view(self, request: HttpRequest, backend: str, queue: str) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        task_id = request.POST.get("id", "")

        def act(found: Any) -> tuple[int, str]:
            if task_id and found.client.cancel_sync(queue, [task_id])[0]:
                return messages.SUCCESS, f"Cancelled {ops.result_id(task_id, queue)}."
            state = found.client.get_sync(queue, task_id) if task_id else None
            status = "gone" if state is None else {"leased": "running"}.get(state.status, state.status)
            return messages.WARNING, f"Not cancelled: the task is {status}; only a waiting task can be cancelled."

        return self._act(request, backend, queue, act)

    def clear_view(self, request: HttpRequest, backend: str, queue: str) -> HttpResponse:
        """Deletes the queue's waiting tasks (ready and delayed), as
        ``manage.py vtasks purge`` does."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])

        def act(found: Any) -> tuple[int, str]:
            purged = ops.clear_queue(found, queue)
            if purged == 0:
                return messages.WARNING, f"{queue} had no waiting tasks."
            return messages.SUCCESS, f"{purged} waiting task{'s' * (purged != 1)} purged from {queue}."

        return self._act(request, backend, queue, act)

    # --- schedules --------------------------------------------------------------------------------

    def schedules_view(self, request: HttpRequest) -> HttpResponse:
        self._require_view(request)
        rows: list[tuple[str, Any]] = []
        available = _schedules_available()
        if available:
            for alias, backend in ops.valkey_backends().items():
                try:
                    listed = backend.client.schedules_sync(*backend.queue_order)  # type: ignore[attr-defined, unused-ignore]
                    rows += [(alias, s) for s in listed]
                except VtasksError as exc:
                    self._unreachable(request, exc)
        context = self._context(request, "vtasks schedules", rows=rows, available=available)
        return TemplateResponse(request, "admin/vtasks/schedules.html", context)

    def toggle_schedule_view(self, request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        self._require_change(request)
        back = reverse("admin:vtasks_queue_schedules")
        if not _schedules_available():
            raise Http404("this version of vtasks has no periodic schedules")
        alias, queue, name = (request.POST.get(k, "") for k in ("backend", "queue", "name"))
        enable = request.POST.get("enabled") == "1"
        found = self._queue(alias, queue)
        try:
            listed = [s for s in found.client.schedules_sync(queue) if s.name == name]
            if not listed:
                self.message_user(request, f"No schedule {name!r} on {queue}.", messages.WARNING)
                return HttpResponseRedirect(back)
            _set_enabled(found.client, listed[0], enable)
        except (VtasksError, ValueError) as exc:
            self.message_user(request, f"Schedule {name!r} not changed: {exc}", messages.ERROR)
            return HttpResponseRedirect(back)
        self.message_user(request, f"Schedule {name!r} on {queue} {'enabled' if enable else 'disabled'}.")
        return HttpResponseRedirect(back)


def _schedules_available() -> bool:
    """Whether this vtasks has periodic schedules (``Client.schedules_sync``)."""
    from ..client import Client

    return hasattr(Client, "schedules_sync")


def _set_enabled(client: Any, info: Any, enabled: bool) -> None:
    """Sets a listed schedule again with ``enabled`` changed (the server
    keeps its next and last runs: only the flag changed)."""
    from ..schedules import Schedule  # type: ignore[import-not-found, unused-ignore]

    if info.task is None:
        raise ValueError("its payload is not a vtasks call, so it cannot be set again from here")
    client.set_schedule_sync(
        Schedule(
            name=info.name, task=info.task, timing=info.timing, queue=info.queue, args=tuple(info.args),
            kwargs=dict(info.kwargs), priority=info.priority, max_attempts=info.max_attempts,
            catch_up=info.catch_up, enabled=enabled,
        )
    )
