from django.apps import AppConfig


class VtasksConfig(AppConfig):
    name = "vtasks.django"
    label = "vtasks"
    verbose_name = "vtasks"
    # The one model (vtasks.django.models.Queue) has no table.
    default_auto_field = "django.db.models.AutoField"

    def ready(self) -> None:
        # Django registers the system check that runs every task backend's
        # check() when django.tasks is imported, which a project may never
        # do before `manage.py check` or `runserver` runs its checks.
        import django.tasks  # noqa: F401
