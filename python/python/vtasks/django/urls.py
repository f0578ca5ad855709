"""``path("vtasks/", include("vtasks.django.urls"))`` serves
``vtasks/metrics`` (Prometheus) and ``vtasks/ready`` (readiness); see
``vtasks.django.views``."""

from django.urls import path

from . import views

app_name = "vtasks"

urlpatterns = [
    path("metrics", views.metrics, name="metrics"),
    path("ready", views.ready, name="ready"),
]
