"""No tables: one unmanaged model, `Queue`, gives the vtasks admin pages
their place on the admin site and their permissions.

``vtasks.view_queue`` lets a staff user see the queues, dead letters,
tasks and schedules; ``vtasks.change_queue`` lets them act (pause, resume,
retry, purge, cancel, enable or disable a schedule). Django creates both
permissions when ``migrate`` runs, like any model's; the model has no
table (``managed = False``) and the app no migrations, so there is nothing
to migrate."""

from __future__ import annotations

from django.db import models


class Queue(models.Model):
    """A stand-in for vtasks' queues in the admin: the queues themselves
    live in Valkey and are read from there."""

    class Meta:
        managed = False
        # Named here, so defining the model does not load the database
        # backend to fit a generated name to its length limit (a worker
        # that never touches the database does not import it).
        db_table = "vtasks_queue"
        default_permissions = ("view", "change")
        verbose_name = "queue"
        verbose_name_plural = "queues"
