"""Run a vtasks worker inside an ASGI server's process, for small
deployments: the worker starts with the application's lifespan and stops
gracefully with it.

    # asgi.py
    from django.core.asgi import get_asgi_application
    from vtasks.django.asgi import with_worker

    application = with_worker(get_asgi_application(), concurrency=20)

The ASGI server must run the lifespan protocol (uvicorn and hypercorn do).
Everything but ``lifespan`` goes to the wrapped application.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from django.tasks import task_backends

from .backend import ValkeyTaskBackend
from .worker import make_worker

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def with_worker(application: ASGIApp, *, backend: str = "default", **worker_options: Any) -> ASGIApp:
    """``application`` with a worker for task backend ``backend`` running
    alongside it; ``worker_options`` as ``vtasks.Worker``'s."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await application(scope, receive, send)
            return
        worker = None
        runner: asyncio.Task[None] | None = None
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    task_backend = task_backends[backend]
                    if not isinstance(task_backend, ValkeyTaskBackend):
                        raise TypeError(f"task backend {backend!r} is not a ValkeyTaskBackend")
                    worker = make_worker(task_backend, handle_signals=False, **worker_options)
                    runner = asyncio.create_task(worker.run())
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if worker is not None and runner is not None:
                    await worker.close()
                    await runner
                await send({"type": "lifespan.shutdown.complete"})
                return

    return app
