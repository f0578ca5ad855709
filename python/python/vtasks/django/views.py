"""Views for a project's URLs (``path("vtasks/", include("vtasks.django.urls"))``):

- ``vtasks/metrics``: Prometheus metrics of every configured queue of the
  vtasks backends, read from Valkey at each scrape (``vtasks.metrics``;
  needs ``prometheus-client``);
- ``vtasks/ready``: readiness of the web side: 200 when every vtasks
  backend reaches its server and its engine answers, else 503, with a
  JSON body saying which backend is not ready and why.

Neither view asks who is calling: serve them where only your monitoring
reaches (an internal port, a path your proxy does not expose), or wrap
them in your own access check.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET

from ..client import Client
from ..errors import NoSuchQueue, VtasksError
from .ops import valkey_backends


def queue_sources() -> list[tuple[Client, str]]:
    """``(client, queue)`` for every configured queue of the vtasks
    backends, each server's queue once."""
    seen: set[tuple[str, str]] = set()
    sources = []
    for backend in valkey_backends().values():
        for queue in backend.queue_order:
            if (backend.url, queue) not in seen:
                seen.add((backend.url, queue))
                sources.append((backend.client, queue))
    return sources


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    try:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        from ..metrics import QueueCollector, registry
    except ImportError:
        return HttpResponse(
            "vtasks metrics need prometheus-client: pip install 'vtasks[prometheus]'\n",
            status=501, content_type="text/plain",
        )
    body = generate_latest(registry(QueueCollector(queue_sources), process=False))
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)


@require_GET
def ready(request: HttpRequest) -> JsonResponse:
    backends: dict[str, Any] = {}
    for alias, backend in valkey_backends().items():
        try:
            # A read through the engine: the module's command, or the
            # scripts engine's library (loaded on first use).
            for queue in backend.queue_order[:1]:
                try:
                    backend.client.stats_sync(queue)
                except NoSuchQueue:
                    pass
            backends[alias] = {"ready": True, "engine": backend.client.engine}
        except VtasksError as exc:
            backends[alias] = {"ready": False, "error": f"{type(exc).__name__}: {exc}"}
    ok = all(b["ready"] for b in backends.values())
    return JsonResponse({"ready": ok, "backends": backends}, status=200 if ok else 503)
