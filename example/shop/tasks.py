"""The example's task: an ordinary Django task, nothing vtasks-specific."""

from django.tasks import task


@task
async def confirm_order(order_id: int, amount_cents: int) -> dict:
    """Pretends to confirm an order; returns what a real one would store."""
    return {"order": order_id, "total": amount_cents * 2}
