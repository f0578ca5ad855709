"""An async view that enqueues tasks, as a Django ASGI project would."""

import asyncio
import json

from django.http import HttpRequest, JsonResponse

from .tasks import confirm_order


async def place_orders(request: HttpRequest) -> JsonResponse:
    """POST {"first": N, "count": M}: enqueues orders N..N+M-1."""
    body = json.loads(request.body)
    first, count = int(body["first"]), int(body["count"])
    results = await asyncio.gather(
        *(confirm_order.aenqueue(order, order * 10) for order in range(first, first + count))
    )
    return JsonResponse({"ids": [r.id for r in results]})
