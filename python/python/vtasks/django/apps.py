from django.apps import AppConfig


class VtasksConfig(AppConfig):
    name = "vtasks.django"
    label = "vtasks"
    verbose_name = "vtasks"
