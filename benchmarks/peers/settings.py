"""Settings for the comparison benchmark, chosen by environment variables:

- ``BENCH_SYSTEM``: ``vtasks-module``, ``vtasks-scripts``, ``django-vtasks``,
  ``celery`` or ``rq``;
- ``BENCH_URL``: the Valkey URL every system connects to (through the
  latency proxy in the latency runs);
- ``BENCH_CONCURRENCY``: the worker's concurrency (200).
"""

from __future__ import annotations

import os

SYSTEM = os.environ.get("BENCH_SYSTEM", "vtasks-module")
URL = os.environ.get("BENCH_URL", "redis://127.0.0.1:6379/0").replace("valkey://", "redis://")
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "200"))

SECRET_KEY = "benchmark"
DEBUG = False
USE_TZ = True
DATABASES: dict = {}
INSTALLED_APPS: list[str] = []
LOGGING = {"version": 1, "disable_existing_loggers": False, "root": {"level": "WARNING"}}

if SYSTEM in ("vtasks-module", "vtasks-scripts"):
    INSTALLED_APPS = ["vtasks.django"]
    TASKS = {
        "default": {
            "BACKEND": "vtasks.django.ValkeyTaskBackend",
            "QUEUES": ["default"],
            "OPTIONS": {"URL": URL, "ENGINE": SYSTEM.removeprefix("vtasks-")},
        }
    }
elif SYSTEM == "django-vtasks":
    INSTALLED_APPS = ["django_vtasks"]
    TASKS = {
        "default": {
            "BACKEND": "django_vtasks.backends.valkey.ValkeyTaskBackend",
            "QUEUES": ["default"],
            "OPTIONS": {"BROKER_URL": URL},
        }
    }
    VTASKS_QUEUES = ["default"]
    VTASKS_CONCURRENCY = CONCURRENCY
    VTASKS_RUN_SCHEDULER = False
elif SYSTEM == "rq":
    INSTALLED_APPS = ["django_rq", "django_tasks_rq"]
    TASKS = {"default": {"BACKEND": "django_tasks_rq.RQBackend", "QUEUES": ["default"]}}
    RQ_QUEUES = {"default": {"URL": URL}}
elif SYSTEM == "celery":
    pass  # Celery is configured in benchmarks.peers.celery_app
else:
    raise RuntimeError(f"BENCH_SYSTEM={SYSTEM!r}")
